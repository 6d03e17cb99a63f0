// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"time"

	"tether/ipc"
)

// expireLoop sweeps expired entries when the earliest one is due, never
// sooner than sweepGap after the previous sweep. With nothing to expire its
// timer is stopped: it does not poll.
func (a *Agent) expireLoop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	var last time.Time
	for {
		if due, ok := a.nextExpiry(); ok {
			wait := due.Sub(a.now())
			if gap := last.Add(sweepGap).Sub(a.now()); wait < gap {
				wait = gap
			}
			timer.Reset(wait)
		}
		select {
		case <-ctx.Done():
			return
		case <-a.expiryChanged:
			timer.Stop()
		case <-timer.C:
			a.sweep()
			last = a.now()
		}
	}
}

// nextExpiry is when the earliest held message or seen ID expires, or,
// while offline, the earliest pending upstream message (while connected,
// those are in the server's hands and wait for its answer).
func (a *Agent) nextExpiry() (time.Time, bool) {
	due, ok, err := a.store.NextExpiry()
	if err != nil {
		a.log.Error("read next expiry", "err", err)
		return time.Time{}, false
	}
	if a.currentSession() != nil {
		return due, ok
	}
	pending, err := a.store.Outbox()
	if err != nil {
		a.log.Error("read outbox", "err", err)
		return due, ok
	}
	for _, u := range pending {
		if !ok || u.Expires.Before(due) {
			due, ok = u.Expires, true
		}
	}
	return due, ok
}

// sweep drops what has expired: held messages (their apps learn how many
// at their next delivery) and, while offline, pending upstream messages
// (their apps get ResultTTLExceeded).
func (a *Agent) sweep() {
	now := a.now()
	swept, err := a.store.Sweep(now)
	if err != nil {
		a.log.Error("sweep expired messages", "err", err)
	}
	for app, ids := range swept {
		a.log.Info("messages expired before their app acknowledged them", "app", app, "count", len(ids))
		a.inbox.forget(app, ids, true)
	}
	if a.currentSession() != nil {
		return
	}
	expired, err := a.store.ExpireUpstream(now)
	if err != nil {
		a.log.Error("expire upstream messages", "err", err)
	}
	for _, u := range expired {
		a.log.Info("upstream message expired before the server took it", "app", u.App, "id", u.ID)
		a.report(ipc.SendResult{App: u.App, ID: u.ID, Err: ResultTTLExceeded})
	}
}
