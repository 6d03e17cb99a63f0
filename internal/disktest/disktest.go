// SPDX-License-Identifier: Apache-2.0

// Package disktest gives tests a disk of their own that they can fill:
// a small tmpfs mounted on a temporary directory, and a filler file that
// takes its last free block and gives the room back when removed. With it
// the stores and the binaries meet a real ENOSPC from the kernel, not an
// injected error.
//
// It is for tests only and needs root (mount(2)); Small skips the test
// otherwise.
package disktest

import (
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// Small mounts a tmpfs of the given size (as mount's size= option takes
// it: "2m") on a new directory and returns the directory. It is unmounted
// when the test ends; processes a test starts after calling Small are
// stopped by cleanups that run before that.
func Small(t testing.TB, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size="+size+",mode=0700"); err != nil {
		t.Skipf("a full disk needs a tmpfs of its own, and mounting one is not permitted here (%v): run as root", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
			syscall.Unmount(dir, syscall.MNT_DETACH)
		}
	})
	return dir
}

// Fill writes a file into dir until the disk is full and returns its
// path: removing the file makes room again.
func Fill(t testing.TB, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "filler")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	for {
		if _, err := f.Write(buf); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("fill %s: %v", dir, err)
			}
			return path
		}
	}
}
