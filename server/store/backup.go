// SPDX-License-Identifier: Apache-2.0

package store

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"tether/internal/boltfile"
)

// Backup writes a copy of the file, consistent as of one moment, to the
// writer that start returns given the copy's size. Writes go on
// meanwhile: the copy is one read transaction.
func (s *Store) Backup(start func(size int64) io.Writer) (int64, error) {
	var n int64
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		n, err = tx.WriteTo(start(tx.Size()))
		return err
	})
	if err != nil {
		return n, fmt.Errorf("back up store: %w", err)
	}
	return n, nil
}

// CheckFile checks a store file that no process writes, such as a backup,
// as Open would before trusting it, and changes nothing. Its error wraps
// boltfile.ErrDamaged when the file is damaged.
func CheckFile(path string) error {
	if err := boltfile.Check(path, time.Second); err != nil {
		return fmt.Errorf("check %s: %w", path, err)
	}
	return nil
}

// compactTxSize bounds the transactions of a compaction, so that its
// memory stays small whatever the file's size.
const compactTxSize = 64 << 20

// Compact rewrites the store file at path without the free pages that
// deletions left, and puts the copy in its place atomically: a crash
// leaves the old file or the new one, whole. It fails with ErrLocked,
// changing nothing, while a process has the file open. It returns the
// file's sizes before and after.
func Compact(path string) (before, after int64, err error) {
	src, err := boltfile.Open(path, 0o600, bolt.Options{Timeout: 500 * time.Millisecond})
	if errors.Is(err, berrors.ErrTimeout) {
		return 0, 0, fmt.Errorf("compact %s: %w", path, ErrLocked)
	}
	if err != nil {
		return 0, 0, fmt.Errorf("compact %s: %w", path, err)
	}
	// The lock is held until the copy has replaced the file.
	defer src.Close()
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, fmt.Errorf("compact %s: %w", path, err)
	}
	err = ReplaceFile(path, func(tmp string) error {
		dst, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second})
		if err != nil {
			return err
		}
		if err := bolt.Compact(dst, src, compactTxSize); err != nil {
			dst.Close()
			return err
		}
		return dst.Close()
	})
	if err != nil {
		return 0, 0, fmt.Errorf("compact %s: %w", path, err)
	}
	nfi, err := os.Stat(path)
	if err != nil {
		return 0, 0, fmt.Errorf("compact %s: %w", path, err)
	}
	return fi.Size(), nfi.Size(), nil
}

// ReplaceFile writes the file at path anew, with mode 0600: fill writes
// the content at tmp, a new empty file beside path, which is then synced
// and renamed over path, and the directory synced. path is either as it
// was or whole with the new content, whatever crash happens meanwhile.
func ReplaceFile(path string, fill func(tmp string) error) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".*.tmp")
	if err != nil {
		return err
	}
	tmp := f.Name()
	f.Close()
	done := false
	defer func() {
		if !done {
			os.Remove(tmp)
		}
	}()
	if err := fill(tmp); err != nil {
		return err
	}
	if err := syncFile(tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	done = true
	return syncFile(dir)
}

// syncFile fsyncs the file or directory at path.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return f.Close()
}
