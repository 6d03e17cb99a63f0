// SPDX-License-Identifier: Apache-2.0

package ipctest

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"
)

// Logger logs at debug level to the test's output, so that a failing
// test shows what the door did.
func Logger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Door is what both doors have in common: Serve until Close.
type Door interface {
	Serve(ctx context.Context) error
	Close() error
}

// Serve runs d and returns a function that closes it and checks that
// Close makes Serve return without an error. The test's end calls it, if
// the test has not.
func Serve(t testing.TB, d Door) (closeAndWait func()) {
	t.Helper()
	served := make(chan error, 1)
	go func() { served <- d.Serve(context.Background()) }()
	var once sync.Once
	closeAndWait = func() {
		once.Do(func() {
			if err := d.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			select {
			case err := <-served:
				if err != nil {
					t.Errorf("Serve: %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Error("Serve did not return after Close")
			}
		})
	}
	t.Cleanup(closeAndWait)
	return closeAndWait
}
