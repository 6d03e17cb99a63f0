// SPDX-License-Identifier: Apache-2.0

// Package cpuprobe profiles a Tether binary while a benchmark runs: the
// binaries link it only when built with -tags cpuprobe (scripts/bench
// -profile, docs/benchmarks.md), never into a release. It serves nothing:
// profiles go to files whoever started the process named.
//
// With the environment variable TETHER_CPUPROFILE set to a path prefix,
// each SIGUSR2 toggles a CPU profile: the first starts one, written to
// PREFIX.N.cpu, the next stops it and writes, beside it, PREFIX.N.allocs,
// what the process allocated since it started.
package cpuprobe

import (
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"syscall"
)

// Start installs the toggle when TETHER_CPUPROFILE is set; the goroutine
// it starts lives as long as the process, as the signal can come at any
// time. Problems go to stderr: a probe must not stop the binary it
// measures.
func Start() {
	prefix := os.Getenv("TETHER_CPUPROFILE")
	if prefix == "" {
		return
	}
	toggles := make(chan os.Signal, 1)
	signal.Notify(toggles, syscall.SIGUSR2)
	go func() {
		for n := 1; ; n++ {
			<-toggles
			if err := profile(fmt.Sprintf("%s.%d", prefix, n), toggles); err != nil {
				fmt.Fprintf(os.Stderr, "cpuprobe %d: %v\n", n, err)
			}
		}
	}()
}

// profile writes a CPU profile to path.cpu until the next toggle, then
// the allocations to path.allocs.
func profile(path string, toggles <-chan os.Signal) error {
	cpu, err := os.Create(path + ".cpu")
	if err != nil {
		return err
	}
	defer cpu.Close()
	if err := pprof.StartCPUProfile(cpu); err != nil {
		return err
	}
	<-toggles
	pprof.StopCPUProfile()
	if err := cpu.Close(); err != nil {
		return err
	}
	allocs, err := os.Create(path + ".allocs")
	if err != nil {
		return err
	}
	if err := pprof.Lookup("allocs").WriteTo(allocs, 0); err != nil {
		allocs.Close()
		return err
	}
	return allocs.Close()
}
