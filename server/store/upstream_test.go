// SPDX-License-Identifier: Apache-2.0

package store

import (
	"cmp"
	"fmt"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestUpstreamIndexBuiltForOlderStore: a store written before the upstream
// lanes and the per-app count gets them at Open, from its queue: the
// dispatcher finds every message in its lane, and an app already at the
// cap is refused.
func TestUpstreamIndexBuiltForOlderStore(t *testing.T) {
	s, path := openTemp(t)
	f := newFixture(t, s)
	for i := range MaxUpstreamPerApp {
		u := Upstream{Device: f.device.ID, App: f.reg.App, Sender: f.sender.ID, ID: fmt.Sprint("u", i), Received: t0, Expiry: t0.Add(time.Hour)}
		if out, err := s.PutUpstream(ctx, &u, t0.Add(time.Hour)); err != nil || out != UpstreamQueued {
			t.Fatalf("queue %s: %v, %v", u.ID, out, err)
		}
	}
	s.Close()
	// As a store of before: the queue without its index.
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketUpLanes, bucketUpCounts} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return nil
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	lane, err := s.NextUpstream(ctx, f.device.ID, f.sender.ID, 0, 2*MaxUpstreamPerApp)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, u := range lane {
		ids = append(ids, u.ID)
	}
	if len(ids) != MaxUpstreamPerApp || ids[0] != "u0" || !slices.IsSortedFunc(lane, func(a, b Upstream) int { return cmp.Compare(a.Seq, b.Seq) }) {
		t.Errorf("lane after Open: %v", ids)
	}
	u := Upstream{Device: f.device.ID, App: f.reg.App, Sender: f.sender.ID, ID: "over", Received: t0, Expiry: t0.Add(time.Hour)}
	if out, err := s.PutUpstream(ctx, &u, t0.Add(time.Hour)); err != nil || out != UpstreamTooManyMessages {
		t.Errorf("an app at the cap after Open: %v, %v", out, err)
	}
}
