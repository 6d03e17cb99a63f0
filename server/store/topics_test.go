// SPDX-License-Identifier: Apache-2.0

package store

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

func TestSubscriptionLimit(t *testing.T) {
	s, _ := openTemp(t)
	f := newFixture(t, s)
	err := s.db.Update(func(tx *bolt.Tx) error {
		for i := range MaxTopicsPerRegistration {
			if err := subscribe(tx, f.reg, fmt.Sprint("t", i), present); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Subscribe(ctx, f.device.ID, f.reg.App, f.sender.ID, "one-more", time.Now()); !errors.Is(err, ErrTooManyTopics) {
		t.Errorf("subscription %d: %v", MaxTopicsPerRegistration+1, err)
	}
	if err := s.Subscribe(ctx, f.device.ID, f.reg.App, f.sender.ID, "t5", time.Now()); err != nil {
		t.Errorf("subscribing again to a topic it has: %v", err)
	}
	if err := s.Subscribe(ctx, f.device.ID, "unregistered", f.sender.ID, "t", time.Now()); !errors.Is(err, ErrNotFound) {
		t.Errorf("subscription without a registration: %v", err)
	}
}

func TestPendingCountsRebuiltOnOpen(t *testing.T) {
	s, path := openTemp(t)
	f := newFixture(t, s)
	var msgs []Message
	for i := range MaxPendingPerApp {
		msgs = append(msgs, f.msg(fmt.Sprint("m", i), "", time.Hour))
	}
	enqueue(t, s, msgs...)
	// A store written before the counts existed.
	if err := s.db.Update(func(tx *bolt.Tx) error { return tx.DeleteBucket(bucketAppPending) }); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	enqueue(t, s, f.msg("one-more", "", time.Hour))
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"one-more"}) {
		t.Errorf("after the 101st: %d pending, want the cap applied", len(got))
	}
	if n, err := s.Notices(ctx, f.device.ID); err != nil || len(n) != 1 || n[0].Count != MaxPendingPerApp {
		t.Errorf("notices %+v, %v", n, err)
	}
}

// TestSubscriptionsFromBeforeDates reads a subscription stored before
// their dates were kept: it has no date.
func TestSubscriptionsFromBeforeDates(t *testing.T) {
	s, _ := openTemp(t)
	f := newFixture(t, s)
	err := s.db.Update(func(tx *bolt.Tx) error { return subscribe(tx, f.reg, "old", present) })
	if err != nil {
		t.Fatal(err)
	}
	subs, err := s.Subscriptions(ctx, f.reg.Token)
	if err != nil || len(subs) != 1 || subs[0].Topic != "old" || !subs[0].Added.IsZero() {
		t.Fatalf("subscriptions %+v, %v; want old without a date", subs, err)
	}
}
