// SPDX-License-Identifier: Apache-2.0

// Package busclienttest connects tests to a bus with busclient, the way
// dbustest's Bus.Conn does with godbus (dbustest cannot import busclient:
// busclient's own tests use dbustest).
package busclienttest

import (
	"context"
	"testing"
	"time"

	"tether/internal/busclient"
)

// dialTimeout bounds the connection and the Hello on a loaded machine.
const dialTimeout = 10 * time.Second

// Dial connects to the bus at addr, taking descriptors passed in replies
// (busclient.DialWithFDs); the connection is closed when the test ends.
func Dial(t testing.TB, addr string) *busclient.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dialTimeout)
	defer cancel()
	c, err := busclient.DialWithFDs(ctx, addr)
	if err != nil {
		t.Fatalf("connect to the bus %s: %v", addr, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}
