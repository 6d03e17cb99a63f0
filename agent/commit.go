// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"errors"
	"sync"

	"tether/store"
)

// committer runs the agent's writes of downstream messages and of app acks
// in shared transactions: what is submitted while one commits goes into
// the next, one fsync for all. Requests are applied in the order they are
// submitted (a transaction stores its messages before it applies its
// acks), so an ack submitted after the messages it names removes them.
type committer struct {
	store   *store.Store
	quota   store.Quota
	seenIDs int

	mu      sync.Mutex
	queue   []*commitReq
	running bool
	stopped bool
	// runs is the goroutine that commits, while anything is queued.
	runs sync.WaitGroup
}

// errStopped fails what is submitted once the agent has stopped.
var errStopped = errors.New("agent stopped")

// commitReq is downstream messages to store, or an app's acks.
type commitReq struct {
	msgs []store.Message
	app  string
	ids  []string
	done chan commitResult // buffered; written once
}

type commitResult struct {
	outcomes []store.Outcome // of msgs, in order
	dropped  store.Swept     // what the quota dropped to hold msgs
	err      error
}

func newCommitReq(msgs []store.Message, app string, ids []string) *commitReq {
	return &commitReq{msgs: msgs, app: app, ids: ids, done: make(chan commitResult, 1)}
}

// submit queues r for the next transaction; r.done has the outcome.
func (c *committer) submit(r *commitReq) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopped {
		r.done <- commitResult{err: errStopped}
		return
	}
	c.queue = append(c.queue, r)
	if !c.running {
		c.running = true
		c.runs.Go(c.run)
	}
}

// stop fails what is submitted from now on, and waits for what was.
func (c *committer) stop() {
	c.mu.Lock()
	c.stopped = true
	c.mu.Unlock()
	c.runs.Wait()
}

// run commits what is queued until nothing is.
func (c *committer) run() {
	for {
		c.mu.Lock()
		reqs := c.queue
		c.queue = nil
		if len(reqs) == 0 {
			c.running = false
			c.mu.Unlock()
			return
		}
		c.mu.Unlock()
		c.commit(reqs)
	}
}

// commit runs reqs in one transaction and tells each its outcome; a
// failed transaction fails all of them.
func (c *committer) commit(reqs []*commitReq) {
	w := store.Writes{Quota: c.quota, SeenIDs: c.seenIDs}
	for _, r := range reqs {
		w.Messages = append(w.Messages, r.msgs...)
		if len(r.ids) > 0 {
			if w.Acks == nil {
				w.Acks = map[string][]string{}
			}
			w.Acks[r.app] = append(w.Acks[r.app], r.ids...)
		}
	}
	outcomes, dropped, err := c.store.Commit(w)
	for _, r := range reqs {
		res := commitResult{err: err}
		if err == nil && len(r.msgs) > 0 {
			res.outcomes, outcomes = outcomes[:len(r.msgs)], outcomes[len(r.msgs):]
			res.dropped, dropped = dropped, nil // told once
		}
		r.done <- res
	}
}
