// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"tether/internal/testwait"
	"tether/server/store"
	"tether/wire"
)

const app = "com.example.thermo"

// marker sends a message and expects it as the next frame: whatever was
// queued before it has been delivered by then, so nothing else is.
func marker(t *testing.T, ts *testServer, d *device, key, token string) {
	t.Helper()
	id := ts.sendOne(key, token, map[string]any{"data": map[string]string{"marker": "1"}, "time_to_live": 0})
	m := d.expectMessage()
	if m.ID != id {
		t.Fatalf("got message %s (%v), want only the marker %s", m.ID, m.Data, id)
	}
}

func TestHealthz(t *testing.T) {
	ts := startServer(t, nil)
	resp, err := http.Get(ts.base + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body := make([]byte, 10)
	n, _ := resp.Body.Read(body)
	if resp.StatusCode != 200 || string(body[:n]) != "ok" {
		t.Errorf("healthz: %d %q", resp.StatusCode, body[:n])
	}
	if !strings.Contains(ts.logs.String(), "msg=listening addr="+ts.Addr().String()) {
		t.Errorf("no listening line with the address in the log")
	}
}

func TestBadCredentials(t *testing.T) {
	ts := startServer(t, nil)
	good := ts.checkIn()
	for _, h := range []wire.Hello{
		{Version: 1, DeviceID: good.id, DeviceSecret: good.secret + "x"},
		{Version: 1, DeviceID: "0000000000000000", DeviceSecret: good.secret},
	} {
		d := &device{t: t, conn: ts.dial()}
		d.send("", h)
		d.expectError("", wire.CodeUnauthorized)
		if code := d.expectClosed(); code != websocket.ClosePolicyViolation {
			t.Errorf("close code %d", code)
		}
	}
	if strings.Contains(ts.logs.String(), good.secret) {
		t.Error("a device secret is in the log")
	}
}

func TestHandshakeErrors(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.HelloTimeout = 300 * time.Millisecond })

	// Without the subprotocol the upgrade is refused.
	_, resp, err := websocket.DefaultDialer.Dial("ws://"+ts.Addr().String()+wire.Path, nil)
	if err == nil || resp == nil || resp.StatusCode != http.StatusBadRequest {
		t.Errorf("dial without subprotocol: %v", err)
	}

	for _, first := range []string{`{"type":"register","body":{"app":"a","sender":"1"}}`, `garbage`, `{"type":"hello","body":{"version":0}}`} {
		d := &device{t: t, conn: ts.dial()}
		d.sendRaw([]byte(first))
		d.expectError("", wire.CodeBadFrame)
		if code := d.expectClosed(); code != websocket.CloseProtocolError {
			t.Errorf("%s: close code %d", first, code)
		}
	}

	// A connection that never says hello is closed.
	d := &device{t: t, conn: ts.dial()}
	if _, err := d.read(); err == nil {
		t.Error("silent connection got a frame")
	}
}

func TestDeliverAckRedeliver(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)

	var ids []string
	for i := range 3 {
		ids = append(ids, ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"n": string(rune('a' + i))}, "time_to_live": 3600}))
	}
	for i := range 3 {
		m := d.expectMessage()
		if m.ID != ids[i] || m.Token != token || m.App != app || m.From != snd.ID || m.Data["n"] != string(rune('a'+i)) {
			t.Fatalf("message %d: %+v", i, m)
		}
		if m.TTL != 3600 || m.SentTime <= 0 {
			t.Errorf("ttl %d sent_time %d", m.TTL, m.SentTime)
		}
	}
	d.ack(ids[0])
	waitPending(t, ts, d.id, 2)
	d.conn.Close()

	// The unacked ones come again, in order, and nothing else.
	d2 := ts.reconnect(d)
	for _, want := range ids[1:] {
		if m := d2.expectMessage(); m.ID != want {
			t.Fatalf("redelivered %s, want %s", m.ID, want)
		}
	}
	marker(t, ts, d2, snd.ServerKey, token)
	d2.ack(ids[1:]...)
	waitPending(t, ts, d.id, 0)
	d2.conn.Close()

	d3 := ts.reconnect(d)
	marker(t, ts, d3, snd.ServerKey, token)
}

