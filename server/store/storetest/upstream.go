// SPDX-License-Identifier: Apache-2.0

package storetest

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"tether/server/store"
)

// The tests of the upstream queue's bounds: GCM's cap on an app's pending
// messages, and the lanes (a device's messages for one sender) that the
// dispatcher takes turns between.

// putUp queues an upstream message of app on the fixture's device for
// sender and returns what PutUpstream did with it.
func (f *fixture) putUp(t *testing.T, app, sender, id string) (store.PutOutcome, store.Upstream) {
	t.Helper()
	u := store.Upstream{Device: f.device.ID, App: app, Sender: sender, ID: id, TTL: 3600,
		Received: T0, Expiry: T0.Add(time.Hour), Data: map[string]string{"id": id}}
	out, err := f.s.PutUpstream(ctx(t), &u, T0.Add(time.Hour))
	if err != nil {
		t.Fatalf("queue upstream %s of %s: %v", id, app, err)
	}
	return out, u
}

// secondSender adds another sender and registers the fixture's app for
// it too.
func (f *fixture) secondSender(t *testing.T) store.Sender {
	t.Helper()
	snd, err := f.s.AddSender(ctx(t), "second backend", "", Hash("key2"), T0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.s.Register(ctx(t), f.device.ID, f.reg.App, snd.ID, "", T0); err != nil {
		t.Fatal(err)
	}
	return snd
}

// testUpstreamCapPerApp: an app has at most MaxUpstreamPerApp messages
// queued, whatever their senders; the next is refused and leaves no
// sighting, a repeat is still a duplicate, another app is not held back,
// receipts do not count, a delivery makes room, and the count outlives a
// restart.
func testUpstreamCapPerApp(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	app := f.reg.App
	other := f.secondSender(t)
	second := f.register(t, "com.example.second")

	var queued []store.Upstream
	for i := range store.MaxUpstreamPerApp {
		sender := f.sender.ID
		if i%4 == 3 {
			sender = other.ID // the cap is the app's, over its senders
		}
		out, u := f.putUp(t, app, sender, fmt.Sprint("u", i))
		if out != store.UpstreamQueued {
			t.Fatalf("message %d of %d: %v", i+1, store.MaxUpstreamPerApp, out)
		}
		queued = append(queued, u)
	}
	tests := []struct {
		name        string
		app, sender string
		id          string
		want        store.PutOutcome
	}{
		{"one more", app, f.sender.ID, "over", store.UpstreamTooManyMessages},
		{"one more to the other sender", app, other.ID, "over", store.UpstreamTooManyMessages},
		{"a repeat of a queued one", app, f.sender.ID, "u0", store.UpstreamDuplicate},
		{"another app", second.App, f.sender.ID, "over", store.UpstreamQueued},
	}
	for _, tc := range tests {
		if out, _ := f.putUp(t, tc.app, tc.sender, tc.id); out != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, out, tc.want)
		}
	}

	// A receipt is queued beside a full app and takes none of its room.
	m := f.msg("0:1%down", "", time.Hour)
	m.Receipt = true
	enqueue(t, s, m)
	if _, receipts := ack(t, s, f.device.ID, m.ID); len(receipts) != 1 {
		t.Fatalf("ack queued %d receipts, want 1", len(receipts))
	}

	// A delivery makes room for exactly one, and the message refused
	// before is no repeat.
	if err := s.DeleteUpstream(ctx(t), queued[0].Seq); err != nil {
		t.Fatal(err)
	}
	if out, _ := f.putUp(t, app, f.sender.ID, "over"); out != store.UpstreamQueued {
		t.Errorf("after a delivery, the refused message: %v", out)
	}
	if out, _ := f.putUp(t, app, f.sender.ID, "over-again"); out != store.UpstreamTooManyMessages {
		t.Errorf("after a delivery and one more: %v", out)
	}

	f.s = h.Reopen(t, s)
	if out, _ := f.putUp(t, app, other.ID, "after-restart"); out != store.UpstreamTooManyMessages {
		t.Errorf("after a restart: %v", out)
	}
	if err := f.s.DeleteUpstream(ctx(t), queued[3].Seq); err != nil {
		t.Fatal(err)
	}
	if out, _ := f.putUp(t, app, other.ID, "after-restart"); out != store.UpstreamQueued {
		t.Errorf("after a restart and a delivery: %v", out)
	}
}

