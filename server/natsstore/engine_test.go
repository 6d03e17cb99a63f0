// SPDX-License-Identifier: Apache-2.0

package natsstore_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"tether/server/natsstore"
	"tether/server/store"
)

// The tests below show, on the same three-server cluster, which of
// JetStream's features carry GCM's rules and which do not; docs/scaling.md
// says what the store makes of each.

// engineStream creates a stream of its own for one test.
func engineStream(t *testing.T, cfg jetstream.StreamConfig) (jetstream.JetStream, jetstream.Stream, string) {
	t.Helper()
	js, err := jetstream.New(connect(t))
	if err != nil {
		t.Fatal(err)
	}
	name := fmt.Sprintf("ENGINE%d", prefixes.Add(1))
	cfg.Name, cfg.Subjects, cfg.Replicas = name, []string{name + ".>"}, 3
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	st, err := js.CreateStream(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return js, st, name
}

func publish(t *testing.T, js jetstream.JetStream, subject string, hdr nats.Header) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := js.PublishMsg(ctx, &nats.Msg{Subject: subject, Data: []byte("x"), Header: hdr})
	return err
}

func count(t *testing.T, st jetstream.Stream, subject string) uint64 {
	t.Helper()
	info, err := st.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}

// TestEnginePerMessageTTL: Nats-TTL deletes a message by itself. Used: the
// bodies of queued messages and the upstream dedupe entries expire so,
// with no sweep.
func TestEnginePerMessageTTL(t *testing.T) {
	js, st, name := engineStream(t, jetstream.StreamConfig{AllowMsgTTL: true})
	if err := publish(t, js, name+".a", nats.Header{"Nats-TTL": {"1s"}}); err != nil {
		t.Fatal(err)
	}
	if err := publish(t, js, name+".b", nil); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for count(t, st, name+".a") != 0 {
		if time.Now().After(deadline) {
			t.Fatal("a message with a TTL of 1 s is still there after 10 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if count(t, st, name+".b") != 1 {
		t.Error("a message without a TTL went too")
	}
}

// TestEnginePerSubjectLimitIsNotGCMsCap: past a per-subject limit the
// engine refuses the new message (DiscardNewPerSubject) or drops the
// oldest (the default). GCM keeps the new message and drops every earlier
// one, with one notice: not a limit of the engine, so the device's record
// counts it.
func TestEnginePerSubjectLimitIsNotGCMsCap(t *testing.T) {
	for _, tc := range []struct {
		name     string
		discard  jetstream.StreamConfig
		refused  bool
		keptLast uint64
	}{
		{"discard new", jetstream.StreamConfig{MaxMsgsPerSubject: 3, Discard: jetstream.DiscardNew, DiscardNewPerSubject: true}, true, 3},
		{"discard old", jetstream.StreamConfig{MaxMsgsPerSubject: 3}, false, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			js, st, name := engineStream(t, tc.discard)
			for range 3 {
				if err := publish(t, js, name+".app", nil); err != nil {
					t.Fatal(err)
				}
			}
			err := publish(t, js, name+".app", nil)
			if refused := err != nil; refused != tc.refused {
				t.Errorf("fourth message refused: %v (%v)", refused, err)
			}
			// GCM would keep exactly one: the fourth.
			if n := count(t, st, name+".app"); n != tc.keptLast || n == 1 {
				t.Errorf("%d kept", n)
			}
		})
	}
}

// TestEngineRollupIsPerSubject: Nats-Rollup: sub replaces the messages of
// one subject, as a collapse key does within one key; but GCM's fifth key
// of an app evicts the oldest key's message, which spans subjects, so the
// device's record keeps the keys.
func TestEngineRollupIsPerSubject(t *testing.T) {
	js, st, name := engineStream(t, jetstream.StreamConfig{AllowRollup: true})
	for _, key := range []string{"k1", "k2", "k3", "k4", "k2", "k5"} {
		if err := publish(t, js, name+".app."+key, nats.Header{"Nats-Rollup": {"sub"}}); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, st, name+".app.k2"); n != 1 {
		t.Errorf("k2 holds %d messages after a rollup, want 1", n)
	}
	if n := count(t, st, name+".app.>"); n != 5 {
		t.Errorf("%d messages under five keys, want 5: the engine evicts no key", n)
	}
}

// TestEngineDedupeWindowForgets: Nats-Msg-Id finds a repeat only within
// the stream's Duplicates window, kept in memory; an upstream message ID
// must be remembered as long as the message's time to live, up to four
// weeks, so the store keeps a record per ID with that TTL instead.
func TestEngineDedupeWindowForgets(t *testing.T) {
	js, st, name := engineStream(t, jetstream.StreamConfig{Duplicates: time.Second})
	id := nats.Header{"Nats-Msg-Id": {"up-1"}}
	for range 2 {
		if err := publish(t, js, name+".up", id); err != nil {
			t.Fatal(err)
		}
	}
	if n := count(t, st, name+".up"); n != 1 {
		t.Fatalf("%d stored within the window, want 1", n)
	}
	deadline := time.Now().Add(10 * time.Second)
	for count(t, st, name+".up") == 1 {
		if time.Now().After(deadline) {
			t.Fatal("the repeat is still refused 10 s after a window of 1 s")
		}
		time.Sleep(200 * time.Millisecond)
		if err := publish(t, js, name+".up", id); err != nil {
			t.Fatal(err)
		}
	}
}

// TestEngineConditionalBatch: a batch whose first message expects its
// subject's last sequence writes nothing when another write came first.
// Used: every change of a device is such a batch.
func TestEngineConditionalBatch(t *testing.T) {
	js, st, name := engineStream(t, jetstream.StreamConfig{AllowAtomicPublish: true, MaxMsgsPerSubject: 1})
	if err := publish(t, js, name+".q", nil); err != nil {
		t.Fatal(err)
	}
	last, err := st.GetLastMsgForSubject(context.Background(), name+".q")
	if err != nil {
		t.Fatal(err)
	}
	batch := func() error {
		_, err := jetstreamext.PublishMsgBatch(context.Background(), js, []*nats.Msg{
			{Subject: name + ".q", Data: []byte("record"), Header: nats.Header{"Nats-Expected-Last-Subject-Sequence": {strconv.FormatUint(last.Sequence, 10)}}},
			{Subject: name + ".m.1", Data: []byte("body")},
		})
		return err
	}
	if err := publish(t, js, name+".q", nil); err != nil { // another writer
		t.Fatal(err)
	}
	var apiErr *jetstream.APIError
	if err := batch(); !errors.As(err, &apiErr) {
		t.Fatalf("batch after another write: %v, want a wrong last sequence", err)
	}
	if n := count(t, st, name+".m.>"); n != 0 {
		t.Errorf("a failed batch wrote %d of its messages", n)
	}
}

// TestTwoProcessesOneDevice: two stores on connections to different
// servers of the cluster, as two tether-server processes, send to one
// device at once; every message is queued once, in one order.
func TestTwoProcessesOneDevice(t *testing.T) {
	a, cfg := open(t, 3)
	nc, err := nats.Connect(cluster.URLs()[2])
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	b, err := natsstore.Open(context.Background(), natsstore.Config{Conn: nc, Prefix: cfg.Prefix})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	snd, dev := senderAndDevice(t, a, now)
	reg, err := b.Register(ctx, dev.ID, "com.example.app", snd.ID, "", now)
	if err != nil {
		t.Fatal(err)
	}
	const each = 30
	errs := make(chan error, 2*each)
	var wg sync.WaitGroup
	for w, s := range []*natsstore.Store{a, b} {
		wg.Go(func() {
			for i := range each {
				m := store.Message{ID: fmt.Sprintf("p%d-%d", w, i), Device: dev.ID, Token: reg.Token, App: reg.App, Sender: snd.ID, Sent: now, Expiry: now.Add(time.Hour)}
				if q, err := s.Enqueue(ctx, []store.Message{m}, nil); err != nil || !q[0] {
					errs <- fmt.Errorf("enqueue %s: %v %v", m.ID, q, err)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	msgs, _, err := a.Pending(ctx, dev.ID, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for i, m := range msgs {
		if seen[m.ID] || i > 0 && m.Seq <= msgs[i-1].Seq {
			t.Errorf("message %s repeated or out of order", m.ID)
		}
		seen[m.ID] = true
	}
	if len(seen) != 2*each {
		t.Errorf("%d queued, want %d", len(seen), 2*each)
	}
}

// TestTokensNotInSubjects: subjects show in NATS's monitoring and tools;
// no registration token is in one, however it got there.
func TestTokensNotInSubjects(t *testing.T) {
	s, _ := open(t, 2)
	ctx := context.Background()
	now := time.Now()
	snd, dev := senderAndDevice(t, s, now)
	reg, err := s.Register(ctx, dev.ID, "com.example.app", snd.ID, "", now)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Subscribe(ctx, dev.ID, reg.App, snd.ID, "news", now); err != nil {
		t.Fatal(err)
	}
	rotated, err := s.RotateToken(ctx, reg.Token, time.Hour, now)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(connect(t))
	if err != nil {
		t.Fatal(err)
	}
	for shard := range s.Shards() {
		st, err := js.Stream(ctx, fmt.Sprintf("%s_%d", strings.ToUpper(s.Prefix()), shard))
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(">"))
		if err != nil {
			t.Fatal(err)
		}
		for subject := range info.State.Subjects {
			for _, token := range []string{reg.Token, rotated.Token} {
				if strings.Contains(subject, token) {
					t.Errorf("subject %s names a token", subject)
				}
			}
		}
	}
}

// TestLongQueueRead: a device may have more messages queued than the
// server answers to one read of several subjects (1024); its queue is read
// whole all the same.
func TestLongQueueRead(t *testing.T) {
	s, _ := open(t, 1)
	ctx := context.Background()
	now := time.Now()
	snd, dev := senderAndDevice(t, s, now)
	const apps = 11 // of store.MaxPendingPerApp messages each
	for a := range apps {
		reg, err := s.Register(ctx, dev.ID, fmt.Sprintf("com.example.app%d", a), snd.ID, "", now)
		if err != nil {
			t.Fatal(err)
		}
		msgs := make([]store.Message, store.MaxPendingPerApp)
		for i := range msgs {
			msgs[i] = store.Message{ID: fmt.Sprintf("m%d-%d", a, i), Device: dev.ID, Token: reg.Token, App: reg.App, Sender: snd.ID, Sent: now, Expiry: now.Add(time.Hour)}
		}
		if _, err := s.Enqueue(ctx, msgs, nil); err != nil {
			t.Fatal(err)
		}
	}
	msgs, last, err := s.Pending(ctx, dev.ID, 0, 0, nil)
	if want := apps * store.MaxPendingPerApp; err != nil || len(msgs) != want || last != msgs[len(msgs)-1].Seq {
		t.Fatalf("Pending = %d messages, last %d, %v; want %d, last the Seq of the last", len(msgs), last, err, want)
	}
}
