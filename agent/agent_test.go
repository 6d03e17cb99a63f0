// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tether/internal/logtest"
	"tether/internal/testwait"
	"tether/ipc"
	"tether/store"
	"tether/wire"
)

var (
	alice = ipc.Caller{UID: 1000, GID: 1000, PID: 10}
	bob   = ipc.Caller{UID: 1001, GID: 1001, PID: 11}
	root  = ipc.Caller{UID: 0, GID: 0, PID: 1}
)

const (
	app    = "org.example.chat"
	sender = "123456"
)

var bg = context.Background()

// registerDirect puts a registration in the store as an earlier session
// would have, with the token the peer uses.
func registerDirect(t *testing.T, d *device, app, sender string, owner uint32) {
	t.Helper()
	err := d.store.Register(store.Registration{App: app, Sender: sender, Token: peerToken(app, sender), Owner: owner})
	if err != nil {
		t.Fatal(err)
	}
}

func listen(t *testing.T, a *Agent, c ipc.Caller, app string) (*listener, func()) {
	t.Helper()
	l := newListener()
	cancel, err := a.Listen(bg, c, app, l)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	return l, cancel
}

func TestEndpoint(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"ws://push.example:8080", "ws://push.example:8080/device/v1", true},
		{"wss://push.example", "wss://push.example/device/v1", true},
		{"http://push.example:80/", "ws://push.example:80/device/v1", true},
		{"https://push.example/tether", "wss://push.example/tether/device/v1", true},
		{"ftp://push.example", "", false},
		{"push.example:443", "", false},
		{"wss://", "", false},
		{"wss://user:pw@push.example", "", false},
		{"wss://push.example?x=1", "", false},
	}
	for _, tt := range tests {
		got, err := Endpoint(tt.in)
		if (err == nil) != tt.ok || got != tt.want {
			t.Errorf("Endpoint(%q) = %q, %v; want %q, ok %v", tt.in, got, err, tt.want, tt.ok)
		}
	}
}

// tempStore is a store in a file of the test's, closed at its end.
func tempStore(t *testing.T) *store.Store {
	t.Helper()
	st, err := store.Open(filepath.Join(t.TempDir(), "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}

// TestNewRefusesBadBounds: a bound below zero is an error naming it.
func TestNewRefusesBadBounds(t *testing.T) {
	st := tempStore(t)
	for _, tt := range []struct {
		tweak func(*Config)
		want  string // in the error; "" for none
	}{
		{func(c *Config) {}, ""},
		{func(c *Config) { c.SeenIDs = 5 }, ""},
		{func(c *Config) { c.SeenIDs = -1 }, "-1 seen IDs"},
		{func(c *Config) { c.UserRegistrations = -2 }, "-2 registrations per user"},
	} {
		cfg := Config{Store: st, Servers: []string{"ws://127.0.0.1:8080"}}
		tt.tweak(&cfg)
		_, err := New(cfg)
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("New(%+v): %v; want an error with %q", cfg, err, tt.want)
		}
	}
}

// TestInsecureServerRefused: ws:// off the machine needs Insecure, since
// the device secret would cross the network in the clear.
func TestInsecureServerRefused(t *testing.T) {
	st := tempStore(t)
	for _, tt := range []struct {
		url      string
		insecure bool
		ok       bool
	}{
		{"ws://push.example:8080", false, false},
		{"http://192.0.2.7", false, false},
		{"ws://[2001:db8::1]:80", false, false},
		{"ws://push.example:8080", true, true},
		{"wss://push.example", false, true},
		{"https://push.example", false, true},
		{"ws://127.0.0.1:8080", false, true},
		{"ws://127.3.2.1", false, true},
		{"ws://[::1]:8080", false, true},
		{"ws://localhost:8080", false, true},
	} {
		_, err := New(Config{Store: st, Servers: []string{tt.url}, Insecure: tt.insecure})
		if (err == nil) != tt.ok || (!tt.ok && !errors.Is(err, ErrInsecure)) {
			t.Errorf("New(%q, insecure %v): %v; want ok %v", tt.url, tt.insecure, err, tt.ok)
		}
	}
}

func TestBackoffBounds(t *testing.T) {
	base, ceiling := time.Second, 5*time.Minute
	for attempt, want := range []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second} {
		for range 50 {
			if d := backoff(base, ceiling, attempt); d < 0 || d >= want {
				t.Fatalf("backoff(attempt %d) = %v, want in [0, %v)", attempt, d, want)
			}
		}
	}
	for _, attempt := range []int{9, 20, 63, 100} {
		if d := backoff(base, ceiling, attempt); d < 0 || d >= ceiling {
			t.Fatalf("backoff(attempt %d) = %v, want in [0, %v)", attempt, d, ceiling)
		}
	}
}

func TestCheckInPersistedAndReused(t *testing.T) {
	p := newPeer(t)
	d := newDevice(t, "", p.url, nil).start()
	pc := p.nextConn(t)
	if pc.hello.DeviceID != "" || pc.hello.DeviceSecret != "" {
		t.Fatalf("first hello carries credentials: %+v", pc.hello)
	}
	d.waitConnected(t)
	endpoint, err := Endpoint(p.url)
	if err != nil {
		t.Fatal(err)
	}
	want := store.Credentials{Server: endpoint, DeviceID: "dev-1", Secret: "secret-1"}
	if creds, err := d.store.Credentials(); err != nil || creds != want {
		t.Fatalf("stored credentials %+v, %v; want %+v", creds, err, want)
	}
	if st, _ := d.agent.Status(bg); st.DeviceID != "dev-1" || st.Server != endpoint || !st.Connected {
		t.Errorf("status %+v", st)
	}
	d.stop()

	// A restart on the same file presents the stored credentials.
	d2 := newDevice(t, d.path, p.url, nil).start()
	pc2 := p.nextConn(t)
	if pc2.hello.DeviceID != "dev-1" || pc2.hello.DeviceSecret != "secret-1" {
		t.Errorf("hello after restart: device %q", pc2.hello.DeviceID)
	}
	d2.waitConnected(t)
	if n := p.checkinCount(); n != 1 {
		t.Errorf("%d check-ins, want 1", n)
	}
}

// TestRegisterWebPush: a Web Push registration sends its VAPID key to the
// server, keeps the endpoint the server answers with, and answers from
// the store after, offline too; another key is refused.
func TestRegisterWebPush(t *testing.T) {
	if ipc.WebPushSender != wire.WebPushSender {
		t.Fatalf("ipc.WebPushSender %q is not wire.WebPushSender %q", ipc.WebPushSender, wire.WebPushSender)
	}
	p := newPeer(t)
	d := newDevice(t, "", p.url, nil).start()
	pc := p.nextConn(t)
	d.waitConnected(t)
	token := peerToken(app, wire.WebPushSender)
	want := ipc.Registration{Token: token, Endpoint: peerEndpoint(token)}
	req := ipc.RegisterRequest{App: app, Sender: ipc.WebPushSender, VAPID: "BKey"}
	if reg, err := d.agent.Register(bg, alice, req); err != nil || reg != want {
		t.Fatalf("register: %+v, %v; want %+v", reg, err, want)
	}
	var r wire.Register
	if err := pc.waitFor(t, wire.TypeRegister).Decode(&r); err != nil || r.VAPID != "BKey" {
		t.Fatalf("register frame %+v, %v; want the VAPID key", r, err)
	}
	for _, tt := range []struct {
		name string
		req  ipc.RegisterRequest
		err  error
	}{
		{"again", req, nil},
		{"another key", ipc.RegisterRequest{App: app, Sender: ipc.WebPushSender, VAPID: "BOther"}, ipc.ErrInvalidArgument},
		{"a key with a numeric sender", ipc.RegisterRequest{App: app, Sender: sender, VAPID: "BKey"}, ipc.ErrInvalidArgument},
	} {
		t.Run(tt.name, func(t *testing.T) {
			reg, err := d.agent.Register(bg, alice, tt.req)
			if !errors.Is(err, tt.err) || (tt.err == nil && reg != want) {
				t.Fatalf("register: %+v, %v; want %+v, %v", reg, err, want, tt.err)
			}
		})
	}
	if _, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: ipc.WebPushSender, Data: map[string]string{"k": "v"}}); !errors.Is(err, ipc.ErrInvalidArgument) {
		t.Errorf("upstream to the Web Push sender: %v, want InvalidArgument", err)
	}
	d.stop()
	off := newDevice(t, d.path, "ws://127.0.0.1:1", nil)
	if reg, err := off.agent.Register(bg, alice, req); err != nil || reg != want {
		t.Fatalf("offline register: %+v, %v; want %+v", reg, err, want)
	}
}

