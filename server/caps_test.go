// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"tether/internal/testwait"
	"tether/server/store"
	"tether/wire"
)

func TestCollapseKeysPerAppCapped(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	other := d.register("com.example.other", snd.ID)
	d.conn.Close()

	var ids []string
	for i, key := range []string{"k1", "k2", "k3", "k4", "k2", "k5"} {
		ids = append(ids, ts.sendOne(snd.ServerKey, token, map[string]any{"collapse_key": key, "data": map[string]string{"n": fmt.Sprint(i)}}))
	}
	// Another app's keys are its own.
	otherID := ts.sendOne(snd.ServerKey, other, map[string]any{"collapse_key": "k1"})

	d = ts.reconnect(d)
	// k2's newer message replaced the older (no loss); k5, a fifth key,
	// evicted the oldest, k1.
	notice := d.expectDeleted()
	if notice.App != app || notice.Count != 1 {
		t.Errorf("notice %+v, want 1 deleted for %s", notice, app)
	}
	var got []string
	for range 5 {
		got = append(got, d.expectMessage().ID)
	}
	if want := []string{ids[2], ids[3], ids[4], ids[5], otherID}; !slices.Equal(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}
	marker(t, ts, d, snd.ServerKey, token)
}

func TestNonCollapsiblePerAppCapped(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	other := d.register("com.example.other", snd.ID)
	d.conn.Close()

	// 100 are kept; one more drops them all, and is kept itself.
	tokens := make([]string, store.MaxPendingPerApp)
	for i := range tokens {
		tokens[i] = token
	}
	resp := ts.send(snd.ServerKey, map[string]any{"registration_ids": tokens})
	if resp.Success != store.MaxPendingPerApp {
		t.Fatalf("first 100: %+v", resp)
	}
	waitPending(t, ts, d.id, store.MaxPendingPerApp)
	collapsing := ts.sendOne(snd.ServerKey, token, map[string]any{"collapse_key": "state"})
	otherID := ts.sendOne(snd.ServerKey, other, nil)
	last := ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"n": "101"}})

	d = ts.reconnect(d)
	notice := d.expectDeleted()
	if notice.App != app || notice.Count != store.MaxPendingPerApp {
		t.Fatalf("notice %+v, want %d deleted for %s", notice, store.MaxPendingPerApp, app)
	}
	var got []string
	for range 3 {
		got = append(got, d.expectMessage().ID)
	}
	if want := []string{collapsing, otherID, last}; !slices.Equal(got, want) {
		t.Errorf("delivered %v, want the collapsible one, the other app's and the last: %v", got, want)
	}
	marker(t, ts, d, snd.ServerKey, token)

	// Not acked: the same notice comes again, with the same ID and count.
	d.conn.Close()
	d = ts.reconnect(d)
	if again := d.expectDeleted(); again != notice {
		t.Errorf("notice resent as %+v, want %+v", again, notice)
	}
	// More losses before the ack wait for a notice of their own.
	d.conn.Close()
	for range store.MaxPendingPerApp {
		ts.sendOne(snd.ServerKey, token, nil)
	}
	d = ts.reconnect(d)
	if again := d.expectDeleted(); again != notice {
		t.Errorf("notice changed before its ack: %+v, want %+v", again, notice)
	}
	// The queue: the collapsible one, the other app's and the 100th new one,
	// which dropped the last of the first round and 99 new ones.
	var queue []string
	for range 3 {
		queue = append(queue, d.expectMessage().ID)
	}
	if queue[0] != collapsing || queue[1] != otherID {
		t.Errorf("queue %v", queue)
	}
	d.ack(notice.ID)
	next := d.expectDeleted()
	if next.ID == notice.ID || next.Count != store.MaxPendingPerApp || next.App != app {
		t.Errorf("second notice %+v, want a new ID and %d deleted", next, store.MaxPendingPerApp)
	}
	d.ack(next.ID)
	d.ack(queue...)
	waitPending(t, ts, d.id, 0)
	if n, err := ts.store.Notices(context.Background(), d.id); err != nil || len(n) != 0 {
		t.Errorf("notices after their acks: %v, %v", n, err)
	}
	d.conn.Close()
	d = ts.reconnect(d)
	marker(t, ts, d, snd.ServerKey, token)
}