func TestCollapseKeyReplaces(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.conn.Close()

	ts.sendOne(snd.ServerKey, token, map[string]any{"collapse_key": "temp", "data": map[string]string{"t": "20"}})
	plain := ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"hello": "x"}})
	latest := ts.sendOne(snd.ServerKey, token, map[string]any{"collapse_key": "temp", "data": map[string]string{"t": "21"}})
	other := ts.sendOne(snd.ServerKey, token, map[string]any{"collapse_key": "humidity", "data": map[string]string{"h": "40"}})

	d = ts.reconnect(d)
	var got []string
	for range 3 {
		got = append(got, d.expectMessage().ID)
	}
	if want := []string{plain, latest, other}; !slices.Equal(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}
	marker(t, ts, d, snd.ServerKey, token)
}

func TestTTLExpiry(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.conn.Close()

	ts.sendOne(snd.ServerKey, token, map[string]any{"time_to_live": 60, "data": map[string]string{"short": "1"}})
	long := ts.sendOne(snd.ServerKey, token, map[string]any{"time_to_live": 100, "data": map[string]string{"long": "1"}})
	ts.clock.Advance(61 * time.Second)

	d = ts.reconnect(d)
	m := d.expectMessage()
	if m.ID != long || m.TTL != 39 {
		t.Errorf("got %s with ttl %d, want %s with 39 s left", m.ID, m.TTL, long)
	}
	marker(t, ts, d, snd.ServerKey, token)

	// The sweep removes what expired, and only that. A store that expires
	// records by itself (JetStream) drops them at the queue's next change,
	// and Pending may show them until then: the session skips them.
	sw, sweeps := ts.store.(store.Sweeper)
	if sweeps {
		if _, n, err := sw.SweepExpired(context.Background(), ts.now()); err != nil || n != 1 {
			t.Errorf("sweep removed %d, %v; want 1", n, err)
		}
	}
	left, _, err := ts.store.Pending(context.Background(), d.id, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var live []string
	for _, m := range left {
		if m.Expiry.After(ts.now()) {
			live = append(live, m.ID)
		}
	}
	if !slices.Equal(live, []string{long}) || sweeps && len(left) != 1 {
		t.Errorf("left %v", left)
	}
}

func TestTTLZeroIsNowOrNever(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)

	// Connected: delivered at once with ttl 0, and never stored.
	now := ts.sendOne(snd.ServerKey, token, map[string]any{"time_to_live": 0, "data": map[string]string{"x": "1"}})
	if m := d.expectMessage(); m.ID != now || m.TTL != 0 {
		t.Errorf("got %+v", m)
	}
	d.conn.Close()
	testwait.Until(t, "session gone", 10*time.Second, func() bool { return ts.hub.session(d.id) == nil })

	// Offline: accepted as on GCM, but dropped rather than stored.
	ts.sendOne(snd.ServerKey, token, map[string]any{"time_to_live": 0, "data": map[string]string{"x": "2"}})
	if left, _, err := ts.store.Pending(context.Background(), d.id, 0, 0, nil); err != nil || len(left) != 0 {
		t.Fatalf("stored %d ttl-0 messages, %v", len(left), err)
	}
	d = ts.reconnect(d)
	marker(t, ts, d, snd.ServerKey, token)
}

func TestDryRunNotDelivered(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	ts.sendOne(snd.ServerKey, token, map[string]any{"dry_run": true})
	marker(t, ts, d, snd.ServerKey, token)
	if left, _, _ := ts.store.Pending(context.Background(), d.id, 0, 0, nil); len(left) != 0 {
		t.Errorf("dry run stored %d messages", len(left))
	}
}

func TestQueueSurvivesRestart(t *testing.T) {
	dir := t.TempDir()
	ts := startServerIn(t, dir, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.conn.Close()
	id := ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"x": "1"}})
	ts.stop()

	ts2 := startServerIn(t, dir, nil)
	d2 := ts2.reconnect(d)
	if m := d2.expectMessage(); m.ID != id || m.Data["x"] != "1" {
		t.Errorf("after restart got %+v", m)
	}
	// The sender and the registration survived too.
	ts2.sendOne(snd.ServerKey, token, nil)
}

