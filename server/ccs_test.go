// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"tether/internal/testpki"
	"tether/internal/testwait"
	"tether/server/xmpp/xmpptest"
	"tether/wire"
)

// startCCS starts a server with its XMPP endpoint, in plain XMPP unless mod
// sets TLS.
func startCCS(t *testing.T, mod func(*Config)) *testServer {
	t.Helper()
	return startServer(t, withCCS(mod))
}

// startCCSInBubble is startCCS over pipes, for a test inside
// synctest.Test (startServerInBubble).
func startCCSInBubble(t *testing.T, mod func(*Config)) *testServer {
	t.Helper()
	return startServerInBubble(t, withCCS(mod))
}

// withCCS adds a plain XMPP endpoint to the Config that mod makes.
func withCCS(mod func(*Config)) func(*Config) {
	return func(c *Config) {
		c.XMPPListen, c.XMPPPlaintext = "127.0.0.1:0", true
		c.XMPPAckTimeout = 5 * time.Second
		c.XMPPDrainTimeout = 5 * time.Second
		if mod != nil {
			mod(c)
		}
	}
}

// xmppConfig is how an app server logs in to ts's XMPP endpoint.
func (ts *testServer) xmppConfig(user, password string) xmpptest.Config {
	return xmpptest.Config{Addr: ts.XMPPAddr().String(), User: user, Password: password, DialContext: ts.xmppDialContext}
}

func (ts *testServer) dialCCS(snd NewSender) *xmpptest.Client {
	ts.t.Helper()
	c, err := xmpptest.Dial(context.Background(), ts.xmppConfig(snd.ID, snd.ServerKey))
	if err != nil {
		ts.t.Fatalf("xmpp login as %s: %v", snd.ID, err)
	}
	ts.t.Cleanup(func() { c.Abort() })
	return c
}

// ccsStanza is what the endpoint sends an app server.
type ccsStanza struct {
	MessageType      string            `json:"message_type"`
	From             string            `json:"from"`
	MessageID        string            `json:"message_id"`
	Error            string            `json:"error"`
	ErrorDescription string            `json:"error_description"`
	RegistrationID   string            `json:"registration_id"`
	ControlType      string            `json:"control_type"`
	Category         string            `json:"category"`
	Data             map[string]string `json:"data"`
}

func nextStanza(t *testing.T, c *xmpptest.Client) ccsStanza {
	t.Helper()
	select {
	case b, ok := <-c.Stanzas():
		if !ok {
			t.Fatalf("the connection ended: %v", c.Err())
		}
		var s ccsStanza
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatalf("stanza %s: %v", b, err)
		}
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("no stanza within 10 s")
	}
	return ccsStanza{}
}

func sendStanza(t *testing.T, c *xmpptest.Client, v any) {
	t.Helper()
	b, ok := v.([]byte)
	if !ok {
		var err error
		if b, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Send(b); err != nil {
		t.Fatal(err)
	}
}

func TestCCSAuthentication(t *testing.T) {
	pki, err := testpki.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, func(c *Config) {
		c.XMPPListen, c.XMPPDomain = "127.0.0.1:0", "push.example.com"
		c.TLSCert, c.TLSKey = pki.Cert, pki.Key
	})
	a, b := ts.addSender(""), ts.addSender("")
	for _, tt := range []struct {
		name              string
		user, key, domain string
		ok                bool
	}{
		{"gcm domain", a.ID, a.ServerKey, "gcm.googleapis.com", true},
		{"fcm domain", a.ID, a.ServerKey, "fcm.googleapis.com", true},
		{"own domain", a.ID, a.ServerKey, "push.example.com", true},
		{"wrong key", a.ID, "not-the-key", "gcm.googleapis.com", false},
		{"another sender's key", a.ID, b.ServerKey, "gcm.googleapis.com", false},
		{"unknown sender", "404404404404", a.ServerKey, "gcm.googleapis.com", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := xmpptest.Dial(context.Background(), xmpptest.Config{
				Addr: ts.XMPPAddr().String(), TLS: &tls.Config{RootCAs: pki.Pool, ServerName: "127.0.0.1"},
				Domain: tt.domain, User: tt.user, Password: tt.key,
			})
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				c.Close()
				return
			}
			if !errors.Is(err, xmpptest.ErrAuth) || !strings.Contains(err.Error(), "not-authorized") {
				t.Fatalf("login: %v, want not-authorized", err)
			}
		})
	}
	for _, key := range []string{a.ServerKey, b.ServerKey, "not-the-key"} {
		if strings.Contains(ts.logs.String(), key) {
			t.Errorf("a key is in the log: %.6s...", key)
		}
	}
}

