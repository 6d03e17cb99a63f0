// SPDX-License-Identifier: Apache-2.0

package logtest

import (
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
)

// Lines written from many goroutines at once arrive whole.
func TestConcurrentLinesArriveWhole(t *testing.T) {
	var buf Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for i := range 100 {
				log.Info("line", "g", g, "i", i)
			}
		})
	}
	wg.Wait()
	lines := strings.Split(strings.TrimSuffix(buf.String(), "\n"), "\n")
	if len(lines) != 800 {
		t.Fatalf("%d lines, want 800", len(lines))
	}
	for g := range 8 {
		for i := range 100 {
			if want := fmt.Sprintf("msg=line g=%d i=%d", g, i); !strings.Contains(buf.String(), want+"\n") {
				t.Fatalf("no line ending %q", want)
			}
		}
	}
}
