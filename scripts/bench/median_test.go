// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMedians(t *testing.T) {
	dir := t.TempDir()
	var paths []string
	for i, perSecond := range []struct{ tether, mosquitto float64 }{{1000, 10000}, {3000, 12000}, {2000, 40000}} {
		r := report{
			Settings:  settings{LatencyMessages: 10, LatencyRate: 200},
			Tether:    sideResult{Throughput: []runResult{{Messages: 10000, PerSecond: perSecond.tether}}},
			Mosquitto: sideResult{Throughput: []runResult{{Messages: 10000, PerSecond: perSecond.mosquitto}}},
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, string(rune('a'+i))+".json")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		paths = append(paths, p)
	}
	var out strings.Builder
	if err := medians(paths, &out); err != nil {
		t.Fatal(err)
	}
	// The ratios are 0.1, 0.25 and 0.05, taken within each run.
	want := "| throughput, 10,000 messages | messages/s | 2,000 (1,000 to 3,000) | 12,000 (10,000 to 40,000) | 0.10 (0.05 to 0.25) |"
	if !strings.Contains(out.String(), want) {
		t.Errorf("no line %q in\n%s", want, out.String())
	}
	if err := medians([]string{filepath.Join(dir, "missing.json")}, &out); err == nil {
		t.Error("a missing report: no error")
	}
}

func TestSpread(t *testing.T) {
	for _, tc := range []struct {
		v    []float64
		want string
	}{
		{nil, "–"},
		{[]float64{5}, "5.00 (5.00 to 5.00)"},
		{[]float64{4, 2}, "3.00 (2.00 to 4.00)"},
		{[]float64{300, 100, 200}, "200 (100 to 300)"},
	} {
		if got := spread(tc.v); got != tc.want {
			t.Errorf("spread(%v) = %q, want %q", tc.v, got, tc.want)
		}
	}
}