func TestSessionReplaced(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	first := ts.checkIn()
	token := first.register(app, snd.ID)
	second := ts.reconnect(first)
	if code := first.expectClosed(); code != closeReplaced {
		t.Errorf("old session closed with %d", code)
	}
	marker(t, ts, second, snd.ServerKey, token)
}

func TestRegisterUnregister(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	if len(token) < 64 || strings.Trim(token, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_") != "" {
		t.Errorf("token %q is not long URL-safe text", token)
	}
	if again := d.register(app, snd.ID); again != token {
		t.Error("registering again gave another token")
	}
	if other := d.register("com.example.other", snd.ID); other == token {
		t.Error("another app got the same token")
	}

	d.send("7", wire.Register{App: app, Sender: "123456789012"})
	d.expectError("7", wire.CodeNotRegistered)

	d.send("8", wire.Unregister{App: app, Sender: snd.ID})
	var u wire.Unregistered
	d.expect(wire.TypeUnregistered, "8", &u)
	if u.App != app || u.Sender != snd.ID {
		t.Errorf("unregistered %+v", u)
	}
	resp := ts.send(snd.ServerKey, map[string]any{"to": token})
	if resp.Results[0].Error != errNotRegistered {
		t.Errorf("send after unregister: %+v", resp)
	}
	// Repeating it is harmless.
	d.send("9", wire.Unregister{App: app, Sender: snd.ID})
	d.expect(wire.TypeUnregistered, "9", &u)

	if fresh := d.register(app, snd.ID); fresh == token {
		t.Error("registering after unregister gave the old token")
	}
}

func TestBadFramesKeepSession(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	bystander := ts.checkIn()
	bystanderToken := bystander.register(app, snd.ID)

	d.sendRaw([]byte("not json"))
	d.expectError("", wire.CodeBadFrame)
	d.sendRaw([]byte(`{"ref":"r0"}`))
	d.expectError("", wire.CodeBadFrame)
	d.sendRaw([]byte(`{"type":"teleport","ref":"r1","body":{}}`))
	d.expectError("r1", wire.CodeUnknownType)
	d.sendRaw([]byte(`{"type":"register","ref":"r2","body":{"app":"a","sender":"not-digits"}}`))
	d.expectError("r2", wire.CodeBadFrame)
	d.sendRaw([]byte(`{"type":"register","ref":"r3","body":"a string"}`))
	d.expectError("r3", wire.CodeBadFrame)
	d.sendRaw([]byte(`{"type":"ack","ref":"r4","body":{"ids":[]}}`))
	d.expectError("r4", wire.CodeBadFrame)
	d.sendRaw([]byte(`{"type":"upstream","ref":"r5","body":{"app":"a","to":"1","id":"x","ttl":-1}}`))
	d.expectError("r5", wire.CodeBadFrame)
	d.send("r6", wire.Hello{Version: 1})
	d.expectError("r6", wire.CodeInvalid)
	d.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := d.conn.WriteMessage(websocket.BinaryMessage, []byte{0xff, 0x00, 0x01}); err != nil {
		t.Fatal(err)
	}
	d.expectError("", wire.CodeBadFrame)
	// An error frame from the device is never answered: the next frame the
	// device reads answers its register below.
	d.send("r7", wire.Error{Code: wire.CodeBadFrame, Message: "the device did not like a frame"})

	// The session still works, and the other one never noticed.
	token := d.register(app, snd.ID)
	marker(t, ts, d, snd.ServerKey, token)
	marker(t, ts, bystander, snd.ServerKey, bystanderToken)
}

func TestOversizedFrameClosesOnlyThatSession(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	bystander := ts.checkIn()
	token := bystander.register(app, snd.ID)
	d.sendRaw([]byte(`{"type":"ack","body":{"ids":["` + strings.Repeat("x", wire.MaxFrameSize) + `"]}}`))
	if code := d.expectClosed(); code != websocket.CloseMessageTooBig {
		t.Errorf("close code %d", code)
	}
	marker(t, ts, bystander, snd.ServerKey, token)
}

