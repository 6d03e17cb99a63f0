package store

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// idGen makes unique message IDs for fan-out.
func idGen() func() string {
	var mu sync.Mutex
	n := 0
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		n++
		return fmt.Sprintf("0:%d%%copy", n)
	}
}

func TestFanOutStepsAndResume(t *testing.T) {
	s, path := openTemp(t)
	f := newFixture(t, s)
	// Registrations on a, on b, on both, and one of another sender on a.
	tokens := map[string]string{}
	for _, app := range []string{"on-a", "on-b", "on-both", "on-a-2"} {
		reg, err := s.Register(f.device.ID, app, f.sender.ID, t0)
		if err != nil {
			t.Fatal(err)
		}
		tokens[app] = reg.Token
	}
	other, _ := s.AddSender("other", "", hash("other"), t0)
	otherReg, _ := s.Register(f.device.ID, "other", other.ID, t0)
	sub := func(sender, topic string, toks ...string) {
		t.Helper()
		out, err := s.ChangeSubscriptions(sender, topic, toks, true, t0)
		if err != nil || slices.ContainsFunc(out, func(o SubscriptionOutcome) bool { return o != SubscriptionDone }) {
			t.Fatalf("subscribe: %v, %v", out, err)
		}
	}
	sub(f.sender.ID, "a", tokens["on-a"], tokens["on-both"], tokens["on-a-2"])
	sub(f.sender.ID, "b", tokens["on-b"], tokens["on-both"])
	sub(other.ID, "a", otherReg.Token)

	// "'a' in topics || 'b' in topics", one subscriber per step, reopening
	// the store between steps as a crash would.
	tm := TopicMessage{ID: "7", Sender: f.sender.ID, Condition: "a or b", Topics: []string{"a", "b"},
		Data: map[string]string{"k": "v"}, Sent: t0, Expiry: t0.Add(time.Hour)}
	if err := s.PutTopicMessage(&tm); err != nil {
		t.Fatal(err)
	}
	or := func(subscribed func(string) bool) bool { return subscribed("a") || subscribed("b") }
	newID := idGen()
	copies, steps := 0, 0
	for {
		res, err := s.FanOut(tm.Seq, FanOutStep{Limit: 1, Now: t0, NewID: newID, Match: or})
		if err != nil {
			t.Fatal(err)
		}
		copies += res.Copies
		steps++
		if res.Done {
			break
		}
		s.Close()
		if s, err = Open(path, Options{}); err != nil {
			t.Fatal(err)
		}
		if steps > 10 {
			t.Fatal("fan-out does not end")
		}
	}
	defer s.Close()
	queued, err := s.Pending(f.device.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var apps []string
	for _, m := range queued {
		apps = append(apps, m.App)
	}
	slices.Sort(apps)
	if want := []string{"on-a", "on-a-2", "on-b", "on-both"}; copies != 4 || !slices.Equal(apps, want) {
		t.Errorf("%d copies for %v, want one each for %v", copies, apps, want)
	}
	if left, _ := s.TopicMessages(0, 10); len(left) != 0 {
		t.Errorf("%d topic messages left", len(left))
	}

	// An expired topic message is dropped without copies.
	late := TopicMessage{ID: "8", Sender: f.sender.ID, Topic: "a", Topics: []string{"a"}, Sent: t0, Expiry: t0.Add(time.Minute)}
	s.PutTopicMessage(&late)
	res, err := s.FanOut(late.Seq, FanOutStep{Limit: 100, Now: t0.Add(time.Minute), NewID: newID})
	if err != nil || !res.Done || res.Copies != 0 {
		t.Errorf("expired fan-out: %+v, %v", res, err)
	}
}

func TestSubscriptionLimit(t *testing.T) {
	s, _ := openTemp(t)
	f := newFixture(t, s)
	err := s.db.Update(func(tx *bolt.Tx) error {
		for i := range MaxTopicsPerRegistration {
			if err := subscribe(tx, f.reg, fmt.Sprint("t", i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Subscribe(f.device.ID, f.reg.App, f.sender.ID, "one-more"); !errors.Is(err, ErrTooManyTopics) {
		t.Errorf("subscription %d: %v", MaxTopicsPerRegistration+1, err)
	}
	if err := s.Subscribe(f.device.ID, f.reg.App, f.sender.ID, "t5"); err != nil {
		t.Errorf("subscribing again to a topic it has: %v", err)
	}
	if err := s.Subscribe(f.device.ID, "unregistered", f.sender.ID, "t"); !errors.Is(err, ErrNotFound) {
		t.Errorf("subscription without a registration: %v", err)
	}
}

func TestRotateTokenChain(t *testing.T) {
	s, _ := openTemp(t)
	f := newFixture(t, s)
	second, err := s.RotateToken(f.reg.Token, time.Hour, t0)
	if err != nil {
		t.Fatal(err)
	}
	third, err := s.RotateToken(second.Token, 2*time.Hour, t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.ResolveTokens([]string{f.reg.Token, second.Token, third.Token}, t0.Add(30*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Reg.Token != third.Token || r.Canonical() != (i < 2) {
			t.Errorf("token %d resolves to %.8s canonical %v", i, r.Reg.Token, r.Canonical())
		}
	}
	// The first grace period ends before the second.
	res, _ = s.ResolveTokens([]string{f.reg.Token, second.Token}, t0.Add(90*time.Minute))
	if res[0].Reg.Token != "" || res[1].Reg.Token != third.Token {
		t.Errorf("after the first grace: %.8s %.8s", res[0].Reg.Token, res[1].Reg.Token)
	}
	// Only the last notice is pending: it carries the newest token.
	notices, err := s.Notices(f.device.ID)
	if err != nil || len(notices) != 1 || notices[0].Token != third.Token || notices[0].Kind != NoticeTokenRefresh {
		t.Errorf("notices %+v, %v", notices, err)
	}
	if _, err := s.RotateToken(f.reg.Token, time.Hour, t0); !errors.Is(err, ErrNotFound) {
		t.Errorf("rotating a replaced token: %v", err)
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
	if n, err := s.Notices(f.device.ID); err != nil || len(n) != 1 || n[0].Count != MaxPendingPerApp {
		t.Errorf("notices %+v, %v", n, err)
	}
}
