// SPDX-License-Identifier: Apache-2.0

package clientip

import (
	"net/netip"
	"sync"
	"sync/atomic"
	"testing"
)

func TestCounter(t *testing.T) {
	c := NewCounter(2)
	a := netip.MustParseAddr("192.0.2.1")
	r1, ok1 := c.Acquire(a)
	r2, ok2 := c.Acquire(netip.MustParseAddr("::ffff:192.0.2.1")) // the same client
	if !ok1 || !ok2 {
		t.Fatal("refused under the cap")
	}
	r3, ok3 := c.Acquire(a)
	if ok3 {
		t.Fatal("a third place under a cap of two")
	}
	r3() // a refusal's release does nothing
	if n := c.Count(a); n != 2 {
		t.Fatalf("Count = %d, want 2", n)
	}
	if _, ok := c.Acquire(netip.MustParseAddr("192.0.2.2")); !ok {
		t.Fatal("another client refused")
	}
	r1()
	r1() // twice: gives back one place only
	if n := c.Count(a); n != 1 {
		t.Fatalf("Count after one release = %d, want 1", n)
	}
	if _, ok := c.Acquire(a); !ok {
		t.Fatal("refused after a release")
	}
	if _, ok := c.Acquire(a); ok {
		t.Fatal("over the cap again")
	}
	r2()
	if n := c.Clients(); n != 2 {
		t.Fatalf("Clients = %d, want 2", n)
	}
}

func TestCounterForgetsClients(t *testing.T) {
	c := NewCounter(1)
	var releases []func()
	for i := range 100 {
		r, ok := c.Acquire(netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}))
		if !ok {
			t.Fatal("refused")
		}
		releases = append(releases, r)
	}
	if n := c.Clients(); n != 100 {
		t.Fatalf("Clients = %d, want 100", n)
	}
	for _, r := range releases {
		r()
	}
	if n := c.Clients(); n != 0 || len(c.n) != 0 {
		t.Fatalf("Clients after every release = %d, want 0", n)
	}
}

func TestCounterIPv6Per64(t *testing.T) {
	c := NewCounter(2)
	_, ok1 := c.Acquire(netip.MustParseAddr("2001:db8:1:2::1"))
	_, ok2 := c.Acquire(netip.MustParseAddr("2001:db8:1:2:aaaa:bbbb:cccc:dddd"))
	_, ok3 := c.Acquire(netip.MustParseAddr("2001:db8:1:2::ffff"))
	_, ok4 := c.Acquire(netip.MustParseAddr("2001:db8:1:3::1"))
	if !ok1 || !ok2 || ok3 || !ok4 {
		t.Fatalf("acquired %v %v %v %v, want true true false (the same /64) true (another /64)", ok1, ok2, ok3, ok4)
	}
}

func TestCounterNoCap(t *testing.T) {
	for _, c := range []*Counter{NewCounter(0), NewCounter(-1), new(Counter)} {
		a := netip.MustParseAddr("192.0.2.1")
		for range 1000 {
			if _, ok := c.Acquire(a); !ok {
				t.Fatalf("refused with limit %d", c.Limit())
			}
		}
		if n := c.Count(a); n != 1000 {
			t.Fatalf("Count = %d, want 1000", n)
		}
	}
}

// TestCounterConcurrent takes and gives back places from many goroutines;
// with -race it checks the locking, and the cap must hold throughout.
func TestCounterConcurrent(t *testing.T) {
	const limit = 3
	c := NewCounter(limit)
	clients := []netip.Addr{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1"), netip.MustParseAddr("2001:db8::2")}
	held := make([]atomic.Int64, 2) // 192.0.2.1; 2001:db8::/64
	var over atomic.Bool
	var wg sync.WaitGroup
	for g := range 16 {
		wg.Go(func() {
			for i := range 500 {
				k := (g + i) % len(clients)
				r, ok := c.Acquire(clients[k])
				if !ok {
					continue
				}
				h := &held[min(k, 1)]
				if h.Add(1) > limit {
					over.Store(true)
				}
				h.Add(-1)
				r()
				r()
			}
		})
	}
	wg.Wait()
	if over.Load() {
		t.Error("more than the cap held at once")
	}
	if n := c.Clients(); n != 0 {
		t.Errorf("Clients after all released = %d, want 0", n)
	}
}

// TestCounterSetLimit changes the cap of a counter in use: a client over
// a lowered cap keeps its places and is refused until it is under it.
func TestCounterSetLimit(t *testing.T) {
	a := netip.MustParseAddr("192.0.2.1")
	for _, tt := range []struct {
		name        string
		from, to    int
		held        int
		wantAcquire bool
	}{
		{"raised", 2, 3, 2, true},
		{"lowered under what is held", 3, 1, 2, false},
		{"lowered to what is held", 3, 2, 2, false},
		{"lowered above what is held", 4, 3, 2, true},
		{"cap removed", 2, 0, 2, true},
		{"cap set", 0, 2, 2, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCounter(tt.from)
			for range tt.held {
				if _, ok := c.Acquire(a); !ok {
					t.Fatal("refused under the first cap")
				}
			}
			c.SetLimit(tt.to)
			if c.Limit() != tt.to {
				t.Errorf("Limit = %d, want %d", c.Limit(), tt.to)
			}
			if _, ok := c.Acquire(a); ok != tt.wantAcquire {
				t.Errorf("Acquire after SetLimit(%d) with %d held: %v, want %v", tt.to, tt.held, ok, tt.wantAcquire)
			}
			if n := c.Count(a); n < tt.held {
				t.Errorf("Count = %d: places held before were taken back", n)
			}
		})
	}
}
