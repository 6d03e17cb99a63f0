// SPDX-License-Identifier: Apache-2.0

package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// UserHZ is the unit of the CPU times in /proc/PID/stat: 100 ticks a
// second on every architecture Linux runs Go on.
const UserHZ = 100

// unlimitedFiles stands for an open-file limit of "unlimited": more than
// any process can open.
const unlimitedFiles = 1 << 30

// Sample is a process's state at one moment.
type Sample struct {
	At time.Time
	Switches
	RSSKiB   uint64 // VmRSS
	CPUTicks uint64 // user and system time so far, in 1/UserHZ s
}

// Switches is the context switches of a process's threads so far: how
// often each went to sleep and was woken (voluntary) or was preempted
// (involuntary).
type Switches struct {
	Voluntary, Involuntary uint64
	// Threads maps each thread's id to its switches, voluntary and not.
	Threads map[int]uint64
}

// Total is the switches of all the threads, voluntary and not.
func (s Switches) Total() uint64 { return s.Voluntary + s.Involuntary }

// Read samples process pid's context switches, RSS and CPU time.
func Read(pid int) (Sample, error) {
	s := Sample{At: time.Now()}
	var err error
	if s.Switches, err = readSwitches(pid); err != nil {
		return Sample{}, err
	}
	st, err := Status(pid)
	if err != nil {
		return Sample{}, err
	}
	s.RSSKiB = st["VmRSS"]
	if s.CPUTicks, err = CPUTicks(pid); err != nil {
		return Sample{}, err
	}
	return s, nil
}

// readSwitches sums each thread's switches from its own status file.
func readSwitches(pid int) (Switches, error) {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return Switches{}, fmt.Errorf("list the threads of process %d: %w", pid, err)
	}
	s := Switches{Threads: make(map[int]uint64, len(tasks))}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		f, err := parseFile(filepath.Join(dir, t.Name(), "status"), parseFields)
		if err != nil {
			continue // the thread ended meanwhile
		}
		v, nv := f["voluntary_ctxt_switches"], f["nonvoluntary_ctxt_switches"]
		s.Threads[tid] = v + nv
		s.Voluntary += v
		s.Involuntary += nv
	}
	return s, nil
}

// Status reads the numeric fields of /proc/PID/status, in the file's
// units: "VmRSS:  9120 kB" reads as VmRSS 9120.
func Status(pid int) (map[string]uint64, error) {
	return readPID(pid, "status", "status", parseFields)
}

// Meminfo reads the numeric fields of /proc/meminfo, the machine's
// memory, in KiB.
func Meminfo() (map[string]uint64, error) {
	f, err := parseFile("/proc/meminfo", parseFields)
	if err != nil {
		return nil, fmt.Errorf("read the machine's memory: %w", err)
	}
	return f, nil
}

// readPID reads and parses a file of /proc/PID; what names it in an error.
func readPID[T any](pid int, file, what string, parse func([]byte) (T, error)) (T, error) {
	v, err := parseFile(fmt.Sprintf("/proc/%d/%s", pid, file), parse)
	if err != nil {
		var zero T
		return zero, fmt.Errorf("read the %s of process %d: %w", what, pid, err)
	}
	return v, nil
}

// parseFile reads a /proc file and parses it.
func parseFile[T any](path string, parse func([]byte) (T, error)) (T, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		var zero T
		return zero, err
	}
	return parse(b)
}

// parseFields reads the "Key: number ..." lines of a status file, passing
// over those whose value does not start with a decimal number (Name,
// State).
func parseFields(b []byte) (map[string]uint64, error) {
	out := map[string]uint64{}
	for line := range bytes.Lines(b) {
		key, value, ok := bytes.Cut(line, []byte(":"))
		if !ok {
			continue
		}
		fields := bytes.Fields(value)
		if len(fields) == 0 {
			continue
		}
		if n, err := strconv.ParseUint(string(fields[0]), 10, 64); err == nil {
			out[string(key)] = n
		}
	}
	if len(out) == 0 {
		return nil, errors.New("no numeric fields")
	}
	return out, nil
}

// CPUTicks reads the user and system time process pid has used so far, in
// 1/UserHZ s.
func CPUTicks(pid int) (uint64, error) {
	return readPID(pid, "stat", "CPU time", parseCPUTicks)
}

// parseCPUTicks is utime + stime from /proc/PID/stat. The command name,
// field 2, is in parentheses and may itself hold spaces and parentheses,
// so the fields are counted from its last ')': utime is field 14 and
// stime 15.
func parseCPUTicks(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("no command name")
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

// OpenFileLimit reads process pid's soft limit on open files. A limit of
// "unlimited" reads as 1<<30, more than a process can open.
func OpenFileLimit(pid int) (int, error) {
	return readPID(pid, "limits", "open-file limit", parseOpenFileLimit)
}

// parseOpenFileLimit finds the soft limit in /proc/PID/limits:
//
//	Max open files            20000                20000                files
func parseOpenFileLimit(limits []byte) (int, error) {
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
			return unlimitedFiles, nil
		}
		return strconv.Atoi(fields[0])
	}
	return 0, errors.New(`no "Max open files" line`)
}