func TestCCSConnectionLimit(t *testing.T) {
	ts := startCCS(t, func(c *Config) { c.xmppMaxConns = 2 })
	snd := ts.addSender("")
	ts.dialCCS(snd)
	ts.dialCCS(snd)
	c, err := xmpptest.Dial(context.Background(), xmpptest.Config{Addr: ts.XMPPAddr().String(), User: snd.ID, Password: snd.ServerKey})
	if err == nil {
		select {
		case <-c.Done():
			err = c.Err()
		case <-time.After(10 * time.Second):
		}
	}
	if err == nil || !strings.Contains(err.Error(), "resource-constraint") {
		t.Fatalf("a third connection: %v, want a resource-constraint stream error", err)
	}
}

// TestCCSDownstream sends every kind of downstream stanza and checks its
// ack or nack, and that what was acked reaches the device.
func TestCCSDownstream(t *testing.T) {
	ts := startCCS(t, nil)
	snd, other := ts.addSender(""), ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	otherToken := d.register("org.example.other", other.ID)
	gone := d.register("org.example.gone", snd.ID)
	d.send("u", wire.Unregister{App: "org.example.gone", Sender: snd.ID})
	d.expect(wire.TypeUnregistered, "u", &wire.Unregistered{})
	c := ts.dialCCS(snd)

	big := strings.Repeat("x", wire.MaxDataSize)
	for _, tt := range []struct {
		name    string
		stanza  string
		id      string
		code    string // "" for an ack
		explain string // in error_description
	}{
		{"to a token", `{"to": "` + token + `", "message_id": "m-1", "data": {"a": "1"}}`, "m-1", "", ""},
		{"to a topic", `{"to": "/topics/weather", "message_id": "m-2", "data": {"a": "1"}}`, "m-2", "", ""},
		{"not a token", `{"to": "nope", "message_id": "m-3"}`, "m-3", nackBadRegistration, "InvalidRegistration"},
		{"another sender's token", `{"to": "` + otherToken + `", "message_id": "m-4"}`, "m-4", nackBadRegistration, "MismatchSenderId"},
		{"unregistered", `{"to": "` + gone + `", "message_id": "m-5"}`, "m-5", nackDeviceUnregistered, "NotRegistered"},
		{"no message_id", `{"to": "` + token + `"}`, "", nackInvalidJSON, "message_id"},
		{"registration_ids", `{"registration_ids": ["` + token + `"], "message_id": "m-6"}`, "m-6", nackInvalidJSON, "registration_ids"},
		{"not JSON", `{"to": `, "", nackInvalidJSON, ""},
		{"wrong type", `{"to": "` + token + `", "message_id": "m-7", "time_to_live": "soon"}`, "m-7", nackInvalidJSON, "time_to_live"},
		{"too big", `{"to": "` + token + `", "message_id": "m-8", "data": {"b": "` + big + `"}}`, "m-8", nackInvalidJSON, "MessageTooBig"},
		{"reserved key", `{"to": "` + token + `", "message_id": "m-9", "data": {"google.x": "1"}}`, "m-9", nackInvalidJSON, "InvalidDataKey"},
		{"control from an app server", `{"message_type": "control", "message_id": "m-10"}`, "m-10", nackInvalidJSON, "message_type"},
		{"ack without an ID", `{"message_type": "ack", "to": "x"}`, "", nackBadAck, "message_id"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			sendStanza(t, c, []byte(tt.stanza))
			got := nextStanza(t, c)
			wantType := "ack"
			if tt.code != "" {
				wantType = "nack"
			}
			if got.MessageType != wantType || got.MessageID != tt.id || got.Error != tt.code || !strings.Contains(got.ErrorDescription, tt.explain) {
				t.Errorf("answer %+v, want %s %q for %q (%s)", got, wantType, tt.code, tt.id, tt.explain)
			}
		})
	}
	if m := d.expectMessage(); m.Data["a"] != "1" {
		t.Errorf("device got %+v", m)
	}
}