func TestRegister(t *testing.T) {
	p := newPeer(t)
	logs := &logtest.Buffer{}
	d := newDevice(t, "", p.url, nil, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}).start()
	pc := p.nextConn(t)
	d.waitConnected(t)

	reg, err := d.agent.Register(bg, alice, ipc.RegisterRequest{App: app, Sender: sender})
	token := reg.Token
	if err != nil || token != peerToken(app, sender) {
		t.Fatalf("register: %q, %v", token, err)
	}
	pc.waitFor(t, wire.TypeRegister)
	// Known: answered from the store. The next frame the peer sees is the
	// second sender's register, not a repeat of the first.
	if reg, err := d.agent.Register(bg, alice, ipc.RegisterRequest{App: app, Sender: sender}); err != nil || reg.Token != peerToken(app, sender) {
		t.Fatalf("second register: %q, %v", token, err)
	}
	if _, err := d.agent.Register(bg, alice, ipc.RegisterRequest{App: app, Sender: "777"}); err != nil {
		t.Fatal(err)
	}
	var r wire.Register
	if err := pc.waitFor(t, wire.TypeRegister).Decode(&r); err != nil || r.Sender != "777" {
		t.Errorf("next register frame: %+v, %v", r, err)
	}
	if _, err := d.agent.Register(bg, alice, ipc.RegisterRequest{App: app, Sender: "not-a-number"}); !errors.Is(err, ipc.ErrInvalidArgument) {
		t.Errorf("register with a bad sender: %v", err)
	}
	d.stop()
	for _, secret := range []string{"secret-1", peerToken(app, sender), peerToken(app, "777")} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("%q is in the log:\n%s", secret, logs.String())
		}
	}
	if !strings.Contains(logs.String(), "registered") {
		t.Errorf("the log is not the agent's:\n%s", logs.String())
	}

	// Offline, a known registration still answers; an unknown one cannot.
	off := newDevice(t, d.path, "ws://127.0.0.1:1", nil)
	if reg, err := off.agent.Register(bg, alice, ipc.RegisterRequest{App: app, Sender: sender}); err != nil || reg.Token != peerToken(app, sender) {
		t.Errorf("offline register of a known pair: %q, %v", token, err)
	}
	if _, err := off.agent.Register(bg, alice, ipc.RegisterRequest{App: app, Sender: "999"}); !errors.Is(err, ipc.ErrOffline) {
		t.Errorf("offline register of an unknown pair: %v", err)
	}
	if st, _ := off.agent.Status(bg); st.Connected || st.Apps != 1 {
		t.Errorf("offline status %+v", st)
	}
}

