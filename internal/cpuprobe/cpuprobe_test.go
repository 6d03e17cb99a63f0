// SPDX-License-Identifier: Apache-2.0

package cpuprobe

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"tether/internal/testwait"
)

// Two SIGUSR2 make one CPU profile and one allocation profile, both
// pprof's gzipped protocol buffers; a third starts the next pair.
func TestToggle(t *testing.T) {
	prefix := filepath.Join(t.TempDir(), "probe")
	t.Setenv("TETHER_CPUPROFILE", prefix)
	Start()
	signal := func() {
		if err := syscall.Kill(os.Getpid(), syscall.SIGUSR2); err != nil {
			t.Fatal(err)
		}
	}
	signal()
	testwait.Until(t, "the CPU profile to start", 10*time.Second, func() bool {
		_, err := os.Stat(prefix + ".1.cpu")
		return err == nil
	})
	signal()
	gzipped := func(path string) func() error {
		return func() error {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			if !bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
				return os.ErrNotExist
			}
			return nil
		}
	}
	testwait.For(t, "the allocation profile", 10*time.Second, gzipped(prefix+".1.allocs"))
	if err := gzipped(prefix + ".1.cpu")(); err != nil {
		t.Fatalf("CPU profile: %v", err)
	}
	signal()
	testwait.Until(t, "the second CPU profile to start", 10*time.Second, func() bool {
		_, err := os.Stat(prefix + ".2.cpu")
		return err == nil
	})
	signal()
	testwait.For(t, "the second allocation profile", 10*time.Second, gzipped(prefix+".2.allocs"))
}
