// SPDX-License-Identifier: Apache-2.0

// Package testwait waits, in tests, for a state that goroutines or
// processes reach in their own time: a session opened, a file written, a
// log line printed. It waits; it never times: a figure is a benchmark's
// to show, not a test's to assert.
//
// The wait between looks starts at a millisecond and doubles up to a
// tenth of a second, so that a state reached at once is seen at once, and
// a condition that starts a process (tetherctl, a query of a server) is
// not run hundreds of times a second.
package testwait

import (
	"errors"
	"testing"
	"time"
)

const (
	firstPause = time.Millisecond
	longPause  = 100 * time.Millisecond
)

// For runs cond until it returns nil. Past timeout it fails t, naming
// what it waited for and cond's last error.
func For(t testing.TB, what string, timeout time.Duration, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	pause := firstPause
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s: %v", timeout, what, err)
		}
		time.Sleep(pause)
		pause = min(2*pause, longPause)
	}
}

// errNotYet is what Until's condition reports while it does not hold.
var errNotYet = errors.New("not yet")

// Until runs cond until it holds. Past timeout it fails t, naming what it
// waited for.
func Until(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	For(t, what, timeout, func() error {
		if cond() {
			return nil
		}
		return errNotYet
	})
}