func TestUnregister(t *testing.T) {
	p := newPeer(t)
	d := newDevice(t, "", p.url, nil)
	registerDirect(t, d, app, sender, alice.UID)
	registerDirect(t, d, app, "42", alice.UID)
	if err := d.agent.Unregister(bg, alice, app, sender); !errors.Is(err, ipc.ErrOffline) {
		t.Fatalf("offline unregister: %v", err)
	}
	d.start()
	pc := p.nextConn(t)
	d.waitConnected(t)
	pc.message("from-1", app, sender, 3600)
	pc.message("from-42", app, "42", 3600)
	pc.waitAcked(t, 2)

	if err := d.agent.Unregister(bg, alice, app, sender); err != nil {
		t.Fatal(err)
	}
	if _, err := d.store.Token(app, sender); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("token after unregister: %v", err)
	}
	if err := d.agent.Unregister(bg, alice, app, sender); !errors.Is(err, ipc.ErrNotRegistered) {
		t.Errorf("second unregister: %v", err)
	}
	// The other sender's message stays; the unregistered sender's is gone.
	l, _ := listen(t, d.agent, alice, app)
	if m := l.nextMessage(t); m.ID != "from-42" {
		t.Errorf("first delivery after unregister: %q", m.ID)
	}
	pc.message("later", app, "42", 3600)
	if m := l.nextMessage(t); m.ID != "later" {
		t.Errorf("second delivery after unregister: %q", m.ID)
	}
}

func TestBurstStoredOnceAckedOnce(t *testing.T) {
	p := newPeer(t)
	gate := make(chan struct{})
	p.set(func(p *peer) { p.gate = gate })
	d := newDevice(t, "", p.url, nil)
	registerDirect(t, d, app, sender, alice.UID)
	d.start()
	pc := p.nextConn(t)

	// Hold the agent between the welcome and its first frame, so that the
	// whole burst is queued behind the reader when the agent looks.
	const n = 40
	d.agent.outbox.mu.Lock()
	close(gate)
	var want []string
	for i := range n {
		id := fmt.Sprintf("m%02d", i)
		want = append(want, id)
		pc.message(id, app, sender, 3600)
	}
	pc.message("m00", app, sender, 3600) // a duplicate in the same burst
	testwait.Until(t, "burst queued", waitLimit, func() bool {
		d.agent.link.mu.Lock()
		defer d.agent.link.mu.Unlock()
		s := d.agent.link.session
		return s != nil && len(s.frames) == n+1
	})
	d.agent.outbox.mu.Unlock()

	if ids := pc.waitAck(t); !slices.Equal(ids, want) {
		t.Fatalf("first ack has %d IDs %v, want all %d once", len(ids), ids, n)
	}
	l, _ := listen(t, d.agent, alice, app)
	for _, id := range want {
		if m := l.nextMessage(t); m.ID != id || m.Data["n"] != id || m.From != sender || m.App != app {
			t.Fatalf("delivered %+v, want %s", m, id)
		}
	}
}

func TestDuplicatesDroppedAndReacked(t *testing.T) {
	_, d, pc := onlineWithApp(t, nil)
	l, _ := listen(t, d.agent, alice, app)

	pc.message("m1", app, sender, 3600)
	if ids := pc.waitAck(t); !slices.Equal(ids, []string{"m1"}) {
		t.Fatalf("ack %v", ids)
	}
	if m := l.nextMessage(t); m.ID != "m1" {
		t.Fatalf("delivered %q", m.ID)
	}
	pc.message("m1", app, sender, 3600) // redelivery before the app acked
	if ids := pc.waitAck(t); !slices.Equal(ids, []string{"m1"}) {
		t.Fatalf("re-ack %v", ids)
	}
	l.ack(t, d.agent, alice, app, "m1")
	pc.message("m1", app, sender, 3600) // and after
	if ids := pc.waitAck(t); !slices.Equal(ids, []string{"m1"}) {
		t.Fatalf("re-ack after app ack %v", ids)
	}
	pc.message("m2", app, sender, 3600)
	pc.waitAck(t)
	if m := l.nextMessage(t); m.ID != "m2" {
		t.Errorf("after redeliveries of m1 the app got %q, want m2", m.ID)
	}
}

func TestMessageForNoRegistrationAckedNotKept(t *testing.T) {
	_, d, pc := onlineWithApp(t, nil)
	pc.send("", wire.Message{ID: "stray", App: app, From: sender, Token: "someone-elses-token", TTL: 60})
	pc.message("mine", app, sender, 60)
	if ids := pc.waitAcked(t, 2); !slices.Contains(ids, "stray") {
		t.Fatalf("stray message not acked: %v", ids)
	}
	l, _ := listen(t, d.agent, alice, app)
	if m := l.nextMessage(t); m.ID != "mine" {
		t.Errorf("delivered %q, want only the registered message", m.ID)
	}
}

