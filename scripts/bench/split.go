// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// cpuShare is one part of a CPU profile: what a category's samples add
// up to.
type cpuShare struct {
	Category string        `json:"category"`
	Time     time.Duration `json:"time"`
}

// profileSplit is one process's CPU profile over one run, split.
type profileSplit struct {
	Process string        `json:"process"`
	Run     string        `json:"run"`
	Total   time.Duration `json:"total"`
	Shares  []cpuShare    `json:"shares"`
}

// splitProfiles splits the profiles -profile had tetherd and
// tether-server write over each throughput run.
func splitProfiles(c config, bins binaries, runs []runResult) ([]profileSplit, error) {
	var out []profileSplit
	for i, run := range runs {
		for _, p := range []struct{ name, binary string }{{"tetherd", bins.agent}, {"tether-server", bins.server}} {
			prefix := filepath.Join(c.profile, fmt.Sprintf("%s.%d", p.name, i+1))
			if err := waitWritten(prefix); err != nil {
				return nil, err
			}
			shares, err := splitProfile(p.binary, prefix+".cpu")
			if err != nil {
				return nil, err
			}
			s := profileSplit{Process: p.name, Run: run.Name, Shares: shares}
			for _, sh := range shares {
				s.Total += sh.Time
			}
			out = append(out, s)
		}
	}
	return out, nil
}

// waitWritten waits until a process has written its profiles to
// prefix.cpu and prefix.allocs: the allocations go last, once the CPU
// profile is closed.
func waitWritten(prefix string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(prefix + ".allocs"); err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no profile at %s.allocs after 30 s: are the binaries built with -tags cpuprobe?", prefix)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// cpuCategories sort a profile's samples: each goes to the first category
// with a frame of its stack matching, so that the shares add up to the
// whole. The order puts the causes before the machinery they run in: a
// JSON decode inside a store transaction is JSON, an fsync is an fsync
// wherever it is.
var cpuCategories = []struct {
	name  string
	match *regexp.Regexp
}{
	{"fsync (bbolt's fdatasync)", regexp.MustCompile(`fdatasync|Fdatasync`)},
	{"garbage collection", regexp.MustCompile(`gcBgMarkWorker|bgsweep|gcAssistAlloc|bgscavenge|gcStart|sweepone|markroot`)},
	{"encoding/json", regexp.MustCompile(`^encoding/json\.`)},
	{"bbolt, other than fsync", regexp.MustCompile(`^go\.etcd\.io/bbolt`)},
	{"net/http (the app server's requests)", regexp.MustCompile(`^net/http\.`)},
	{"socket writes", regexp.MustCompile(`^syscall\.write|^internal/poll\.\(\*FD\)\.Write`)},
	{"socket reads", regexp.MustCompile(`^syscall\.read|^internal/poll\.\(\*FD\)\.Read`)},
	{"memory allocation", regexp.MustCompile(`^runtime\.(mallocgc|newobject|growslice|makeslice|makemap)`)},
	{"goroutine scheduling and wake-ups", regexp.MustCompile(`^runtime\.(schedule|findRunnable|park_m|goschedImpl|wakep|futex|mcall|ready)`)},
}

// splitProfile reads a CPU profile of binary with go tool pprof and sorts
// its samples into cpuCategories, with "other" last.
func splitProfile(binary, profile string) ([]cpuShare, error) {
	out, err := exec.Command("go", "tool", "pprof", "-traces", binary, profile).Output()
	if err != nil {
		return nil, fmt.Errorf("read profile %s: %w", profile, exitDetail(err))
	}
	return splitTraces(strings.NewReader(string(out)))
}

// traceSeparator begins each sample's stack in pprof's -traces output.
const traceSeparator = "-----------+-"

// splitTraces sorts the stacks in the text of go tool pprof -traces: each
// begins with a separator line, then its first frame after the sample's
// time ("10ms   runtime.mallocgc"), then a frame per line.
func splitTraces(r io.Reader) ([]cpuShare, error) {
	shares := make([]cpuShare, len(cpuCategories)+1)
	for i, c := range cpuCategories {
		shares[i].Category = c.name
	}
	shares[len(cpuCategories)].Category = "other"
	var frames []string
	var sample time.Duration
	flush := func() {
		if sample > 0 {
			shares[categoryOf(frames)].Time += sample
		}
		frames, sample = frames[:0], 0
	}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		switch {
		case strings.HasPrefix(line, traceSeparator):
			flush()
			sample = -1
		case sample == -1:
			f := strings.Fields(line)
			if len(f) < 2 {
				return nil, fmt.Errorf("read profile: a stack begins with %q, not a time and a frame", line)
			}
			d, err := time.ParseDuration(f[0])
			if err != nil {
				return nil, fmt.Errorf("read profile: a stack begins with %q: %w", line, err)
			}
			sample, frames = d, append(frames, f[1])
		case sample > 0 && line != "":
			frames = append(frames, strings.Fields(line)[0])
		}
	}
	flush()
	return shares, sc.Err()
}

func categoryOf(frames []string) int {
	for i, c := range cpuCategories {
		for _, f := range frames {
			if c.match.MatchString(f) {
				return i
			}
		}
	}
	return len(cpuCategories)
}

// markdownProfiles prints, for each run profiled, where each process's
// CPU went.
func (r *report) markdownProfiles(w io.Writer) {
	for i := 0; i+1 < len(r.Profiles); i += 2 {
		a, b := r.Profiles[i], r.Profiles[i+1]
		fmt.Fprintf(w, "### Where the CPU went, %s (profiles)\n\n", a.Run)
		fmt.Fprintf(w, "| | %s | %s |\n|---|---:|---:|\n", a.Process, b.Process)
		for j := range a.Shares {
			fmt.Fprintf(w, "| %s | %s | %s |\n", a.Shares[j].Category, percent(a.Shares[j].Time, a.Total), percent(b.Shares[j].Time, b.Total))
		}
		fmt.Fprintf(w, "| CPU time profiled | %.2f s | %.2f s |\n\n", a.Total.Seconds(), b.Total.Seconds())
	}
}

func percent(part, whole time.Duration) string {
	if whole <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.1f%%", 100*float64(part)/float64(whole))
}
