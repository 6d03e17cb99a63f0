// SPDX-License-Identifier: Apache-2.0

package main

import (
	"strings"
	"testing"
	"time"
)

const sampleTraces = `File: tetherd
Type: cpu
Duration: 66.80s, Total samples = 13.24s (19.82%)
-----------+-------------------------------------------------------
      10ms   go.etcd.io/bbolt/internal/common.(*Page).Id (inline)
             go.etcd.io/bbolt.(*Tx).Commit
             tether/agent.(*committer).run
-----------+-------------------------------------------------------
      30ms   internal/runtime/syscall/linux.Syscall6
             syscall.Fdatasync
             go.etcd.io/bbolt.fdatasync
             go.etcd.io/bbolt.(*Tx).Commit
-----------+-------------------------------------------------------
      20ms   runtime.scanObject
             runtime.gcAssistAlloc
             runtime.mallocgc
             encoding/json.Marshal
-----------+-------------------------------------------------------
     1.5s   encoding/json.(*decodeState).object
             encoding/json.Unmarshal
             go.etcd.io/bbolt.(*DB).View
-----------+-------------------------------------------------------
      40ms   main.serve
-----------+-------------------------------------------------------
`

func TestSplitTraces(t *testing.T) {
	shares, err := splitTraces(strings.NewReader(sampleTraces))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]time.Duration{
		"bbolt, other than fsync":   10 * time.Millisecond,
		"fsync (bbolt's fdatasync)": 30 * time.Millisecond,
		"garbage collection":        20 * time.Millisecond, // before the JSON it ran in
		"encoding/json":             1500 * time.Millisecond,
		"other":                     40 * time.Millisecond,
	}
	var total time.Duration
	for _, s := range shares {
		total += s.Time
		if s.Time != want[s.Category] {
			t.Errorf("%s: %v, want %v", s.Category, s.Time, want[s.Category])
		}
	}
	if total != 1600*time.Millisecond {
		t.Errorf("shares add up to %v, want 1.6s", total)
	}
}

func TestSplitTracesBad(t *testing.T) {
	for _, text := range []string{
		"-----------+----\n      runtime.mallocgc\n",
		"-----------+----\n      tenms   runtime.mallocgc\n",
	} {
		if _, err := splitTraces(strings.NewReader(text)); err == nil {
			t.Errorf("%q: no error", text)
		}
	}
}

func FuzzSplitTraces(f *testing.F) {
	f.Add(sampleTraces)
	f.Fuzz(func(t *testing.T, text string) {
		shares, err := splitTraces(strings.NewReader(text))
		if err == nil && len(shares) != len(cpuCategories)+1 {
			t.Fatalf("%d shares", len(shares))
		}
	})
}
