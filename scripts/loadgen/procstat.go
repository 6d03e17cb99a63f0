package main

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// userHZ is the unit of utime and stime in /proc/PID/stat: 100 on every
// architecture Linux runs Go on.
const userHZ = 100

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

func readProcStats(pid int) (procStats, error) {
	dir := fmt.Sprintf("/proc/%d", pid)
	st, err := readStatus(filepath.Join(dir, "status"))
	if err != nil {
		return procStats{}, err
	}
	s := procStats{
		RSSKiB: st["VmRSS"], HWMKiB: st["VmHWM"], AnonKiB: st["RssAnon"], FileKiB: st["RssFile"],
		Threads: int(st["Threads"]),
	}
	fds, err := os.ReadDir(filepath.Join(dir, "fd"))
	if err != nil {
		return s, fmt.Errorf("count open files of %d: %w", pid, err)
	}
	s.FDs = len(fds)
	limits, err := os.ReadFile(filepath.Join(dir, "limits"))
	if err != nil {
		return s, fmt.Errorf("read limits of %d: %w", pid, err)
	}
	if s.FDLimit, err = openFileLimit(limits); err != nil {
		return s, fmt.Errorf("read limits of %d: %w", pid, err)
	}
	stat, err := os.ReadFile(filepath.Join(dir, "stat"))
	if err != nil {
		return s, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	ticks, err := cpuTicks(stat)
	if err != nil {
		return s, fmt.Errorf("read stat of %d: %w", pid, err)
	}
	s.CPUSeconds = float64(ticks) / userHZ
	return s, nil
}

// readStatus reads the numeric fields of a /proc status file ("VmRSS:
// 9120 kB" gives 9120).
func readStatus(path string) (map[string]uint64, error) {
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

// openFileLimit finds the soft limit in /proc/PID/limits:
//
//	Max open files            20000                20000                files
func openFileLimit(limits []byte) (int, error) {
	for line := range strings.SplitSeq(string(limits), "\n") {
		rest, ok := strings.CutPrefix(line, "Max open files")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) == 0 {
			break
		}
		if fields[0] == "unlimited" {
			return 1 << 30, nil
		}
		return strconv.Atoi(fields[0])
	}
	return 0, fmt.Errorf("no \"Max open files\" line")
}

// cpuTicks is utime + stime from /proc/PID/stat. The fields after the
// command name, which is in parentheses and may hold spaces: utime is
// field 14 and stime 15.
func cpuTicks(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("no command name")
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 13 {
		return 0, fmt.Errorf("%d fields after the command name, want 13 or more", len(fields))
	}
	utime, err := strconv.ParseUint(fields[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("utime: %w", err)
	}
	stime, err := strconv.ParseUint(fields[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stime: %w", err)
	}
	return utime + stime, nil
}

// slabKiB is the kernel's slab memory (/proc/meminfo Slab), where socket
// structures live: machine-wide, so other work moves it too.
func slabKiB() uint64 {
	m, err := readStatus("/proc/meminfo")
	if err != nil {
		return 0
	}
	return m["Slab"]
}