func TestWindow(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Window = 2 })
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	var ids []string
	for range 4 {
		ids = append(ids, ts.sendOne(snd.ServerKey, token, nil))
	}
	first, second := d.expectMessage(), d.expectMessage()
	if first.ID != ids[0] || second.ID != ids[1] {
		t.Fatalf("got %s %s", first.ID, second.ID)
	}
	// The window is full: a ttl-0 message, which bypasses it, comes next.
	marker(t, ts, d, snd.ServerKey, token)
	d.ack(ids[0])
	if m := d.expectMessage(); m.ID != ids[2] {
		t.Fatalf("after one ack got %s, want %s", m.ID, ids[2])
	}
	marker(t, ts, d, snd.ServerKey, token)
	d.ack(ids[1], ids[2])
	if m := d.expectMessage(); m.ID != ids[3] {
		t.Fatalf("got %s, want %s", m.ID, ids[3])
	}
}

// TestHeartbeat runs in a synctest bubble: its seconds of silence pass on
// the bubble's clock.
func TestHeartbeat(t *testing.T) { synctest.Test(t, testHeartbeat) }

func testHeartbeat(t *testing.T) {
	ts := startServerInBubble(t, func(c *Config) { c.HeartbeatGrace = 200 * time.Millisecond })

	// A device that announces 1 s and never pings is closed.
	silent := ts.hello(wire.Hello{Heartbeat: 1})
	if silent.welcome.Heartbeat != 1 {
		t.Errorf("welcome heartbeat %d", silent.welcome.Heartbeat)
	}
	silent.expectServerClosed()

	// One that pings stays, and gets its pongs.
	live := ts.hello(wire.Hello{Heartbeat: 1})
	pongs := make(chan struct{}, 10)
	live.conn.SetPongHandler(func(string) error { pongs <- struct{}{}; return nil })
	readErr := make(chan error, 1)
	go func() {
		_, err := live.read()
		readErr <- err
	}()
	for range 5 {
		live.conn.WriteControl(websocket.PingMessage, []byte("hb"), time.Now().Add(time.Second))
		time.Sleep(400 * time.Millisecond)
	}
	live.send("reg", wire.Register{App: app, Sender: ts.addSender("").ID})
	if err := <-readErr; err != nil {
		t.Fatalf("pinging session: %v", err)
	}
	if len(pongs) < 4 {
		t.Errorf("%d pongs for 5 pings", len(pongs))
	}
}

func TestShutdownSendsCloseFrame(t *testing.T) {
	ts := startServer(t, nil)
	d := ts.checkIn()
	done := make(chan int, 1)
	go func() {
		for {
			_, err := d.read()
			var ce *websocket.CloseError
			if errors.As(err, &ce) {
				done <- ce.Code
				return
			}
			if err != nil {
				done <- -1
				return
			}
		}
	}()
	ts.stop()
	if code := <-done; code != websocket.CloseGoingAway {
		t.Errorf("close code %d, want %d", code, websocket.CloseGoingAway)
	}
}

func TestStoreFullAnswers503(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxStoreSize = 256 << 10 })
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.conn.Close()
	big := strings.Repeat("x", 4000)
	var accepted []string
	for i := 0; ; i++ {
		if i == 1000 {
			t.Fatal("a 256 KiB store took 4 MB")
		}
		ans := ts.post("/gcm/send", snd.ServerKey, "application/json",
			`{"registration_ids": ["`+token+`", "nope"], "data": {"v": "`+big+`"}}`)
		if ans.status == http.StatusOK {
			var r struct {
				Results []struct {
					MessageID string `json:"message_id"`
				} `json:"results"`
			}
			if err := json.Unmarshal([]byte(ans.body), &r); err != nil || len(r.Results) != 2 || r.Results[0].MessageID == "" {
				t.Fatalf("accepted send answered %s", ans.body)
			}
			accepted = append(accepted, r.Results[0].MessageID)
			continue
		}
		if ans.status != http.StatusServiceUnavailable || ans.header.Get("Retry-After") == "" {
			t.Fatalf("full store: %d Retry-After %q", ans.status, ans.header.Get("Retry-After"))
		}
		checkResponse(t, httpAnswer{200, ans.header, ans.body}, []string{errUnavailable, errInvalidRegistration})
		break
	}
	// Nothing acknowledged was lost: every accepted message is in the queue.
	pending, _, err := ts.store.Pending(context.Background(), d.id, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	queued := map[string]bool{}
	for _, m := range pending {
		queued[m.ID] = true
	}
	for _, id := range accepted {
		if !queued[id] {
			t.Fatalf("message %s was accepted before the store filled up and is not in the queue (%d of %d queued)", id, len(pending), len(accepted))
		}
	}
	if len(accepted) == 0 {
		t.Fatal("the store was full before the first message: the test proved nothing")
	}
}

