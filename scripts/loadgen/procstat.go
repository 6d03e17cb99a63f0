// SPDX-License-Identifier: Apache-2.0

package main

import (
	"fmt"
	"os"

	"tether/internal/procfs"
)

// procStats is a process's footprint as /proc shows it. Reading it does
// not wake the process.
type procStats struct {
	RSSKiB  uint64 `json:"rss_kib"`  // VmRSS
	HWMKiB  uint64 `json:"hwm_kib"`  // VmHWM: the peak RSS so far
	AnonKiB uint64 `json:"anon_kib"` // RssAnon: heap and stacks
	FileKiB uint64 `json:"file_kib"` // RssFile: mapped files, the store among them
	Threads int    `json:"threads"`
	FDs     int    `json:"fds"`
	FDLimit int    `json:"fd_limit"`
	// CPUSeconds is the user and system time the process used so far.
	CPUSeconds float64 `json:"cpu_seconds"`
}

// plus adds o's figures to s's: the footprint of two processes.
func (s procStats) plus(o procStats) procStats {
	return procStats{
		RSSKiB: s.RSSKiB + o.RSSKiB, HWMKiB: s.HWMKiB + o.HWMKiB, AnonKiB: s.AnonKiB + o.AnonKiB, FileKiB: s.FileKiB + o.FileKiB,
		Threads: s.Threads + o.Threads, FDs: s.FDs + o.FDs, FDLimit: s.FDLimit + o.FDLimit, CPUSeconds: s.CPUSeconds + o.CPUSeconds,
	}
}

func readProcStats(pid int) (procStats, error) {
	st, err := procfs.Status(pid)
	if err != nil {
		return procStats{}, err
	}
	s := procStats{
		RSSKiB: st["VmRSS"], HWMKiB: st["VmHWM"], AnonKiB: st["RssAnon"], FileKiB: st["RssFile"],
		Threads: int(st["Threads"]),
	}
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		return s, fmt.Errorf("count open files of %d: %w", pid, err)
	}
	s.FDs = len(fds)
	if s.FDLimit, err = procfs.OpenFileLimit(pid); err != nil {
		return s, err
	}
	ticks, err := procfs.CPUTicks(pid)
	if err != nil {
		return s, err
	}
	s.CPUSeconds = float64(ticks) / procfs.UserHZ
	return s, nil
}

// slabKiB is the kernel's slab memory (/proc/meminfo Slab), where socket
// structures live: machine-wide, so other work moves it too.
func slabKiB() uint64 {
	m, err := procfs.Meminfo()
	if err != nil {
		return 0
	}
	return m["Slab"]
}
