// SPDX-License-Identifier: Apache-2.0

package store

import (
	"errors"
	"fmt"
	"sync"

	bolt "go.etcd.io/bbolt"
)

// groupCommitter runs write functions in shared transactions, one fsync
// for many writes. A write that comes while no commit runs starts one at
// once; those that come while one runs wait for it, and then share the
// next. So a lone write waits for nobody, and under load each commit
// takes everything that came during the one before.
//
// bbolt's own Batch instead holds every write for MaxBatchDelay before it
// commits: on an idle server that delay is added to every send, and a
// delay much shorter than a commit piles up transactions behind the lock.
type groupCommitter struct {
	db *bolt.DB
	// maxGroup bounds the writes of one transaction.
	maxGroup int

	mu sync.Mutex
	// leading is set while a writer commits groups.
	leading bool
	// waiting are the writes for the next transaction.
	waiting []*groupWrite
}

type groupWrite struct {
	fn func(*bolt.Tx) error
	// done gets errLead when the write's goroutine is to commit the
	// next group, then the write's outcome.
	done chan error
}

// errLead passes the commit of the next group to a waiting writer, so
// that no writer commits for others longer than its own group.
var errLead = errors.New("commit the next group")

// do runs fn in a write transaction, with the writes that come while the
// one before commits. fn may run more than once: when a write of its group
// fails, the others run again without it. The outcome is fn's error, or
// the commit's.
func (g *groupCommitter) do(fn func(*bolt.Tx) error) error {
	w := &groupWrite{fn: fn, done: make(chan error, 1)}
	g.mu.Lock()
	g.waiting = append(g.waiting, w)
	lead := !g.leading
	g.leading = true
	g.mu.Unlock()
	if !lead {
		if err := <-w.done; err != errLead {
			return err
		}
	}
	g.mu.Lock()
	n := min(len(g.waiting), g.maxGroup)
	group := g.waiting[:n:n]
	g.waiting = g.waiting[n:]
	g.mu.Unlock()

	g.commit(group)

	g.mu.Lock()
	if len(g.waiting) > 0 {
		g.waiting[0].done <- errLead
	} else {
		g.leading = false
	}
	g.mu.Unlock()
	return <-w.done
}

// commit runs group in one transaction and tells each write its outcome.
// A write that fails is taken out and run alone, so that its error is its
// own; the others run again together.
func (g *groupCommitter) commit(group []*groupWrite) {
	for len(group) > 0 {
		failed := -1
		err := g.db.Update(func(tx *bolt.Tx) error {
			for i, w := range group {
				if err := safely(w.fn, tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed < 0 {
			for _, w := range group {
				w.done <- err
			}
			return
		}
		w := group[failed]
		group = append(group[:failed:failed], group[failed+1:]...)
		w.done <- g.db.Update(func(tx *bolt.Tx) error { return safely(w.fn, tx) })
	}
}

// safely runs fn, turning a panic into an error, as one write's panic
// must not take the others' goroutines down with it.
func safely(fn func(*bolt.Tx) error, tx *bolt.Tx) (err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("write panicked: %v", p)
		}
	}()
	return fn(tx)
}
