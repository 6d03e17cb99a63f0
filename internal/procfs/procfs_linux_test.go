// SPDX-License-Identifier: Apache-2.0

package procfs

import (
	"errors"
	"io/fs"
	"os"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"
)

// TestReadSelf reads the test process's own /proc entries.
func TestReadSelf(t *testing.T) {
	pid := os.Getpid()
	st, err := Status(pid)
	if err != nil {
		t.Fatal(err)
	}
	if st["VmRSS"] == 0 || st["VmHWM"] < st["VmRSS"] || st["Pid"] != uint64(pid) || st["Threads"] == 0 {
		t.Errorf("Status(self) = %v: want VmRSS > 0, VmHWM >= VmRSS, Pid %d and a thread", st, pid)
	}
	mi, err := Meminfo()
	if err != nil {
		t.Fatal(err)
	}
	if mi["MemTotal"] < st["VmRSS"] {
		t.Errorf("Meminfo() MemTotal = %d kB, less than this process's RSS %d kB", mi["MemTotal"], st["VmRSS"])
	}
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatal(err)
	}
	n, err := OpenFileLimit(pid)
	if err != nil {
		t.Fatal(err)
	}
	if want := int(min(rl.Cur, unlimitedFiles)); n != want {
		t.Errorf("OpenFileLimit(self) = %d, getrlimit says %d", n, want)
	}
}

// TestSampleSelf checks Read against what the kernel tells the process of
// itself: its threads, and its CPU time as getrusage gives it.
func TestSampleSelf(t *testing.T) {
	pid := os.Getpid()
	// A thread of its own, parked in the kernel, must show up.
	tids := make(chan int)
	release := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		tids <- syscall.Gettid()
		<-release
	})
	defer wg.Wait()
	defer close(release)
	tid := <-tids

	first, err := Read(pid)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := first.Threads[tid]; !ok {
		t.Errorf("Read(self) has threads %v, not %d", first.Threads, tid)
	}
	if first.Total() == 0 || first.RSSKiB == 0 {
		t.Errorf("Read(self) = %+v: want switches and RSS", first)
	}

	// Burn 50 ms of CPU, as getrusage counts it, and see the ticks grow
	// by about as much.
	before := cpuUsed(t)
	for cpuUsed(t) < before+50*time.Millisecond {
	}
	after := cpuUsed(t)
	last, err := Read(pid)
	if err != nil {
		t.Fatal(err)
	}
	then := cpuUsed(t)
	if last.CPUTicks <= first.CPUTicks {
		t.Errorf("CPU ticks went from %d to %d over %s of CPU", first.CPUTicks, last.CPUTicks, after-before)
	}
	// utime and stime are each rounded down to a tick.
	const tick = time.Second / UserHZ
	if got := time.Duration(last.CPUTicks) * tick; got > then || got+2*tick < after {
		t.Errorf("CPU time %s (%d ticks) read between getrusage's %s and %s", got, last.CPUTicks, after, then)
	}
	if last.Total() < first.Total() || !last.At.After(first.At) {
		t.Errorf("switches went from %d to %d, time from %s to %s", first.Total(), last.Total(), first.At, last.At)
	}
}

func cpuUsed(t *testing.T) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func TestNoSuchProcess(t *testing.T) {
	// Past the largest pid Linux hands out (4194304).
	const gone = 1 << 23
	if _, err := Read(gone); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Read(%d) = %v, want a not-exist error", gone, err)
	}
	if _, err := Status(gone); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Status(%d) = %v, want a not-exist error", gone, err)
	}
	if _, err := CPUTicks(gone); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("CPUTicks(%d) = %v, want a not-exist error", gone, err)
	}
	if _, err := OpenFileLimit(gone); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("OpenFileLimit(%d) = %v, want a not-exist error", gone, err)
	}
}