// TestCCSFlowControl: a burst of messages is stored in batches of at
// most the window and every message is answered.
func TestCCSFlowControl(t *testing.T) {
	var mu sync.Mutex
	var batches []int
	ts := startCCS(t, func(c *Config) {
		c.ccsBatch = func(n int) {
			mu.Lock()
			batches = append(batches, n)
			mu.Unlock()
		}
	})
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	c := ts.dialCCS(snd)
	const n = 350
	go func() {
		for i := range n {
			c.Send(fmt.Appendf(nil, `{"to": %q, "message_id": "m-%d", "collapse_key": "k%d", "data": {"i": "%d"}}`, token, i, i%4, i))
		}
	}()
	acked := map[string]bool{}
	for range n {
		s := nextStanza(t, c)
		if s.MessageType != "ack" || acked[s.MessageID] {
			t.Fatalf("answer %+v", s)
		}
		acked[s.MessageID] = true
	}
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for _, b := range batches {
		total += b
		if b > ccsWindow {
			t.Errorf("a batch of %d, over the window of %d", b, ccsWindow)
		}
	}
	if total != n {
		t.Errorf("batches %v add up to %d, want %d", batches, total, n)
	}
	t.Logf("%d messages in %d batches", n, len(batches))
}

// sendUp sends an upstream message from d and checks it was accepted.
func sendUp(t *testing.T, d *device, sender, id string) {
	t.Helper()
	if ack := sendUpstream(t, d, wire.Upstream{App: app, To: sender, ID: id, TTL: 600, Data: map[string]string{"id": id}}); ack.Error != "" {
		t.Fatalf("upstream %s refused: %+v", id, ack)
	}
}

// TestCCSUpstream: upstream messages go to an XMPP connection of their
// sender and stay until acked; dropped unacked, they come again on the
// next connection; an ack on another of the sender's connections counts.
func TestCCSUpstream(t *testing.T) {
	hook := newWebhook(t, 0)
	ts := startCCS(t, nil)
	snd := ts.addSender(hook.URL)
	d := ts.checkIn()
	token := d.register(app, snd.ID)

	first := ts.dialCCS(snd)
	sendUp(t, d, snd.ID, "up-1")
	got := nextStanza(t, first)
	if got.MessageType != "" || got.MessageID != "up-1" || got.From != token || got.Category != app || got.Data["id"] != "up-1" {
		t.Fatalf("upstream stanza %+v", got)
	}
	// Dropped without an ack: it comes again on the next connection.
	first.Abort()
	second := ts.dialCCS(snd)
	if again := nextStanza(t, second); again.MessageID != "up-1" {
		t.Fatalf("after the drop: %+v, want up-1 again", again)
	}
	// Acked on another connection of the sender: settled.
	third := ts.dialCCS(snd)
	sendStanza(t, third, map[string]string{"to": token, "message_id": "up-1", "message_type": "ack"})
	waitUpstreamCount(t, ts, 0)
	if strings.Contains(ts.logs.String(), "route=webhook") || hook.attemptCount() != 0 {
		t.Error("a message also went to the webhook while the sender had XMPP connections")
	}

	// Without XMPP connections the webhook takes over.
	second.Close()
	third.Close()
	testwait.Until(t, "the connections to close", 10*time.Second, func() bool { return !ts.ccs.connected(snd.ID) })
	sendUp(t, d, snd.ID, "up-2")
	if h := hook.next(t); h.MessageID != "up-2" {
		t.Errorf("webhook got %+v, want up-2", h)
	}
}

