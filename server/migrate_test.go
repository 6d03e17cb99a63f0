// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"tether/internal/testwait"
	"tether/wire"
)

// TestMigrate: a single-node store moved into a cluster, twice as after a
// crash halfway, serves its devices with their credentials, tokens, queued
// messages, notices and upstream messages, and keeps deduplicating.
func TestMigrate(t *testing.T) {
	hook := newWebhook(t, -1) // refuses while the store is single-node
	dir := t.TempDir()
	single := startServerIn(t, dir, func(c *Config) { c.NATS = nil })
	snd := single.addSender(hook.URL)
	d := single.checkIn()
	token := d.register(app, snd.ID)
	d.subscribe(app, snd.ID, "news")
	other := d.register("com.example.other", snd.ID)
	sendUp(t, d, snd.ID, "up-1")
	testwait.Until(t, "a webhook attempt", 10*time.Second, func() bool { return hook.attemptCount() > 0 })
	d.conn.Close()
	var sent []string
	for i := range 3 {
		sent = append(sent, single.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"n": fmt.Sprint(i)}, "time_to_live": 3600}))
	}
	keyed := single.sendOne(snd.ServerKey, other, map[string]any{"collapse_key": "state"})
	a, err := OpenAdmin(context.Background(), AdminConfig{DataDir: single.dir})
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := a.RotateToken(context.Background(), other, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	enrollKey, err := a.CreateEnrollKey(context.Background(), 1, 0)
	a.Close()
	if err != nil {
		t.Fatal(err)
	}
	single.stop()

	nats := clusterConfig(t, fmt.Sprintf("m%d", clusterPrefixes.Add(1)))
	var counts []Migrated
	for range 2 {
		n, err := Migrate(context.Background(), MigrateConfig{DataDir: dir, NATS: *nats})
		if err != nil {
			t.Fatal(err)
		}
		counts = append(counts, n)
	}
	want := Migrated{Senders: 1, Devices: 1, Registrations: 3, Messages: 4, Upstream: 1, Seen: 1, EnrollKeys: 1}
	if counts[0] != want || counts[1] != want {
		t.Errorf("migrated %+v then %+v, want %+v both times", counts[0], counts[1], want)
	}

	hook.setFailures(0)
	node := startServer(t, func(c *Config) { c.NATS = nats })
	// The enrollment key made before the move enrolls a device, once.
	node.hello(wire.Hello{EnrollKey: enrollKey.Key}).conn.Close()
	if code, _ := node.refusedHello(wire.Hello{EnrollKey: enrollKey.Key}); code != wire.CodeUnauthorized {
		t.Errorf("the spent key enrolled again: %q", code)
	}
	if got := hook.next(t); got.MessageID != "up-1" || got.From != token {
		t.Errorf("webhook got %+v, want up-1 from the device's token", got)
	}
	d = node.reconnect(d)
	if r := d.expectRefresh(); r.Token != rotated.Token {
		t.Errorf("token refresh %+v, want the rotated token", r)
	}
	var got []string
	for range 4 {
		m := d.expectMessage()
		got = append(got, m.ID)
		d.ack(m.ID)
	}
	if want := append(slices.Clone(sent), keyed); !slices.Equal(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}
	// The repeat of an upstream message seen before the move is known.
	if ack := sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: "up-1", TTL: 600}); ack.Error != "" {
		t.Fatalf("repeat refused: %+v", ack)
	}
	if !strings.Contains(node.logs.String(), `msg="upstream message repeated"`) {
		t.Error("the repeat of up-1 was taken as a new message")
	}
	// Topics and tokens work as before: the old token of the rotation
	// still reaches the device, and is answered with the new one.
	resp := node.send(snd.ServerKey, map[string]any{"to": other})
	if resp.Success != 1 || resp.Results[0].RegistrationID != rotated.Token {
		t.Errorf("send to the rotated token: %+v", resp)
	}
	d.expectMessage()
	topic := node.post("/gcm/send", snd.ServerKey, "application/json", `{"to": "/topics/news", "data": {"k": "v"}}`)
	if topic.status != 200 {
		t.Fatalf("topic send: %d %s", topic.status, topic.body)
	}
	if m := d.expectMessage(); m.Data["k"] != "v" || m.Topic != "news" {
		t.Errorf("topic copy %+v", m)
	}
	// A subscription keeps the day it was made.
	if subs, err := node.store.Subscriptions(context.Background(), token); err != nil || len(subs) != 1 || subs[0].Topic != "news" || subs[0].Added.IsZero() {
		t.Errorf("subscriptions after the move: %+v, %v; want news with its date", subs, err)
	}
}
