// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"tether/internal/procfs"
)

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
func threadDeltas(a, b procfs.Sample) (deltas []threadDelta, exited int) {
	for tid, n := range b.Threads {
		before, ok := a.Threads[tid]
		deltas = append(deltas, threadDelta{TID: tid, Switches: n - before, New: !ok})
	}
	for tid := range a.Threads {
		if _, ok := b.Threads[tid]; !ok {
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
