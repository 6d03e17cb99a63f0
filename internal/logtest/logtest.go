// SPDX-License-Identifier: Apache-2.0

// Package logtest collects what a daemon logs during a test, so that the
// test can look for a line (a dropped message, a refused login) or make
// sure a secret never appears.
//
// It is for tests only; it holds the whole log in memory.
package logtest

import (
	"bytes"
	"sync"
)

// Buffer is an io.Writer for a slog handler that many goroutines may
// write to while the test reads it.
type Buffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// String returns everything written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