// GCM's cap counts what waits for a device: a connected device with 150
// messages in flight and 99 more waiting behind its window loses none;
// one more waiting drops the waiting ones, never those in flight.
func TestCapCountsWhatWaits(t *testing.T) {
	const window = 150
	ts := startServer(t, func(c *Config) { c.Window = window })
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	send := func(n int) []string {
		tokens := slices.Repeat([]string{token}, n)
		resp := ts.send(snd.ServerKey, map[string]any{"registration_ids": tokens})
		if resp.Success != n {
			t.Fatalf("%d sends: %+v", n, resp)
		}
		var ids []string
		for _, r := range resp.Results {
			ids = append(ids, r.MessageID)
		}
		return ids
	}
	// Sent as they come: a multicast of more than 100 would wait whole
	// for its one commit, and lose its first 100 to the cap.
	var flowing []string
	for range window / 50 {
		ids := send(50)
		d.expectMessages(ids...)
		flowing = append(flowing, ids...)
	}
	waiting := send(store.MaxPendingPerApp - 1)
	marker(t, ts, d, snd.ServerKey, token)
	d.ack(flowing[:10]...)
	d.expectMessages(waiting[:10]...)

	// 140 in flight, 89 waiting: 11 more make 100 waiting, and the
	// one after them drops those 100.
	more := send(store.MaxPendingPerApp - len(waiting) + 10 + 1)
	last := more[len(more)-1]
	d.ack(flowing[10:]...)
	if n := d.expectDeleted(); n.Count != store.MaxPendingPerApp {
		t.Fatalf("deleted_messages %+v, want %d", n, store.MaxPendingPerApp)
	}
	d.expectMessages(last)
	marker(t, ts, d, snd.ServerKey, token)
}

func TestDeviceRateLimit(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.DeviceRateLimit = 3 })
	f := &sendFixture{ts: ts, a: ts.addSender("")}
	f.dev = ts.checkIn()
	tok1 := f.dev.register("com.example.one", f.a.ID)
	tok2 := f.dev.register("com.example.two", f.a.ID)
	other := ts.checkIn()
	tok3 := other.register("com.example.three", f.a.ID)

	send := func(req map[string]any) []string {
		t.Helper()
		resp := ts.send(f.a.ServerKey, req)
		var errs []string
		for _, r := range resp.Results {
			errs = append(errs, r.Error)
		}
		return errs
	}
	// Two tokens of one device count twice.
	if got := send(map[string]any{"registration_ids": []string{tok1, tok2}}); !slices.Equal(got, []string{"", ""}) {
		t.Fatalf("first two: %v", got)
	}
	if got := send(map[string]any{"to": tok1, "dry_run": true}); got[0] != "" {
		t.Errorf("dry run: %v", got)
	}
	if got := send(map[string]any{"registration_ids": []string{tok2, tok1, tok3}}); !slices.Equal(got, []string{"", errDeviceRate, ""}) {
		t.Errorf("over the rate: %v, want the third of the device refused and the other device served", got)
	}
	ans := ts.post("/gcm/send", f.a.ServerKey, "application/x-www-form-urlencoded", "registration_id="+tok1)
	if ans.body != "Error="+errDeviceRate+"\n" {
		t.Errorf("plain text over the rate: %q", ans.body)
	}
	ts.clock.Advance(20 * time.Second)
	if got := send(map[string]any{"to": tok1}); got[0] != "" {
		t.Errorf("after 20 s: %v", got)
	}
	if got := send(map[string]any{"to": tok1}); got[0] != errDeviceRate {
		t.Errorf("a second one after 20 s: %v", got)
	}
}

