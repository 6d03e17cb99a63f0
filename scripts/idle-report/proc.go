package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// userHZ is the unit of utime and stime in /proc/PID/stat: 100 on every
// architecture Linux runs Go on.
const userHZ = 100

// procSample is a process's state as /proc shows it at one moment.
type procSample struct {
	at time.Time
	// switches maps each thread to its context switches so far,
	// voluntary and not.
	switches map[int]uint64
	// voluntary and involuntary are the sums over the threads.
	voluntary, involuntary uint64
	rssKiB                 uint64
	cpuTicks               uint64 // utime + stime
}

func (s procSample) total() uint64 { return s.voluntary + s.involuntary }

func (s procSample) threads() int { return len(s.switches) }

// readProc samples process pid. Reading /proc costs the process nothing:
// it is not woken.
func readProc(pid int) (procSample, error) {
	s := procSample{at: time.Now(), switches: map[int]uint64{}}
	dir := fmt.Sprintf("/proc/%d", pid)
	tasks, err := os.ReadDir(filepath.Join(dir, "task"))
	if err != nil {
		return s, fmt.Errorf("list threads of %d: %w", pid, err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		f, err := statusFields(filepath.Join(dir, "task", t.Name(), "status"))
		if err != nil {
			continue // the thread exited meanwhile
		}
		v, nv := f["voluntary_ctxt_switches"], f["nonvoluntary_ctxt_switches"]
		s.switches[tid] = v + nv
		s.voluntary += v
		s.involuntary += nv
	}
	f, err := statusFields(filepath.Join(dir, "status"))
	if err != nil {
		return s, fmt.Errorf("read status of %d: %w", pid, err)
	}
	s.rssKiB = f["VmRSS"]
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return s, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	// The fields after the command name, which is in parentheses and may
	// hold spaces: state is field 3, utime 14 and stime 15.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 {
		fields := strings.Fields(string(stat[i+1:]))
		if len(fields) > 12 {
			utime, _ := strconv.ParseUint(fields[11], 10, 64)
			stime, _ := strconv.ParseUint(fields[12], 10, 64)
			s.cpuTicks = utime + stime
		}
	}
	return s, nil
}

// statusFields reads the numeric fields of a /proc status file ("VmRSS:
// 9120 kB" gives 9120).
func statusFields(path string) (map[string]uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]uint64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		key, value, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fields := strings.Fields(value)
		if len(fields) == 0 {
			continue
		}
		if n, err := strconv.ParseUint(fields[0], 10, 64); err == nil {
			out[key] = n
		}
	}
	return out, nil
}

// threadDelta is one thread's context switches between two samples.
type threadDelta struct {
	TID      int    `json:"tid"`
	Switches uint64 `json:"switches"`
	// New is set for a thread started between the samples: all its
	// switches count.
	New bool `json:"new,omitempty"`
	// Waits is where the thread waited at the end (threadStates).
	Waits string `json:"waits,omitempty"`
}

// threadDeltas compares two samples thread by thread, and counts the
// threads that exited between them (their last switches are lost).
func threadDeltas(a, b procSample) (deltas []threadDelta, exited int) {
	for tid, n := range b.switches {
		before, ok := a.switches[tid]
		deltas = append(deltas, threadDelta{TID: tid, Switches: n - before, New: !ok})
	}
	for tid := range a.switches {
		if _, ok := b.switches[tid]; !ok {
			exited++
		}
	}
	return deltas, exited
}

// threadStates tells, for each thread of pid, where it waits in the
// kernel, which says what it is in a Go program: the thread in
// epoll_wait is the network poller, the one in a futex wait with a
// timeout (or in nanosleep) is sysmon, the runtime's monitor, and those in
// futex waits without one are idle.
func threadStates(pid int) map[int]string {
	out := map[int]string{}
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return out
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		wchan, err := os.ReadFile(filepath.Join(dir, t.Name(), "wchan"))
		if err != nil {
			continue
		}
		w := string(wchan)
		// The fields of /proc/PID/syscall are the call's number and its
		// arguments; a futex wait's fourth is its timeout.
		call, _ := os.ReadFile(filepath.Join(dir, t.Name(), "syscall"))
		args := strings.Fields(string(call))
		switch {
		case strings.Contains(w, "epoll"):
			out[tid] = "epoll_wait: the network poller"
		case strings.Contains(w, "futex") && len(args) > 4 && args[4] != "0x0":
			out[tid] = "futex wait with a timeout: sysmon"
		case strings.Contains(w, "futex"):
			out[tid] = "futex wait: idle"
		case strings.Contains(w, "nanosleep"):
			out[tid] = "nanosleep: sysmon"
		case w == "" || w == "0":
			out[tid] = "running"
		default:
			out[tid] = w
		}
	}
	return out
}