func TestListenWindowAndRedelivery(t *testing.T) {
	const total = Window + 50
	_, d, pc := onlineWithApp(t, nil, func(c *Config) { c.Quota.AppMessages = total })
	var ids []string
	for i := range total {
		ids = append(ids, fmt.Sprintf("m%03d", i))
		pc.message(ids[i], app, sender, 3600)
	}
	pc.waitAcked(t, total)

	// The first listener gets a full window and no more: nothing acks, so
	// its delivery round ends at the window, before it learns it was
	// replaced.
	l1, _ := listen(t, d.agent, alice, app)
	for i := range Window {
		if m := l1.nextMessage(t); m.ID != ids[i] {
			t.Fatalf("delivery %d: %q, want %q", i, m.ID, ids[i])
		}
	}
	l2, _ := listen(t, d.agent, alice, app)
	if e := l1.next(t); e != (replaced{}) {
		t.Fatalf("first listener got %#v after its window, want Replaced", e)
	}

	// The second gets the unacked ones again, then the rest as it acks.
	for i := range total {
		m := l2.nextMessage(t)
		if m.ID != ids[i] {
			t.Fatalf("redelivery %d: %q, want %q", i, m.ID, ids[i])
		}
		l2.ack(t, d.agent, alice, app, m.ID)
	}
	l2.mu.Lock()
	if l2.maxUnacked > Window {
		t.Errorf("%d messages in flight, window is %d", l2.maxUnacked, Window)
	}
	l2.mu.Unlock()
	if st, _ := d.agent.Status(bg); st.QueuedDownstream != 0 {
		t.Errorf("%d messages held after all were acked", st.QueuedDownstream)
	}
}

func TestAckedNeverRedeliveredAfterRestart(t *testing.T) {
	p, d, pc := onlineWithApp(t, nil)
	l, _ := listen(t, d.agent, alice, app)
	pc.message("m1", app, sender, 3600)
	pc.message("m2", app, sender, 3600)
	for _, want := range []string{"m1", "m2"} {
		if m := l.nextMessage(t); m.ID != want {
			t.Fatalf("delivered %q, want %q", m.ID, want)
		}
	}
	l.ack(t, d.agent, alice, app, "m1")
	d.stop()

	d2 := newDevice(t, d.path, p.url, nil).start()
	pc2 := p.nextConn(t)
	pc2.message("m1", app, sender, 3600) // the server redelivers
	if ids := pc2.waitAck(t); !slices.Equal(ids, []string{"m1"}) {
		t.Fatalf("ack of the redelivery: %v", ids)
	}
	l2, _ := listen(t, d2.agent, alice, app)
	if m := l2.nextMessage(t); m.ID != "m2" {
		t.Fatalf("after restart the app got %q first, want the unacked m2", m.ID)
	}
	pc2.message("m3", app, sender, 3600)
	if m := l2.nextMessage(t); m.ID != "m3" {
		t.Errorf("after restart the app got %q, want m3 (m1 was acked)", m.ID)
	}
}

func TestRedeliveryIsADuplicateWhileItsIDIsKept(t *testing.T) {
	_, d, pc := onlineWithApp(t, nil, func(c *Config) { c.SeenIDs = 3 })
	l, _ := listen(t, d.agent, alice, app)
	// send sends id and checks that the agent acks it to the server.
	send := func(id string) {
		t.Helper()
		pc.message(id, app, sender, 3600)
		if ids := pc.waitAck(t); !slices.Equal(ids, []string{id}) {
			t.Fatalf("ack of %s: %v", id, ids)
		}
	}
	// deliver sends id and checks that the app gets it next, and acks it.
	deliver := func(id string) {
		t.Helper()
		send(id)
		if m := l.nextMessage(t); m.ID != id {
			t.Fatalf("the app got %q, want %s", m.ID, id)
		}
		l.ack(t, d.agent, alice, app, id)
	}
	for _, id := range []string{"m1", "m2", "m3"} {
		deliver(id)
	}
	send("m1")    // among the last three let go: a duplicate the app does not get
	deliver("m4") // the app gets m4 next, not m1; m1's ID goes as m4 comes
	send("m1")    // past the bound: stored anew
	if m := l.nextMessage(t); m.ID != "m1" {
		t.Errorf("the app got %q, want m1 again, a duplicate", m.ID)
	}
}

func TestHeldMessageExpires(t *testing.T) {
	clk := newClock()
	_, d, pc := onlineWithApp(t, clk)
	pc.message("short", app, sender, 60)
	pc.message("long", app, sender, 3600)
	pc.waitAcked(t, 2)
	clk.Advance(61 * time.Second)

	l, _ := listen(t, d.agent, alice, app)
	if e := l.next(t); e != deleted(1) {
		t.Fatalf("first event %#v, want DeletedMessages(1)", e)
	}
	if m := l.nextMessage(t); m.ID != "long" {
		t.Fatalf("delivered %q, want long", m.ID)
	}
	if st, _ := d.agent.Status(bg); st.QueuedDownstream != 1 {
		t.Errorf("%d held, want 1", st.QueuedDownstream)
	}
	// The expired ID is remembered no longer than its message lived: the
	// server would not send it again.
	pc.message("short", app, sender, 60)
	pc.waitAck(t)
	if m := l.nextMessage(t); m.ID != "short" {
		t.Errorf("delivered %q", m.ID)
	}
}

func TestTTLZeroMessageReachesListener(t *testing.T) {
	_, d, pc := onlineWithApp(t, nil, func(c *Config) { c.Now = nil })
	l, _ := listen(t, d.agent, alice, app)
	pc.message("now-or-never", app, sender, 0)
	if m := l.nextMessage(t); m.ID != "now-or-never" || m.TTL != 0 {
		t.Errorf("delivered %+v", m)
	}
}

