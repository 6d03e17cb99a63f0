// SPDX-License-Identifier: Apache-2.0

package boltfile

import (
	"errors"
	"fmt"
	"os"
	"strings"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// ErrDamaged is wrapped by Open's error when the file is damaged. The file
// is left unchanged.
var ErrDamaged = errors.New("file is damaged")

// maxProblems bounds how many of the consistency check's findings an error
// spells out; the rest are counted.
const maxProblems = 3

// Open opens the bbolt file at path for reading and writing, as bolt.Open
// does with mode and opts, after checking an existing file (see the package
// comment). A missing or empty file is created and initialised by bbolt.
// opts.Timeout bounds each wait for the file's lock; bolt's ErrTimeout
// comes back wrapped when another process holds it.
func Open(path string, mode os.FileMode, opts bolt.Options) (*bolt.DB, error) {
	if err := check(path, opts); err != nil {
		return nil, err
	}
	return open(path, mode, opts)
}

// check checks the bbolt file at path under a shared lock, waiting at most
// opts.Timeout for it, and changes nothing. A missing or empty file passes.
func check(path string, opts bolt.Options) error {
	if fi, err := os.Stat(path); err != nil || fi.Size() == 0 {
		// Missing or empty: bbolt creates it. Any other Stat error comes
		// back from bolt.Open.
		return nil
	}
	opts.ReadOnly = true
	db, err := open(path, 0, opts)
	switch {
	case err == nil:
	case errors.Is(err, ErrDamaged), errors.Is(err, berrors.ErrTimeout):
		return err
	default:
		// bbolt refuses files whose meta pages are both bad, or that are
		// shorter than two pages; say which when that is why.
		if werr := walkFile(path); errors.Is(werr, ErrDamaged) {
			return werr
		}
		return err
	}
	defer db.Close()
	if err := walkFile(path); err != nil {
		return err
	}
	return consistent(db)
}

// open is bolt.Open, turning a panic into an error wrapping ErrDamaged: bbolt
// panics on some kinds of damage. A DB that panicked while opening cannot be
// closed; open closes its file, so that the lock goes with it.
func open(path string, mode os.FileMode, opts bolt.Options) (db *bolt.DB, err error) {
	var file *os.File
	openFile := opts.OpenFile
	if openFile == nil {
		openFile = os.OpenFile
	}
	opts.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		f, err := openFile(name, flag, perm)
		file = f
		return f, err
	}
	defer func() {
		if p := recover(); p != nil {
			if file != nil {
				file.Close()
			}
			db, err = nil, damaged("bbolt failed reading it: %v", p)
		}
	}()
	return bolt.Open(path, mode, &opts)
}

// consistent runs bbolt's consistency check on db.
func consistent(db *bolt.DB) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = damaged("consistency check failed: %v", p)
		}
	}()
	var problems []string
	n := 0
	err = db.View(func(tx *bolt.Tx) error {
		// Check reports from a goroutine of its own, recovering its
		// panics; read to the end so that it finishes.
		for err := range tx.Check() {
			if n < maxProblems {
				problems = append(problems, err.Error())
			}
			n++
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("check file: %w", err)
	}
	if n == 0 {
		return nil
	}
	msg := strings.Join(problems, "; ")
	if n > len(problems) {
		msg += fmt.Sprintf(" (and %d more)", n-len(problems))
	}
	return damaged("consistency check failed: %s", msg)
}

// damaged is an error wrapping ErrDamaged that says what is wrong.
func damaged(format string, args ...any) error {
	return fmt.Errorf("%w: %s; it was left unchanged for inspection", ErrDamaged, fmt.Sprintf(format, args...))
}
