// SPDX-License-Identifier: Apache-2.0

package testwait

import (
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"
)

// recorder is a testing.TB that records a failure instead of ending the
// test, so that For's failure can be looked at.
type recorder struct {
	testing.TB
	failed string
}

func (r *recorder) Helper() {}

func (r *recorder) Fatalf(format string, args ...any) { r.failed = fmt.Sprintf(format, args...) }

func TestFor(t *testing.T) {
	tests := []struct {
		name     string
		holdsAt  int32 // the call at which cond first holds; 0: never
		wantFail string
	}{
		{name: "at once", holdsAt: 1},
		{name: "after a few looks", holdsAt: 5},
		{name: "never", wantFail: "timed out after 50ms waiting for the state: still 3"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var calls atomic.Int32
			r := &recorder{TB: t}
			For(r, "the state", 50*time.Millisecond, func() error {
				n := calls.Add(1)
				if tt.holdsAt != 0 && n >= tt.holdsAt {
					return nil
				}
				if r.failed != "" {
					return nil // Fatalf returned: end the wait
				}
				return errors.New("still 3")
			})
			if r.failed != tt.wantFail {
				t.Errorf("failure %q, want %q", r.failed, tt.wantFail)
			}
			if tt.holdsAt != 0 && calls.Load() != tt.holdsAt {
				t.Errorf("cond ran %d times, want %d", calls.Load(), tt.holdsAt)
			}
		})
	}
}

func TestUntil(t *testing.T) {
	r := &recorder{TB: t}
	looks := 0
	Until(r, "a flag", 20*time.Millisecond, func() bool {
		looks++
		return r.failed != "" // holds only once the wait has failed
	})
	if r.failed != "timed out after 20ms waiting for a flag: not yet" {
		t.Errorf("failure %q", r.failed)
	}
	if looks < 2 {
		t.Errorf("cond ran %d times before the timeout, want it run again", looks)
	}
}
