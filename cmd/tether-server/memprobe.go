// SPDX-License-Identifier: Apache-2.0

//go:build memprobe

// This file is built only with -tags memprobe, to measure what the server
// holds (scripts/loadgen -memprobe, docs/benchmarks.md), never into a
// release. On SIGUSR1 the server collects garbage and writes one line on
// stderr with what the Go runtime then holds, and, with TETHER_HEAPPROFILE
// set, a heap profile to that path with the probe's number appended. It
// serves nothing: the profile goes to a file whoever started it named.

package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"runtime/metrics"
	"runtime/pprof"
	"syscall"
)

func init() {
	probes := make(chan os.Signal, 1)
	signal.Notify(probes, syscall.SIGUSR1)
	go func() {
		for n := 1; ; n++ {
			<-probes
			if err := memprobe(n, os.Stderr, os.Getenv("TETHER_HEAPPROFILE")); err != nil {
				fmt.Fprintf(os.Stderr, "memprobe %d: %v\n", n, err)
			}
		}
	}()
}

// memprobe writes probe n's line to w, after a collection so that the heap
// is what is live, and a heap profile to profile.n unless profile is "".
//
//	memprobe n=1 live=… stacks=… free=… other=… goroutines=…
//
// live is the heap's objects, stacks the memory of goroutine stacks (not
// the part in use that the GC trace counts), free the heap memory the
// process has and holds nothing in (room for the next cycle, and space
// left in spans), other the runtime's own (its metadata, profiling
// buckets); all in bytes, none released to the system.
func memprobe(n int, w io.Writer, profile string) error {
	runtime.GC()
	s := []metrics.Sample{
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/stacks:bytes"},
		{Name: "/memory/classes/os-stacks:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/sched/goroutines:goroutines"},
	}
	metrics.Read(s)
	v := func(i int) uint64 { return s[i].Value.Uint64() }
	total, released, live, stacks, free := v(0), v(1), v(2), v(3)+v(4), v(5)+v(6)
	if _, err := fmt.Fprintf(w, "memprobe n=%d live=%d stacks=%d free=%d other=%d goroutines=%d\n",
		n, live, stacks, free, total-released-live-stacks-free, v(7)); err != nil {
		return err
	}
	if profile == "" {
		return nil
	}
	f, err := os.Create(fmt.Sprintf("%s.%d", profile, n))
	if err != nil {
		return fmt.Errorf("write heap profile: %w", err)
	}
	if err := pprof.Lookup("heap").WriteTo(f, 0); err != nil {
		f.Close()
		return fmt.Errorf("write heap profile: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write heap profile: %w", err)
	}
	return nil
}