// waitPending waits until the device's queue holds n messages: acks have
// no answer, so the store is where to see them handled.
func waitPending(t *testing.T, ts *testServer, device string, n int) {
	t.Helper()
	var left []store.Message
	testwait.Until(t, "acks", 10*time.Second, func() bool {
		var err error
		left, _, err = ts.store.Pending(context.Background(), device, 0, 0, nil)
		return err == nil && len(left) == n
	})
}

// TestSlowClientsAreCut: a client that sends its request headers, or its
// hello, too slowly loses its connection; the server serves others.
func TestSlowClientsAreCut(t *testing.T) {
	ts := startServer(t, func(c *Config) {
		c.HeaderTimeout, c.HelloTimeout = 300*time.Millisecond, 300*time.Millisecond
	})
	for _, tt := range []struct {
		name  string
		start string // what the client sends before it stalls
	}{
		{"headers of a send", "POST /gcm/send HTTP/1.1\r\nHost: tether\r\nAuthorization: key=x\r\n"},
		{"headers of an upgrade", "GET " + wire.Path + " HTTP/1.1\r\nHost: tether\r\n"},
		{"nothing at all", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			conn, err := net.Dial("tcp", ts.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			if _, err := io.WriteString(conn, tt.start); err != nil {
				t.Fatal(err)
			}
			conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			if _, err := io.Copy(io.Discard, conn); err != nil {
				t.Fatalf("the server kept the stalled connection: %v", err)
			}
		})
	}
	// A device that upgrades and never says hello is cut too.
	d := &device{t: t, conn: ts.dial()}
	if code := d.expectClosed(); code == 0 {
		t.Error("a device without a hello was not closed")
	}
	if a := ts.post("/gcm/send", "x", "application/json", `{}`); a.status != http.StatusUnauthorized {
		t.Errorf("after the slow clients: status %d", a.status)
	}
}

// failingReads fails the store's reads of queues and notices while fail
// is above zero, counting down.
type failingReads struct {
	store.Backend
	fail atomic.Int32
}

var errReadFailed = errors.New("read failed on purpose")

func (f *failingReads) Pending(ctx context.Context, device string, after uint64, limit int, skip func(string) bool) ([]store.Message, uint64, error) {
	if f.fail.Add(-1) >= 0 {
		return nil, after, errReadFailed
	}
	return f.Backend.Pending(ctx, device, after, limit, skip)
}

func (f *failingReads) Notices(ctx context.Context, device string) ([]store.Notice, error) {
	if f.fail.Add(-1) >= 0 {
		return nil, errReadFailed
	}
	return f.Backend.Notices(ctx, device)
}

// A session whose reads of the store fail looks again by itself: the
// messages waiting for a device that sends nothing still come.
func TestSessionRetriesFailedRead(t *testing.T) {
	var reads *failingReads
	ts := startServer(t, func(c *Config) {
		c.wrapStore = func(b store.Backend) store.Backend {
			reads = &failingReads{Backend: b}
			return reads
		}
	})
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.conn.Close()
	id := ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"k": "v"}})

	reads.fail.Store(3) // the notices, the queue, and the notices once more
	d = ts.reconnect(d)
	if m := d.expectMessage(); m.ID != id {
		t.Fatalf("got message %s, want %s", m.ID, id)
	}
	if n := reads.fail.Load(); n > 0 {
		t.Errorf("%d reads still to fail: the message came without the failed reads", n)
	}
	if !strings.Contains(ts.logs.String(), errReadFailed.Error()) {
		t.Errorf("the failed read is not logged")
	}
}