func TestUpstreamRetriedAfterReconnect(t *testing.T) {
	p, d, pc := onlineWithApp(t, nil)
	d.waitConnected(t)
	l, _ := listen(t, d.agent, alice, app)

	ttl := int64(600)
	id, result, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, TTL: &ttl, Data: map[string]string{"q": "1"}})
	if err != nil || id == "" {
		t.Fatalf("send: %q, %v", id, err)
	}
	var up wire.Upstream
	if err := pc.waitFor(t, wire.TypeUpstream).Decode(&up); err != nil || up.ID != id || up.TTL != ttl || up.Data["q"] != "1" {
		t.Fatalf("upstream frame %+v, %v", up, err)
	}
	pc.drop()

	pc2 := p.nextConn(t)
	f := pc2.waitFor(t, wire.TypeUpstream)
	var again wire.Upstream
	if err := f.Decode(&again); err != nil || again.ID != id || again.TTL > ttl || again.TTL <= 0 {
		t.Fatalf("resent upstream %+v, %v", again, err)
	}
	pc2.send("", wire.UpstreamAck{App: app, ID: id})
	if r := waitResult(t, result); r != (ipc.SendResult{App: app, ID: id}) {
		t.Errorf("result %+v", r)
	}
	if e := l.next(t); e != (ipc.SendResult{App: app, ID: id}) {
		t.Errorf("listener got %#v", e)
	}
	if st, _ := d.agent.Status(bg); st.PendingUpstream != 0 {
		t.Errorf("%d pending after the ack", st.PendingUpstream)
	}
	// Acked, it is not sent again after another reconnection: the first
	// upstream frame on the next connection is a new message.
	pc2.drop()
	pc3 := p.nextConn(t)
	d.waitConnected(t)
	id2, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, ID: "second"})
	if err != nil || id2 != "second" {
		t.Fatalf("send: %q, %v", id2, err)
	}
	if err := pc3.waitFor(t, wire.TypeUpstream).Decode(&up); err != nil || up.ID != "second" || up.TTL != wire.MaxTTL {
		t.Errorf("upstream after reconnection %+v, %v", up, err)
	}
}

// An app's send that is stored just after a new session resent the outbox
// still goes out on that session, not only after the next reconnection.
func TestUpstreamStoredAsSessionBeginsIsSent(t *testing.T) {
	p := newPeer(t)
	clk := &holdingClock{clock: newClock()}
	d := newDevice(t, "", p.url, nil, func(c *Config) { c.Now = clk.Now })
	registerDirect(t, d, app, sender, alice.UID)

	// "first" waits in the outbox: its resend shows that the new session
	// has read the outbox.
	if _, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, ID: "first"}); err != nil {
		t.Fatal(err)
	}
	// "second" is sent while the agent is offline; Send is held where it
	// reads the clock, before it stores the message. Nothing else runs: the
	// agent is not started yet.
	entered, release := clk.holdNext()
	letGo := sync.OnceFunc(func() { close(release) })
	t.Cleanup(letGo) // a failing test must not leave Send waiting
	sent := make(chan error, 1)
	go func() {
		_, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, ID: "second"})
		sent <- err
	}()
	select {
	case <-entered:
	case <-time.After(waitLimit):
		t.Fatal("Send did not read the clock")
	}

	d.start()
	pc := p.nextConn(t)
	var up wire.Upstream
	if err := pc.waitFor(t, wire.TypeUpstream).Decode(&up); err != nil || up.ID != "first" {
		t.Fatalf("first upstream frame %+v, %v; want the resent \"first\"", up, err)
	}
	letGo()
	if err := <-sent; err != nil {
		t.Fatalf("send second: %v", err)
	}
	if err := pc.waitFor(t, wire.TypeUpstream).Decode(&up); err != nil || up.ID != "second" {
		t.Fatalf("next upstream frame %+v, %v; want \"second\"", up, err)
	}
}

// holdingClock is a test clock that can stop the next caller of Now until
// the test lets it go.
type holdingClock struct {
	*clock
	holdMu           sync.Mutex
	entered, release chan struct{}
}

// holdNext makes the next call to Now close entered and wait until release
// is closed.
func (c *holdingClock) holdNext() (entered <-chan struct{}, release chan<- struct{}) {
	c.holdMu.Lock()
	defer c.holdMu.Unlock()
	c.entered, c.release = make(chan struct{}), make(chan struct{})
	return c.entered, c.release
}

func (c *holdingClock) Now() time.Time {
	c.holdMu.Lock()
	entered, release := c.entered, c.release
	c.entered, c.release = nil, nil
	c.holdMu.Unlock()
	if entered != nil {
		close(entered)
		<-release
	}
	return c.clock.Now()
}

func TestUpstreamRefusedAndRetried(t *testing.T) {
	_, d, pc := onlineWithApp(t, nil)
	d.waitConnected(t)

	// Refused for good in the ack: the app learns why.
	_, result, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, ID: "a"})
	if err != nil {
		t.Fatal(err)
	}
	pc.waitFor(t, wire.TypeUpstream)
	pc.send("", wire.UpstreamAck{App: app, ID: "a", Error: "InvalidParameters"})
	if r := <-result; r.Err != "InvalidParameters" {
		t.Errorf("result %+v", r)
	}

	// Refused for good with an error frame.
	_, result, err = d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, ID: "b"})
	if err != nil {
		t.Fatal(err)
	}
	f := pc.waitFor(t, wire.TypeUpstream)
	pc.send(f.Ref, wire.Error{Code: wire.CodeInvalid, Message: "no"})
	if r := <-result; !strings.Contains(r.Err, wire.CodeInvalid) {
		t.Errorf("result %+v", r)
	}
	if st, _ := d.agent.Status(bg); st.PendingUpstream != 0 {
		t.Errorf("%d pending after refusals", st.PendingUpstream)
	}
}

