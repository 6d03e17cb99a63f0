// SPDX-License-Identifier: Apache-2.0

package store

import "time"

// Observer is told what a backend does that an operator watches (the
// server's metrics). Its methods are called once what they report is
// durable, from the goroutines of the writes, and must not block.
type Observer interface {
	// Committed reports how long a write took to be durable, from its
	// start: for bbolt the wait for the commit it shares and the fsync.
	Committed(d time.Duration)
	// Dropped reports n queued downstream messages dropped for reason.
	Dropped(reason DropReason, n int)
}

// DropReason is why queued downstream messages were dropped undelivered.
type DropReason string

const (
	// DropExpired: their time to live ran out.
	DropExpired DropReason = "expiry"
	// DropCollapsed: a newer message with the same token and collapse key
	// replaced it.
	DropCollapsed DropReason = "collapse"
	// DropCap: GCM's caps on what one app on one device may have stored
	// (MaxPendingPerApp, MaxCollapseKeysPerApp).
	DropCap DropReason = "cap"
)

// Stats is what a backend holds, as an operator watches it.
type Stats struct {
	// Messages counts the downstream messages queued, on every device;
	// negative when the backend cannot count them cheaply.
	Messages int
	// Oldest is when the oldest of them was sent; zero when none is.
	Oldest time.Time
	// Bytes is the space the backend takes.
	Bytes int64
	// Free is the part of Bytes that new records may reuse before the
	// backend grows: bbolt's free pages; negative when the backend does
	// not know it.
	Free int64
}

// noObserver is the Observer of a backend given none.
type noObserver struct{}

func (noObserver) Committed(time.Duration) {}
func (noObserver) Dropped(DropReason, int) {}

// ObserverOrNone is obs, or an Observer that ignores everything when obs
// is nil.
func ObserverOrNone(obs Observer) Observer {
	if obs == nil {
		return noObserver{}
	}
	return obs
}