// TestCCSReceipt: a receipt names the app server's message_id and is
// resent until acked.
func TestCCSReceipt(t *testing.T) {
	ts := startCCS(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	c := ts.dialCCS(snd)
	sendStanza(t, c, map[string]any{"to": token, "message_id": "m-42", "delivery_receipt_requested": true, "data": map[string]string{"a": "b"}})
	if s := nextStanza(t, c); s.MessageType != "ack" || s.MessageID != "m-42" {
		t.Fatalf("answer %+v", s)
	}
	m := d.expectMessage()
	d.ack(m.ID)
	r := nextStanza(t, c)
	if r.MessageType != "receipt" || r.MessageID != "dr2:m-42" || r.From != "gcm.googleapis.com" || r.Category != app ||
		r.Data["original_message_id"] != "m-42" || r.Data["device_registration_id"] != token || r.Data["message_status"] != "MESSAGE_SENT_TO_DEVICE" {
		t.Fatalf("receipt %+v", r)
	}
	c.Abort()
	c = ts.dialCCS(snd)
	if again := nextStanza(t, c); again.MessageID != "dr2:m-42" {
		t.Fatalf("unacked receipt not resent: %+v", again)
	}
	sendStanza(t, c, map[string]string{"to": "gcm.googleapis.com", "message_id": "dr2:m-42", "message_type": "ack"})
	waitUpstreamCount(t, ts, 0)
}

// TestCCSDrain: a drained connection is told so, nacks new messages with
// CONNECTION_DRAINING, still takes acks, and is closed; the endpoint takes
// new connections.
func TestCCSDrain(t *testing.T) {
	ts := startCCS(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	c := ts.dialCCS(snd)
	sendUp(t, d, snd.ID, "up-1")
	if s := nextStanza(t, c); s.MessageID != "up-1" {
		t.Fatalf("stanza %+v", s)
	}

	drained := make(chan DrainResult, 1)
	go func() {
		admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
		if err != nil {
			t.Error(err)
			return
		}
		defer admin.Close()
		res, err := admin.DrainXMPP(context.Background())
		if err != nil {
			t.Error(err)
		}
		drained <- res
	}()
	if s := nextStanza(t, c); s.MessageType != "control" || s.ControlType != "CONNECTION_DRAINING" {
		t.Fatalf("stanza %+v, want the draining control message", s)
	}
	sendStanza(t, c, map[string]any{"to": token, "message_id": "late", "data": map[string]string{"a": "b"}})
	if s := nextStanza(t, c); s.MessageType != "nack" || s.MessageID != "late" || s.Error != nackDraining {
		t.Fatalf("answer %+v, want CONNECTION_DRAINING", s)
	}
	// The ack still counts, and with nothing outstanding the drain ends.
	sendStanza(t, c, map[string]string{"to": token, "message_id": "up-1", "message_type": "ack"})
	if res := <-drained; res.Drained != 1 {
		t.Errorf("drained %d connections, want 1", res.Drained)
	}
	select {
	case <-c.Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the drained connection stays open")
	}
	waitUpstreamCount(t, ts, 0)
	fresh := ts.dialCCS(snd)
	sendStanza(t, fresh, map[string]any{"to": token, "message_id": "next", "data": map[string]string{"a": "b"}})
	if s := nextStanza(t, fresh); s.MessageType != "ack" {
		t.Fatalf("after the drain: %+v", s)
	}
}

// TestCCSShutdownDrains: on shutdown every connection is told to go, and
// what it left unacked is delivered to the next server's connection.
func TestCCSShutdownDrains(t *testing.T) {
	dir := t.TempDir()
	ts := startServerIn(t, dir, func(c *Config) {
		c.XMPPListen, c.XMPPPlaintext, c.XMPPDrainTimeout = "127.0.0.1:0", true, time.Second
	})
	snd := ts.addSender("")
	d := ts.checkIn()
	d.register(app, snd.ID)
	c := ts.dialCCS(snd)
	sendUp(t, d, snd.ID, "up-1")
	if s := nextStanza(t, c); s.MessageID != "up-1" {
		t.Fatalf("stanza %+v", s)
	}
	go ts.stop()
	if s := nextStanza(t, c); s.MessageType != "control" || s.ControlType != "CONNECTION_DRAINING" {
		t.Fatalf("stanza %+v, want the draining control message", s)
	}
	<-c.Done()
	ts.stop()

	next := startServerIn(t, dir, func(c *Config) { c.XMPPListen, c.XMPPPlaintext = "127.0.0.1:0", true })
	c = next.dialCCS(snd)
	if s := nextStanza(t, c); s.MessageID != "up-1" {
		t.Fatalf("after the restart: %+v, want up-1 again", s)
	}
}

// TestCCSDroppedWithAnswersUnread: messages acked to an app server are
// stored before the ack, so a connection dropped before the app server
// read its acks loses none of them.
func TestCCSDroppedWithAnswersUnread(t *testing.T) {
	ts := startCCS(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	c := ts.dialCCS(snd)
	const n = 20
	for i := range n {
		sendStanza(t, c, map[string]any{"to": token, "message_id": fmt.Sprint("m-", i), "data": map[string]string{"i": fmt.Sprint(i)}})
	}
	acked := 0
	for range n / 2 {
		if nextStanza(t, c).MessageType == "ack" {
			acked++
		}
	}
	c.Abort()
	// Every message the server acked is stored; those it had not answered
	// yet may be stored too. None is delivered twice.
	seen := map[string]bool{}
	for len(seen) < acked {
		m := d.expectMessage()
		if seen[m.Data["i"]] {
			t.Fatalf("message %s delivered twice", m.Data["i"])
		}
		seen[m.Data["i"]] = true
		d.ack(m.ID)
	}
}

func waitUpstreamCount(t *testing.T, ts *testServer, want int) {
	t.Helper()
	testwait.Until(t, fmt.Sprintf("%d upstream messages in the store", want), 10*time.Second, func() bool { return upstreamCount(t, ts) == want })
}

// TestCCSFailedLoginsAreLimited: XMPP logins count against the address
// like HTTP requests; past the limit a wrong key is answered
// temporary-auth-failure, and the right key still logs in. It runs in a
// synctest bubble: the second each throttled failure waits passes on the
// bubble's clock.
func TestCCSFailedLoginsAreLimited(t *testing.T) { synctest.Test(t, testCCSFailedLoginsAreLimited) }

func testCCSFailedLoginsAreLimited(t *testing.T) {
	ts := startCCSInBubble(t, func(c *Config) { c.AuthFailureLimit = 2 })
	snd := ts.addSender("")
	login := func(key string) error {
		c, err := xmpptest.Dial(context.Background(), ts.xmppConfig(snd.ID, key))
		if err == nil {
			c.Close()
		}
		return err
	}
	for range 2 {
		if err := login("wrong"); err == nil || !strings.Contains(err.Error(), "not-authorized") {
			t.Fatalf("wrong key: %v, want not-authorized", err)
		}
	}
	if err := login("wrong"); err == nil || !strings.Contains(err.Error(), "temporary-auth-failure") {
		t.Fatalf("wrong key over the limit: %v, want temporary-auth-failure", err)
	}
	if err := login(snd.ServerKey); err != nil {
		t.Fatalf("right key over the limit: %v", err)
	}
	if a := ts.post("/gcm/send", "wrong", "application/json", `{"to": "x"}`); a.status != 429 {
		t.Errorf("HTTP failure from the same address over the limit: %d, want 429", a.status)
	}
	if a := ts.post("/gcm/send", snd.ServerKey, "application/json", `{"to": "x"}`); a.status != 200 {
		t.Errorf("HTTP with the right key from the same address: %d, want 200", a.status)
	}
}
