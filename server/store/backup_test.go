// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"

	bolt "go.etcd.io/bbolt"

	"tether/internal/boltfile"
)

// fillDevices writes n devices into s in one transaction, and deletes
// every other one in another when holes: what a store looks like after a
// fleet shrank.
func fillDevices(t testing.TB, s *Store, n int, holes bool) {
	t.Helper()
	err := s.db.Update(func(tx *bolt.Tx) error {
		devices := tx.Bucket(bucketDevices)
		for i := range n {
			id := fmt.Sprintf("%016x", i)
			if err := put(devices, []byte(id), Device{ID: id, SecretHash: hash(id), Created: t0, LastSeen: t0, Agent: "tetherd/1.0"}); err != nil {
				return err
			}
		}
		return nil
	})
	if err == nil && holes {
		err = s.db.Update(func(tx *bolt.Tx) error {
			for i := 0; i < n; i += 2 {
				if err := tx.Bucket(bucketDevices).Delete(fmt.Appendf(nil, "%016x", i)); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err != nil {
		t.Fatal(err)
	}
}

// TestBackupCompactCheck: a backup of an open store opens as a store with
// the same records; compaction refuses a file in use, and shrinks one
// with holes, keeping its records; CheckFile tells a damaged copy.
func TestBackupCompactCheck(t *testing.T) {
	s, path := openTemp(t)
	fillDevices(t, s, 4000, true)
	var buf bytes.Buffer
	var announced int64
	n, err := s.Backup(func(size int64) io.Writer { announced = size; return &buf })
	if err != nil || n != announced || int64(buf.Len()) != n {
		t.Fatalf("Backup = %d, %v; announced %d, wrote %d", n, err, announced, buf.Len())
	}
	copyPath := filepath.Join(t.TempDir(), "copy.db")
	if err := ReplaceFile(copyPath, func(tmp string) error { return os.WriteFile(tmp, buf.Bytes(), 0o600) }); err != nil {
		t.Fatal(err)
	}
	if err := CheckFile(copyPath); err != nil {
		t.Errorf("CheckFile of the backup: %v", err)
	}
	if fi, err := os.Stat(copyPath); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("backup file: %v, %v; want mode 0600", fi, err)
	}
	want, err := s.Devices(ctx)
	if err != nil {
		t.Fatal(err)
	}

	if _, _, err := Compact(path); !errors.Is(err, ErrLocked) {
		t.Errorf("Compact of a store in use: %v", err)
	}
	s.Close()
	before, after, err := Compact(path)
	if err != nil {
		t.Fatal(err)
	}
	if after >= before {
		t.Errorf("compaction from %d to %d bytes, want smaller", before, after)
	}
	for _, p := range []string{path, copyPath} {
		s, err := Open(p, Options{})
		if err != nil {
			t.Fatal(err)
		}
		got, err := s.Devices(ctx)
		s.Close()
		if err != nil || len(got) != len(want) || len(got) != 2000 {
			t.Errorf("%s: %d devices, %v; want %d", filepath.Base(p), len(got), err, len(want))
		}
	}
	if entries, _ := os.ReadDir(filepath.Dir(path)); len(entries) != 1 {
		t.Errorf("compaction left %d files in the directory, want only the store", len(entries))
	}

	// A copy cut short is refused.
	short := filepath.Join(t.TempDir(), "short.db")
	if err := os.WriteFile(short, buf.Bytes()[:buf.Len()/2], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := CheckFile(short); !errors.Is(err, boltfile.ErrDamaged) {
		t.Errorf("CheckFile of half a copy: %v", err)
	}
}

// BenchmarkBackup copies a store of 100,000 devices (about 40 MB) to
// memory while it stays open, as an online backup does.
func BenchmarkBackup(b *testing.B) {
	path := filepath.Join(b.TempDir(), "server.db")
	s, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	fillDevices(b, s, 100_000, false)
	var size int64
	for b.Loop() {
		size, err = s.Backup(func(int64) io.Writer { return io.Discard })
		if err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(size)/(1<<20), "MiB")
	b.SetBytes(size)
}