func TestCorruptRecordAnswersInternalServerError(t *testing.T) {
	dir := t.TempDir()
	ts := startServerIn(t, dir, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	ts.stop()

	db, err := bolt.Open(filepath.Join(dir, storeFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket([]byte("regs")).Put([]byte(token), []byte("{not json")) })
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	ts = startServerIn(t, dir, nil)
	ans := ts.post("/gcm/send", snd.ServerKey, "application/json", `{"registration_ids": ["`+token+`"]}`)
	if ans.status != http.StatusInternalServerError || ans.header.Get("Retry-After") == "" || !strings.Contains(ans.body, errInternal) {
		t.Errorf("send to a corrupt registration: %d Retry-After %q %s", ans.status, ans.header.Get("Retry-After"), ans.body)
	}
	ans = ts.post("/gcm/send", snd.ServerKey, "application/json", `{"to": "/topics/fine"}`)
	if ans.status != http.StatusOK {
		t.Errorf("the rest of the server: %d %s", ans.status, ans.body)
	}
}

func TestOldAgentDropsNotices(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.conn.Close()
	for range store.MaxPendingPerApp + 1 {
		ts.sendOne(snd.ServerKey, token, map[string]any{"time_to_live": 3600})
	}
	d = ts.reconnect(d)
	n := d.expectDeleted()
	// What an agent that does not know the frame answers.
	d.send(n.ID, wire.Error{Code: wire.CodeUnknownType, Message: `unknown frame type "deleted_messages"`})
	m := d.expectMessage()
	d.ack(m.ID)
	testwait.Until(t, "the notice dropped", 10*time.Second, func() bool {
		left, err := ts.store.Notices(context.Background(), d.id)
		return err == nil && len(left) == 0
	})
}

// TestFullStoreTakesMessagesAgainOnceDrained: a full store answers 503
// Unavailable with Retry-After, still takes the device's acks, and takes
// messages again once they have freed space, so a sender's retry succeeds.
func TestFullStoreTakesMessagesAgainOnceDrained(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxStoreSize = 256 << 10 })
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.conn.Close()
	big := `{"to": "` + token + `", "data": {"v": "` + strings.Repeat("x", 4000) + `"}}`
	accepted := 0
	for {
		ans := ts.post("/gcm/send", snd.ServerKey, "application/json", big)
		if ans.status == http.StatusServiceUnavailable {
			if ans.header.Get("Retry-After") == "" || !strings.Contains(ans.body, errUnavailable) {
				t.Fatalf("full store: Retry-After %q, %s", ans.header.Get("Retry-After"), ans.body)
			}
			break
		}
		if accepted++; accepted == store.MaxPendingPerApp {
			t.Fatal("the store took 100 messages of 4 KB: it was not full")
		}
	}
	d = ts.reconnect(d)
	for range accepted {
		d.ack(d.expectMessage().ID)
	}
	waitPending(t, ts, d.id, 0)
	ans := ts.post("/gcm/send", snd.ServerKey, "application/json", big)
	checkResponse(t, ans, []string{""})
}

// TestCorruptTopicMessageDoesNotHoldUpFanOut: a damaged topic message, or
// a damaged subscriber, is dropped and the next topic message goes out.
func TestCorruptTopicMessageDoesNotHoldUpFanOut(t *testing.T) {
	dir := t.TempDir()
	ts := startServerIn(t, dir, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	damaged := d.register("com.example.damaged", snd.ID)
	d.subscribe(app, snd.ID, "news")
	d.subscribe("com.example.damaged", snd.ID, "news")
	d.conn.Close()
	ts.stop()

	st, err := store.Open(filepath.Join(dir, storeFile), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	for _, id := range []string{"1", "2"} {
		tm := store.TopicMessage{ID: id, Sender: snd.ID, Topic: "news", Topics: []string{"news"}, Sent: now, Expiry: now.Add(time.Hour)}
		if err := st.PutTopicMessage(context.Background(), &tm); err != nil {
			t.Fatal(err)
		}
	}
	st.Close()
	db, err := bolt.Open(filepath.Join(dir, storeFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		if err := tx.Bucket([]byte("topic_msgs")).Put([]byte{0, 0, 0, 0, 0, 0, 0, 1}, []byte("{damaged")); err != nil {
			return err
		}
		return tx.Bucket([]byte("regs")).Put([]byte(damaged), []byte("{damaged"))
	})
	db.Close()
	if err != nil {
		t.Fatal(err)
	}

	var fanned fanOutWaiter
	ts = startServerIn(t, dir, func(c *Config) { fanned = watchFanOut(c) })
	if copies := fanned.wait(t, "2"); copies != 1 {
		t.Errorf("%d copies, want 1: the damaged subscriber skipped", copies)
	}
	if left, _ := ts.store.TopicMessages(context.Background(), 0, 10); len(left) != 0 {
		t.Errorf("%d topic messages left", len(left))
	}
	d = ts.reconnect(d)
	if m := d.expectMessage(); m.Token != token || m.Topic != "news" {
		t.Errorf("delivered %+v", m)
	}
}