// TestUpstreamServerLimits: the server's answers to an upstream message
// over its limits reach the app as GCM's client reported them. The app's
// 20 waiting at the server is a send_error TooManyMessages, and the message
// is given up; the device's rate is a wait: the message stays pending and
// goes again.
func TestUpstreamServerLimits(t *testing.T) {
	tests := []struct {
		name   string
		answer func(pc *peerConn, ref string)
		// result is what the app is told; "" for a message kept.
		result string
	}{
		{"too many waiting for the app", func(pc *peerConn, ref string) {
			pc.send(ref, wire.UpstreamAck{App: app, ID: "a", Error: wire.UpstreamTooManyMessages})
		}, ipc.CodeTooManyMessages},
		{"over the device's rate", func(pc *peerConn, ref string) {
			pc.send(ref, wire.Error{Code: wire.CodeUnavailable, Message: "over the device's upstream rate; try again later"})
		}, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, d, pc := onlineWithApp(t, nil)
			d.waitConnected(t)
			l, _ := listen(t, d.agent, alice, app)
			_, result, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, ID: "a"})
			if err != nil {
				t.Fatal(err)
			}
			tc.answer(pc, pc.waitFor(t, wire.TypeUpstream).Ref)
			// A message acked behind the answer: once the app has its
			// outcome, the agent has handled the answer too.
			if _, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, ID: "marker"}); err != nil {
				t.Fatal(err)
			}
			var up wire.Upstream
			if err := pc.waitFor(t, wire.TypeUpstream).Decode(&up); err != nil || up.ID != "marker" {
				t.Fatalf("upstream frame %+v, %v; want the marker", up, err)
			}
			pc.send("", wire.UpstreamAck{App: app, ID: "marker"})
			var events []any
			for e := l.next(t); e != (ipc.SendResult{App: app, ID: "marker"}); e = l.next(t) {
				events = append(events, e)
			}

			if tc.result != "" {
				if want := []any{ipc.SendResult{App: app, ID: "a", Err: tc.result}}; !slices.Equal(events, want) {
					t.Errorf("the listener got %v, want %v", events, want)
				}
				if r := waitResult(t, result); r.Err != tc.result {
					t.Errorf("result %+v", r)
				}
				if st, _ := d.agent.Status(bg); st.PendingUpstream != 0 {
					t.Errorf("%d pending after the refusal", st.PendingUpstream)
				}
				return
			}
			if len(events) != 0 {
				t.Errorf("the listener got %v before the marker's outcome, want nothing", events)
			}
			if st, _ := d.agent.Status(bg); st.PendingUpstream != 1 {
				t.Errorf("%d pending after the wait, want 1", st.PendingUpstream)
			}
			pc.drop()
			pc2 := p.nextConn(t)
			if err := pc2.waitFor(t, wire.TypeUpstream).Decode(&up); err != nil || up.ID != "a" {
				t.Fatalf("upstream frame %+v, %v; want \"a\" again", up, err)
			}
			pc2.send("", wire.UpstreamAck{App: app, ID: "a"})
			if r := waitResult(t, result); r.Err != "" {
				t.Errorf("result %+v", r)
			}
		})
	}
}

func TestUpstreamTTLExceeded(t *testing.T) {
	clk := newClock()
	_, d, pc := onlineWithApp(t, clk)
	d.waitConnected(t)
	ttl := int64(30)
	id, result, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, TTL: &ttl})
	if err != nil {
		t.Fatal(err)
	}
	pc.waitFor(t, wire.TypeUpstream)
	clk.Advance(31 * time.Second)
	pc.drop()
	if r := waitResult(t, result); r != (ipc.SendResult{App: app, ID: id, Err: ResultTTLExceeded}) {
		t.Errorf("result %+v", r)
	}
}

// waitResult returns the outcome of an upstream message that Send gave.
func waitResult(t *testing.T, result <-chan ipc.SendResult) ipc.SendResult {
	t.Helper()
	select {
	case r := <-result:
		return r
	case <-time.After(waitLimit):
		t.Fatal("no outcome of the upstream message")
		return ipc.SendResult{}
	}
}

func TestSendLimitsOffline(t *testing.T) {
	d := newDevice(t, "", "ws://127.0.0.1:1", nil)
	registerDirect(t, d, app, sender, alice.UID)
	registerDirect(t, d, "org.example.other", sender, alice.UID)
	zero := int64(0)
	if _, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, TTL: &zero}); !errors.Is(err, ipc.ErrOffline) {
		t.Errorf("TTL 0 offline: %v", err)
	}
	for i := range MaxPending {
		if _, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
	}
	if _, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender}); !errors.Is(err, ipc.ErrTooManyMessages) {
		t.Errorf("send %d: %v, want ErrTooManyMessages", MaxPending+1, err)
	}
	if _, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: "org.example.other", To: sender}); err != nil {
		t.Errorf("another app's send: %v", err)
	}
	if _, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: "999"}); !errors.Is(err, ipc.ErrNotRegistered) {
		t.Errorf("send to an unregistered sender: %v", err)
	}
	big := map[string]string{"k": strings.Repeat("x", wire.MaxDataSize)}
	if _, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: "org.example.other", To: sender, Data: big}); !errors.Is(err, ipc.ErrMessageTooBig) || !strings.Contains(err.Error(), "4097 bytes") {
		t.Errorf("send of too much data: %v, want ErrMessageTooBig naming the size", err)
	}
	if st, _ := d.agent.Status(bg); st.PendingUpstream != MaxPending+1 {
		t.Errorf("%d pending", st.PendingUpstream)
	}
}

