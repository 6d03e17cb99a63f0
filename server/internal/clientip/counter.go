// SPDX-License-Identifier: Apache-2.0

package clientip

import (
	"net/netip"
	"sync"
	"sync/atomic"
)

// Counter counts what each client holds open — connections, sessions —
// and refuses one over a cap. Clients are counted by Key: an IPv4 address,
// or an IPv6 /64. It holds an entry only for clients with something open,
// so its size follows what is open. Its zero value counts without a cap.
// It is safe for concurrent use.
type Counter struct {
	mu    sync.Mutex
	limit int
	n     map[netip.Prefix]int
}

// NewCounter returns a Counter that lets each client hold at most limit
// at once; no cap if limit is zero or negative.
func NewCounter(limit int) *Counter {
	return &Counter{limit: limit}
}

// Acquire takes a place for ip's client. If the client already holds the
// cap it returns ok false. release gives the place back; it is never nil,
// and calls after the first do nothing, so it can be deferred even when
// ok is false.
func (c *Counter) Acquire(ip netip.Addr) (release func(), ok bool) {
	k := Key(ip)
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.limit > 0 && c.n[k] >= c.limit {
		return func() {}, false
	}
	if c.n == nil {
		c.n = make(map[netip.Prefix]int)
	}
	c.n[k]++
	var done atomic.Bool
	return func() {
		if done.Swap(true) {
			return
		}
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.n[k]--; c.n[k] <= 0 {
			delete(c.n, k)
		}
	}, true
}

// Count is how many places ip's client holds.
func (c *Counter) Count(ip netip.Addr) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[Key(ip)]
}

// Clients is how many clients hold at least one place.
func (c *Counter) Clients() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.n)
}

// Limit is the cap; zero or negative means none.
func (c *Counter) Limit() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.limit
}

// SetLimit changes the cap. A client that holds more than a lowered cap
// keeps what it holds, and is refused until it is under the cap.
func (c *Counter) SetLimit(limit int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.limit = limit
}
