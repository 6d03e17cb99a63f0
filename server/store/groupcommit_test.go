// SPDX-License-Identifier: Apache-2.0

package store

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"tether/internal/testwait"
)

func newGroupCommitter(t *testing.T) *groupCommitter {
	t.Helper()
	db, err := bolt.Open(filepath.Join(t.TempDir(), "g.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }); err != nil {
		t.Fatal(err)
	}
	return &groupCommitter{db: db, maxGroup: 1000}
}

func putKey(key string, txID *int) func(*bolt.Tx) error {
	return func(tx *bolt.Tx) error {
		if txID != nil {
			*txID = tx.ID()
		}
		return tx.Bucket([]byte("b")).Put([]byte(key), []byte("v"))
	}
}

func keysOf(t *testing.T, g *groupCommitter) []string {
	t.Helper()
	var keys []string
	g.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("b")).ForEach(func(k, _ []byte) error { keys = append(keys, string(k)); return nil })
	})
	return keys
}

// Writes that come while a commit runs wait for it, then share the next
// transaction; the one that came first did not wait for them.
func TestGroupCommitSharesTheNextTransaction(t *testing.T) {
	g := newGroupCommitter(t)
	release := make(chan struct{})
	firstDone := make(chan error, 1)
	var firstTx int
	go func() {
		firstDone <- g.do(func(tx *bolt.Tx) error {
			firstTx = tx.ID()
			<-release
			return tx.Bucket([]byte("b")).Put([]byte("first"), nil)
		})
	}()
	testwait.Until(t, "the first write to lead", 10*time.Second, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.leading && len(g.waiting) == 0
	})
	const n = 20
	ids := make([]int, n)
	var wg sync.WaitGroup
	errs := make([]error, n)
	for i := range n {
		wg.Go(func() { errs[i] = g.do(putKey(fmt.Sprint("k", i), &ids[i])) })
	}
	testwait.Until(t, "the writes to wait", 10*time.Second, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.waiting) == n
	})
	close(release)
	wg.Wait()
	if err := <-firstDone; err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if errs[i] != nil {
			t.Fatalf("write %d: %v", i, errs[i])
		}
		if ids[i] != ids[0] {
			t.Errorf("write %d in transaction %d, write 0 in %d: not one transaction", i, ids[i], ids[0])
		}
	}
	if ids[0] == firstTx {
		t.Errorf("the waiting writes shared the first write's transaction %d", firstTx)
	}
	if got := len(keysOf(t, g)); got != n+1 {
		t.Errorf("%d keys stored, want %d", got, n+1)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.leading || len(g.waiting) > 0 {
		t.Errorf("after the writes: leading %v, %d waiting", g.leading, len(g.waiting))
	}
}

// A write that fails, or panics, gets its own error and leaves nothing
// behind; the others of its group commit.
func TestGroupCommitFailureIsTheWritersOwn(t *testing.T) {
	g := newGroupCommitter(t)
	release := make(chan struct{})
	go g.do(func(*bolt.Tx) error { <-release; return nil })
	testwait.Until(t, "the first write to lead", 10*time.Second, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return g.leading
	})
	errBad := errors.New("bad write")
	writes := []func(*bolt.Tx) error{
		putKey("a", nil),
		func(tx *bolt.Tx) error {
			tx.Bucket([]byte("b")).Put([]byte("half"), nil)
			return errBad
		},
		putKey("b", nil),
		func(*bolt.Tx) error { panic("boom") },
		putKey("c", nil),
	}
	errs := make([]error, len(writes))
	var wg sync.WaitGroup
	for i, w := range writes {
		wg.Go(func() { errs[i] = g.do(w) })
	}
	testwait.Until(t, "the writes to wait", 10*time.Second, func() bool {
		g.mu.Lock()
		defer g.mu.Unlock()
		return len(g.waiting) == len(writes)
	})
	close(release)
	wg.Wait()
	for i, err := range errs {
		switch i {
		case 1:
			if !errors.Is(err, errBad) {
				t.Errorf("the failing write: %v, want %v", err, errBad)
			}
		case 3:
			if err == nil || !strings.Contains(err.Error(), "write panicked: boom") {
				t.Errorf("the panicking write: %v", err)
			}
		default:
			if err != nil {
				t.Errorf("write %d: %v", i, err)
			}
		}
	}
	if got := strings.Join(keysOf(t, g), ","); got != "a,b,c" {
		t.Errorf("stored %s, want a,b,c", got)
	}
}

// Many writers at once: every write commits once, and no writer is left
// waiting.
func TestGroupCommitManyWriters(t *testing.T) {
	g := newGroupCommitter(t)
	g.maxGroup = 7
	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if err := g.do(putKey(fmt.Sprintf("k%03d", i), nil)); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if got := len(keysOf(t, g)); got != n {
		t.Errorf("%d keys, want %d", got, n)
	}
}