func TestPermissions(t *testing.T) {
	d := newDevice(t, "", "ws://127.0.0.1:1", nil)
	registerDirect(t, d, app, sender, alice.UID)
	token := peerToken(app, sender)
	nop := newListener()
	ops := map[string]func(c ipc.Caller, app string) error{
		"register": func(c ipc.Caller, app string) error {
			_, err := d.agent.Register(bg, c, ipc.RegisterRequest{App: app, Sender: sender})
			return err
		},
		"unregister": func(c ipc.Caller, app string) error { return d.agent.Unregister(bg, c, app, sender) },
		"listen": func(c ipc.Caller, app string) error {
			cancel, err := d.agent.Listen(bg, c, app, nop)
			if cancel != nil {
				cancel()
			}
			return err
		},
		"ack": func(c ipc.Caller, app string) error { return d.agent.Ack(bg, c, app, []string{"x"}) },
		"send": func(c ipc.Caller, app string) error {
			_, _, err := d.agent.Send(bg, c, ipc.SendRequest{App: app, To: sender})
			return err
		},
	}
	for name, op := range ops {
		t.Run(name, func(t *testing.T) {
			err := op(bob, app)
			if !errors.Is(err, ipc.ErrPermission) {
				t.Fatalf("bob: %v, want ErrPermission", err)
			}
			if !strings.Contains(err.Error(), app) || strings.Contains(err.Error(), token) {
				t.Errorf("error %q should name the app and not the token", err)
			}
			if name != "register" && name != "unregister" {
				if err := op(root, app); err != nil {
					t.Errorf("root: %v", err)
				}
				if err := op(alice, app); err != nil {
					t.Errorf("owner: %v", err)
				}
			}
			if name != "register" {
				if err := op(alice, "org.example.never"); !errors.Is(err, ipc.ErrUnknownApp) {
					t.Errorf("unknown app: %v, want ErrUnknownApp", err)
				}
			}
		})
	}
	// Root registering for alice's app keeps it hers.
	if err := d.store.Register(store.Registration{App: app, Sender: "5", Token: "t5", Owner: alice.UID}); err != nil {
		t.Fatal(err)
	}
	if reg, err := d.agent.Register(bg, root, ipc.RegisterRequest{App: app, Sender: "5"}); err != nil || reg.Token != "t5" {
		t.Errorf("root register of a known pair: %q, %v", reg.Token, err)
	}
}

func TestRegisterRaceKeepsFirstOwner(t *testing.T) {
	p := newPeer(t)
	d := newDevice(t, "", p.url, nil).start()
	p.nextConn(t)
	d.waitConnected(t)
	if _, err := d.agent.Register(bg, alice, ipc.RegisterRequest{App: app, Sender: sender}); err != nil {
		t.Fatal(err)
	}
	// Bob's request was checked before alice's answer landed: the store
	// refuses it when the answer comes.
	req := &request{kind: wire.TypeRegister, reg: store.Registration{App: app, Sender: "77", Owner: bob.UID}}
	if res := d.agent.complete(req, "tok", ""); !errors.Is(res.err, ipc.ErrPermission) {
		t.Errorf("late registration by another user: %v", res.err)
	}
}

func TestBadFramesAnswered(t *testing.T) {
	_, _, pc := onlineWithApp(t, nil)
	tests := []struct {
		name, frame, code string
	}{
		{"unknown type", `{"type":"teleport","ref":"r1","body":{}}`, wire.CodeUnknownType},
		{"server-bound type", `{"type":"register","ref":"r2","body":{"app":"a","sender":"1"}}`, wire.CodeUnknownType},
		{"not JSON", `{{{`, wire.CodeBadFrame},
		{"message without token", `{"type":"message","ref":"r3","body":{"id":"x","app":"a","from":"1","ttl":5}}`, wire.CodeBadFrame},
		{"message with bad TTL", `{"type":"message","body":{"id":"x","token":"t","app":"a","from":"1","ttl":-1}}`, wire.CodeBadFrame},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pc.sendRaw(tt.frame)
			f := pc.waitFor(t, wire.TypeError)
			var e wire.Error
			if err := f.Decode(&e); err != nil || e.Code != tt.code {
				t.Fatalf("error frame %+v, %v; want code %s", e, err, tt.code)
			}
			// The session goes on.
			id := fmt.Sprintf("ok%d", i)
			pc.message(id, app, sender, 60)
			if ids := pc.waitAck(t); !slices.Equal(ids, []string{id}) {
				t.Errorf("ack after bad frame: %v", ids)
			}
		})
	}
	// An error frame is never answered with one: the next frame the peer
	// gets is the ack of the message after it.
	pc.sendRaw(`{"type":"error","body":{"code":"","message":"x"}}`)
	pc.message("last", app, sender, 60)
	select {
	case f := <-pc.frames:
		if f.Type != wire.TypeAck {
			t.Errorf("after a bad error frame the agent sent %s", f.Type)
		}
	case <-time.After(waitLimit):
		t.Fatal("no ack")
	}
}