// testUpstreamCapUnderConcurrency: of many messages of one app queued at
// once, exactly MaxUpstreamPerApp are stored.
func testUpstreamCapUnderConcurrency(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	const tries = 2 * store.MaxUpstreamPerApp
	outcomes := make([]store.PutOutcome, tries)
	var wg sync.WaitGroup
	errs := make([]error, tries)
	for i := range tries {
		wg.Go(func() {
			u := store.Upstream{Device: f.device.ID, App: f.reg.App, Sender: f.sender.ID, ID: fmt.Sprint("c", i),
				Received: T0, Expiry: T0.Add(time.Hour)}
			outcomes[i], errs[i] = s.PutUpstream(ctx(t), &u, T0.Add(time.Hour))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		t.Fatal(err)
	}
	counts := map[store.PutOutcome]int{}
	for _, out := range outcomes {
		counts[out]++
	}
	if counts[store.UpstreamQueued] != store.MaxUpstreamPerApp || counts[store.UpstreamTooManyMessages] != tries-store.MaxUpstreamPerApp {
		t.Errorf("outcomes %v, want %d queued and the rest refused", counts, store.MaxUpstreamPerApp)
	}
	n := 0
	if err := s.EachUpstream(ctx(t), func(store.Upstream) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	if n != store.MaxUpstreamPerApp {
		t.Errorf("%d queued, want %d", n, store.MaxUpstreamPerApp)
	}
}

// testUpstreamLanes: NextUpstream reads one device's messages and receipts
// for one sender, in Seq order, from a Seq on, up to a limit; deleted ones
// are gone from it, and it outlives a restart.
func testUpstreamLanes(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	other := f.secondSender(t)
	second := f.register(t, "com.example.second")
	stranger, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("other device"), Created: T0})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Register(ctx(t), stranger.ID, f.reg.App, f.sender.ID, "", T0); err != nil {
		t.Fatal(err)
	}

	for _, m := range []struct{ app, sender, id string }{
		{f.reg.App, f.sender.ID, "a1"}, {f.reg.App, other.ID, "b1"}, {second.App, f.sender.ID, "a2"},
		{f.reg.App, f.sender.ID, "a3"}, {f.reg.App, other.ID, "b2"},
	} {
		if out, _ := f.putUp(t, m.app, m.sender, m.id); out != store.UpstreamQueued {
			t.Fatalf("queue %s: %v", m.id, out)
		}
	}
	m := f.msg("0:1%down", "", time.Hour)
	m.Receipt = true
	enqueue(t, s, m)
	ack(t, s, f.device.ID, m.ID)
	u := store.Upstream{Device: stranger.ID, App: f.reg.App, Sender: f.sender.ID, ID: "x1", Received: T0, Expiry: T0.Add(time.Hour)}
	if _, err := s.PutUpstream(ctx(t), &u, T0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}

	lane := func(s store.Backend, sender string, after uint64, limit int) (ids []string, seqs []uint64) {
		t.Helper()
		us, err := s.NextUpstream(ctx(t), f.device.ID, sender, after, limit)
		if err != nil {
			t.Fatal(err)
		}
		for _, u := range us {
			if u.Device != f.device.ID || u.Sender != sender {
				t.Errorf("lane of %s has %+v", sender, u)
			}
			ids, seqs = append(ids, u.ID), append(seqs, u.Seq)
		}
		if !slices.IsSorted(seqs) {
			t.Errorf("lane of %s out of order: %v", sender, seqs)
		}
		return ids, seqs
	}
	all, seqs := lane(s, f.sender.ID, 0, 10)
	if want := []string{"a1", "a2", "a3", "dr2:" + m.ID}; !slices.Equal(all, want) {
		t.Fatalf("lane = %v, want %v", all, want)
	}
	tests := []struct {
		name   string
		sender string
		after  uint64
		limit  int
		want   []string
	}{
		{"from the start, limited", f.sender.ID, 0, 2, []string{"a1", "a2"}},
		{"after the second", f.sender.ID, seqs[1], 10, []string{"a3", "dr2:" + m.ID}},
		{"after the last", f.sender.ID, seqs[3], 10, nil},
		{"the other sender's lane", other.ID, 0, 10, []string{"b1", "b2"}},
		{"a sender with none", "999999999", 0, 10, nil},
	}
	for _, tc := range tests {
		if got, _ := lane(s, tc.sender, tc.after, tc.limit); !slices.Equal(got, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}

	if err := s.DeleteUpstream(ctx(t), seqs[1]); err != nil {
		t.Fatal(err)
	}
	s = h.Reopen(t, s)
	if got, _ := lane(s, f.sender.ID, 0, 10); !slices.Equal(got, []string{"a1", "a3", "dr2:" + m.ID}) {
		t.Errorf("after a delivery and a restart: %v", got)
	}
}
