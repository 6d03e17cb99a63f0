// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"tether/internal/testwait"
	"tether/wire"
)

func TestTokenRotation(t *testing.T) {
	var fanned fanOutWaiter
	ts := startServer(t, func(c *Config) { fanned = watchFanOut(c) })
	snd := ts.addSender("")
	d := ts.checkIn()
	old := d.register(app, snd.ID)
	d.subscribe(app, snd.ID, "news")
	d.conn.Close()
	queued := ts.sendOne(snd.ServerKey, old, map[string]any{"collapse_key": "state", "data": map[string]string{"v": "1"}})

	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if !admin.ViaSocket() {
		t.Fatal("admin did not use the running server's socket")
	}
	rotated, err := admin.RotateToken(context.Background(), old, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	fresh := rotated.Token
	if fresh == old || len(fresh) < 64 || rotated.GraceUntil.Sub(ts.now()) > time.Hour || rotated.GraceUntil.Sub(ts.now()) < 59*time.Minute {
		t.Fatalf("rotated to %+v", rotated)
	}
	if _, err := admin.RotateToken(context.Background(), old, time.Hour); !errors.Is(err, ErrNoToken) {
		t.Errorf("rotating the old token again: %v, want ErrNoToken", err)
	}
	if _, err := admin.RotateToken(context.Background(), "unknown", time.Hour); !errors.Is(err, ErrNoToken) {
		t.Errorf("rotating an unknown token: %v, want ErrNoToken", err)
	}

	// The device learns the new token first; the stored message now
	// carries it.
	d = ts.reconnect(d)
	refresh := d.expectRefresh()
	if refresh.App != app || refresh.Sender != snd.ID || refresh.Token != fresh {
		t.Fatalf("token_refresh %+v", refresh)
	}
	if m := d.expectMessage(); m.ID != queued || m.Token != fresh {
		t.Errorf("stored message delivered as %+v", m)
	}
	// Registering again gives the new token.
	if got := d.register(app, snd.ID); got != fresh {
		t.Errorf("register after rotation gave another token")
	}

	// The old token works during the grace period, and the answer names
	// the new one; the collapse key carried over.
	ans := ts.post("/gcm/send", snd.ServerKey, "application/json",
		`{"registration_ids": ["`+old+`", "nope"], "collapse_key": "state", "data": {"v": "2"}}`)
	checkResponse(t, ans, []string{canonical(fresh), errInvalidRegistration})
	if left, _, _ := ts.store.Pending(context.Background(), d.id, 0, 0, nil); len(left) != 1 || left[0].ID == queued || left[0].Data["v"] != "2" {
		t.Errorf("queue after a send under the same collapse key: %+v", left)
	}
	plain := ts.post("/gcm/send", snd.ServerKey, "application/x-www-form-urlencoded", "registration_id="+old)
	if !strings.HasPrefix(plain.body, "id=0:") || !strings.HasSuffix(plain.body, "\nregistration_id="+fresh+"\n") {
		t.Errorf("plain-text answer %q, want id= and registration_id= lines", plain.body)
	}
	for range 2 {
		if m := d.expectMessage(); m.Token != fresh {
			t.Errorf("message to the old token delivered with another token")
		}
	}
	// The subscriptions moved to the new token.
	a, _ := ts.sendTopic(snd.ServerKey, map[string]any{"to": "/topics/news"})
	if fanned.wait(t, a.MessageID.String()); d.expectMessage().Token != fresh {
		t.Error("topic copy not sent to the new token")
	}

	// Until it is acked, the refresh comes again in every session.
	d.conn.Close()
	d = ts.reconnect(d)
	if again := d.expectRefresh(); again != refresh {
		t.Errorf("refresh resent as %+v, want %+v", again, refresh)
	}
	d.ack(refresh.ID)
	testwait.Until(t, "refresh acked", 10*time.Second, func() bool {
		n, err := ts.store.Notices(context.Background(), d.id)
		return err == nil && len(n) == 0
	})

	// After the grace period the old token is not registered.
	ts.clock.Advance(time.Hour)
	ans = ts.post("/gcm/send", snd.ServerKey, "application/json", `{"registration_ids": ["`+old+`", "`+fresh+`"], "time_to_live": 0}`)
	checkResponse(t, ans, []string{errNotRegistered, ""})

	// Unregistering ends both.
	d.conn.Close()
	d = ts.reconnect(d)
	d.send("u", wire.Unregister{App: app, Sender: snd.ID})
	for {
		f, err := d.read()
		if err != nil {
			t.Fatal(err)
		}
		if f.Type == wire.TypeUnregistered {
			break
		}
	}
	ans = ts.post("/gcm/send", snd.ServerKey, "application/json", `{"registration_ids": ["`+old+`", "`+fresh+`"]}`)
	checkResponse(t, ans, []string{errNotRegistered, errNotRegistered})
}

func TestTokenRotationWithoutServer(t *testing.T) {
	dir := t.TempDir()
	ts := startServerIn(t, dir, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	old := d.register(app, snd.ID)
	d.conn.Close()
	ts.stop()

	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if admin.ViaSocket() {
		t.Fatal("admin found a socket with no server running")
	}
	if _, err := admin.RotateToken(context.Background(), old, -time.Second); err == nil {
		t.Error("a negative grace period was accepted")
	}
	rotated, err := admin.RotateToken(context.Background(), old, 0)
	admin.Close()
	if err != nil {
		t.Fatal(err)
	}
	ts = startServerIn(t, dir, nil)
	d = ts.reconnect(d)
	if r := d.expectRefresh(); r.Token != rotated.Token {
		t.Errorf("refresh %+v, want token %.8s...", r, rotated.Token)
	}
	// No grace: the old token stopped at once.
	ans := ts.post("/gcm/send", snd.ServerKey, "application/json", `{"to": "`+old+`"}`)
	if ans.status != http.StatusOK || !strings.Contains(ans.body, errNotRegistered) {
		t.Errorf("old token without grace: %d %s", ans.status, ans.body)
	}
}