func TestReconnectAndHold(t *testing.T) {
	p := newPeer(t)
	d := newDevice(t, "", p.url, nil, func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Hour, time.Hour })
	d.agent.Link().Hold()
	d.start()
	d.agent.Link().Wake("route-up")
	pc := p.nextConn(t)
	d.waitConnected(t)
	// With an hour of backoff, only Wake brings the link back soon.
	d.agent.Link().Wake("route-changed")
	<-pc.done
	pc = p.nextConn(t)
	d.waitConnected(t)
	st, err := d.agent.Status(bg)
	if err != nil {
		t.Fatal(err)
	}
	if st.LastConnect != "route-changed" || st.LastDisconnect != "route-changed" || st.Reconnects != 1 {
		t.Fatalf("status after a reconnect: %+v", st)
	}

	// Suspend closes the connection with a close frame and dials no more.
	if err := d.agent.Link().Suspend(bg); err != nil {
		t.Fatal(err)
	}
	<-pc.done
	if st := d.agent.Link().Stats(); st.Connected || st.LastDisconnect != "suspend" {
		t.Fatalf("after suspend: %+v", st)
	}
	d.agent.Link().Wake("resume")
	p.nextConn(t)
	d.waitConnected(t)
	if st := d.agent.Link().Stats(); st.LastConnect != "resume" || st.Reconnects != 2 {
		t.Fatalf("after resume: %+v", st)
	}
}

func TestHeartbeat(t *testing.T) {
	p := newPeer(t)
	d := newDevice(t, "", p.url, nil, func(c *Config) { c.Heartbeat = time.Hour })
	d.start()
	pc := p.nextConn(t)
	d.waitConnected(t)
	d.agent.Link().SetHeartbeat(20 * time.Millisecond)
	select {
	case <-pc.pings:
	case <-time.After(waitLimit):
		t.Fatal("no ping after the heartbeat changed")
	}
	if st := d.agent.Link().Stats(); st.Heartbeats == 0 || st.Heartbeat != 20*time.Millisecond || st.LastConnect != CauseStart {
		t.Fatalf("link stats after a ping: %+v", st)
	}
}

func TestDeadConnectionDetected(t *testing.T) {
	p := newPeer(t)
	p.set(func(p *peer) { p.deaf = true })
	d := newDevice(t, "", p.url, nil, func(c *Config) {
		c.Heartbeat, c.PongWait = 20*time.Millisecond, 50*time.Millisecond
	})
	d.start()
	pc := p.nextConn(t)
	select {
	case <-pc.pings:
	case <-time.After(waitLimit):
		t.Fatal("no ping")
	}
	// No pong, no frame: the agent gives up on the connection and dials
	// again.
	p.nextConn(t)
	if st := d.agent.Link().Stats(); st.LastDisconnect != "heartbeat timeout" {
		t.Fatalf("a silent connection ended with %q", st.LastDisconnect)
	}
}

// TestUnstoredBurstEndsSessionWithoutAck: when the device cannot store a
// burst it must not ack it, and must end the session, because the server
// resends unacked messages only in a new session.
func TestUnstoredBurstEndsSessionWithoutAck(t *testing.T) {
	_, d, pc := onlineWithApp(t, nil)
	d.waitConnected(t)
	if err := d.store.Close(); err != nil { // nothing can be stored from now on
		t.Fatal(err)
	}
	pc.message("m1", app, sender, 3600)
	timeout := time.After(waitLimit)
	for {
		select {
		case f := <-pc.frames:
			if f.Type == wire.TypeAck {
				t.Fatal("the agent acked a message it could not store")
			}
		case <-pc.done:
			return
		case <-timeout:
			t.Fatal("the session stayed open after a burst could not be stored")
		}
	}
}

// heldListener blocks in its first Deliver until released, and records the
// order of its deliveries against the test's own events.
type heldListener struct {
	listener
	hold      chan struct{} // closed to release the first Deliver
	once      sync.Once
	entered   chan struct{}
	mu        sync.Mutex
	seq       *atomic.Int64
	delivered map[string]int64
}

func (h *heldListener) Deliver(m ipc.Message) {
	h.once.Do(func() {
		close(h.entered)
		<-h.hold
	})
	h.mu.Lock()
	h.delivered[m.ID] = h.seq.Add(1)
	h.mu.Unlock()
}

// TestAckDuringDeliveryIsNeverFollowedByThatMessage: an app acks a message
// (from another connection) while a new listener's delivery round, which
// read the message before the ack, is under way. The message may come
// before the ack returns, never after.
func TestAckDuringDeliveryIsNeverFollowedByThatMessage(t *testing.T) {
	_, d, pc := onlineWithApp(t, nil)
	pc.message("x", app, sender, 3600)
	pc.message("y", app, sender, 3600)
	pc.waitAcked(t, 2)
	first, _ := listen(t, d.agent, alice, app)
	first.nextMessage(t)
	first.nextMessage(t)

	var seq atomic.Int64
	h := &heldListener{listener: *newListener(), hold: make(chan struct{}), entered: make(chan struct{}), seq: &seq, delivered: map[string]int64{}}
	cancel, err := d.agent.Listen(bg, alice, app, h) // replaces the first; redelivers x and y
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cancel)
	<-h.entered // the round has read x and y and is handing over x

	acked := make(chan int64, 1)
	go func() {
		if err := d.agent.Ack(bg, alice, app, []string{"y"}); err != nil {
			t.Error(err)
		}
		acked <- seq.Add(1)
	}()
	// Give an ack that does not wait for the round every chance to finish
	// first; one that waits stays blocked until the release.
	var ackedAt int64
	select {
	case ackedAt = <-acked:
	case <-time.After(200 * time.Millisecond):
	}
	close(h.hold)
	if ackedAt == 0 {
		ackedAt = <-acked
	}
	// The round read both before the ack, so it hands over both.
	testwait.Until(t, "the round to finish", waitLimit, func() bool {
		h.mu.Lock()
		defer h.mu.Unlock()
		return len(h.delivered) == 2
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	if at, ok := h.delivered["y"]; ok && at > ackedAt {
		t.Fatalf("y was delivered (event %d) after its ack returned (event %d)", at, ackedAt)
	}
}
