// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"tether/internal/logtest"
	"tether/server/store"
	"tether/wire"
)

// testClock follows the real clock plus an offset that tests advance.
type testClock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *testClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *testClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.offset += d
	c.mu.Unlock()
}

type testServer struct {
	*Server
	t     testing.TB
	dir   string
	cfg   Config
	clock *testClock
	base  string // http://host:port
	// client, when set, is the HTTP client of post: for a server over TLS
	// or over pipes.
	client *http.Client
	// dialContext, when set, is how devices connect, and xmppDialContext
	// how XMPP clients do: for a server over pipes.
	dialContext     func(ctx context.Context, network, addr string) (net.Conn, error)
	xmppDialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	logs            *logtest.Buffer
	stop            func()
}

// testEnrollKey is the fleet enrollment key of the test servers.
const testEnrollKey = "test-fleet-enrollment-key-0123456789"

// startServer runs a server on 127.0.0.1:0 in a fresh data directory until
// the test ends; mod may change its Config.
func startServer(t testing.TB, mod func(*Config)) *testServer {
	t.Helper()
	return startServerIn(t, t.TempDir(), mod)
}

func startServerIn(t testing.TB, dir string, mod func(*Config)) *testServer {
	t.Helper()
	return startTestServer(t, dir, mod, nil)
}

// startTestServer runs a server in dir until the test ends: on
// 127.0.0.1:0, or, with pipes, on pipes (and its admin socket on pipes of
// its own), so that it runs inside a synctest bubble.
func startTestServer(t testing.TB, dir string, mod func(*Config), pipes *pipeListener) *testServer {
	t.Helper()
	logs := &logtest.Buffer{}
	clock := &testClock{}
	cfg := Config{
		DataDir:   dir,
		Listen:    "127.0.0.1:0",
		EnrollKey: testEnrollKey,
		Logger:    slog.New(slog.NewTextHandler(io.MultiWriter(logs, t.Output()), &slog.HandlerOptions{Level: slog.LevelDebug})),
		Now:       clock.Now,
		RetryMin:  10 * time.Millisecond,
		RetryMax:  100 * time.Millisecond,
	}
	if os.Getenv(onClusterEnv) != "" && pipes == nil {
		// The state of the data directory is a prefix on the shared
		// cluster: a restart on the same directory finds it again.
		cfg.NATS = clusterConfig(t, "d"+fmt.Sprintf("%x", sha256.Sum256([]byte(dir)))[:12])
	}
	if mod != nil {
		mod(&cfg)
	}
	srv, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if pipes == nil {
		err = srv.Listen()
	} else {
		srv.ln, srv.adminLn = srv.clientListener(pipes, srv.conns), newPipeListener()
	}
	var xmppPipes *pipeListener
	if pipes != nil && cfg.XMPPListen != "" {
		xmppPipes = newPipeListener()
		srv.xmppLn = srv.clientListener(xmppPipes, srv.xmppConns)
	}
	if err != nil {
		srv.Close()
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	ts := &testServer{Server: srv, t: t, dir: dir, cfg: cfg, clock: clock, base: "http://" + srv.Addr().String(), logs: logs}
	if pipes != nil {
		transport := &http.Transport{DialContext: pipes.DialContext}
		t.Cleanup(transport.CloseIdleConnections)
		ts.client, ts.dialContext = &http.Client{Transport: transport}, pipes.DialContext
	}
	if xmppPipes != nil {
		ts.xmppDialContext = xmppPipes.DialContext
	}
	var once sync.Once
	ts.stop = func() {
		once.Do(func() {
			cancel()
			if err := <-served; err != nil {
				t.Errorf("Serve: %v", err)
			}
			if err := srv.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
		})
	}
	t.Cleanup(ts.stop)
	return ts
}

// addSender creates a sender in the running server's store.
func (ts *testServer) addSender(webhook string) NewSender {
	ts.t.Helper()
	snd, err := addSender(context.Background(), ts.store, "test sender", webhook, ts.now())
	if err != nil {
		ts.t.Fatal(err)
	}
	return snd
}

type httpAnswer struct {
	status int
	header http.Header
	body   string
}

func (ts *testServer) post(path, key, contentType, body string) httpAnswer {
	ts.t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.base+path, strings.NewReader(body))
	if err != nil {
		ts.t.Fatal(err)
	}
	if key != "" {
		req.Header.Set("Authorization", "key="+key)
	}
	req.Header.Set("Content-Type", contentType)
	return ts.do(req)
}

// do makes a request of the server and reads the whole answer.
func (ts *testServer) do(req *http.Request) httpAnswer {
	ts.t.Helper()
	client := ts.client
	if client == nil {
		client = http.DefaultClient
	}
	resp, err := client.Do(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		ts.t.Fatal(err)
	}
	return httpAnswer{resp.StatusCode, resp.Header, string(b)}
}

// send posts a JSON request to /gcm/send and decodes a 200 answer.
func (ts *testServer) send(key string, req any) sendResponse {
	ts.t.Helper()
	body, err := json.Marshal(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	ans := ts.post("/gcm/send", key, "application/json", string(body))
	if ans.status != http.StatusOK {
		ts.t.Fatalf("send: %d %s", ans.status, ans.body)
	}
	var resp sendResponse
	if err := json.Unmarshal([]byte(ans.body), &resp); err != nil {
		ts.t.Fatalf("send answer %q: %v", ans.body, err)
	}
	return resp
}

// sendOne sends data to one token and returns the message ID.
func (ts *testServer) sendOne(key, token string, fields map[string]any) string {
	ts.t.Helper()
	req := map[string]any{"to": token}
	for k, v := range fields {
		req[k] = v
	}
	resp := ts.send(key, req)
	if resp.Success != 1 || resp.Results[0].MessageID == "" {
		ts.t.Fatalf("send to one token: %+v", resp)
	}
	return resp.Results[0].MessageID
}

// device is a test agent: a real WebSocket client speaking package wire.
type device struct {
	t       testing.TB
	conn    *websocket.Conn
	id      string
	secret  string
	welcome wire.Welcome
	// codec speaks the version of the session's welcome, once read.
	codec *wire.Codec
}

func (ts *testServer) dial() *websocket.Conn {
	ts.t.Helper()
	dialer := websocket.Dialer{Subprotocols: []string{wire.Subprotocol}, HandshakeTimeout: 5 * time.Second, NetDialContext: ts.dialContext}
	conn, resp, err := dialer.Dial("ws://"+ts.Addr().String()+wire.Path, nil)
	if err != nil {
		ts.t.Fatalf("dial: %v", err)
	}
	if resp.Header.Get("Sec-WebSocket-Protocol") != wire.Subprotocol {
		ts.t.Fatalf("subprotocol %q", resp.Header.Get("Sec-WebSocket-Protocol"))
	}
	ts.t.Cleanup(func() { conn.Close() })
	return conn
}

// hello opens a session and returns the device after its welcome.
func (ts *testServer) hello(h wire.Hello) *device {
	ts.t.Helper()
	d := &device{t: ts.t, conn: ts.dial()}
	if h.Version == 0 {
		h.Version = wire.Version
	}
	if h.DeviceID == "" && h.EnrollKey == "" {
		h.EnrollKey = ts.cfg.EnrollKey
	}
	d.send("", h)
	d.expect(wire.TypeWelcome, "", &d.welcome)
	d.id, d.secret = d.welcome.DeviceID, h.DeviceSecret
	if d.welcome.DeviceSecret != "" {
		d.secret = d.welcome.DeviceSecret
	}
	return d
}

func (ts *testServer) checkIn() *device {
	ts.t.Helper()
	return ts.hello(wire.Hello{EnrollKey: ts.cfg.EnrollKey})
}

// reconnect opens a new session with d's credentials.
func (ts *testServer) reconnect(d *device) *device {
	ts.t.Helper()
	return ts.hello(wire.Hello{DeviceID: d.id, DeviceSecret: d.secret})
}

func (d *device) send(ref string, b wire.Body) {
	d.t.Helper()
	encode := wire.Encode
	if d.codec != nil {
		encode = d.codec.Encode
	}
	frame, err := encode(ref, b)
	if err != nil {
		d.t.Fatal(err)
	}
	d.sendRaw(frame)
}

func (d *device) sendRaw(frame []byte) {
	d.t.Helper()
	d.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if err := d.conn.WriteMessage(wire.MessageType(frame), frame); err != nil {
		d.t.Fatalf("write: %v", err)
	}
}

func (d *device) read() (wire.Frame, error) {
	d.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, data, err := d.conn.ReadMessage()
	if err != nil {
		return wire.Frame{}, err
	}
	if d.codec != nil {
		return d.codec.Decode(data)
	}
	f, err := wire.Decode(data)
	var w wire.Welcome
	if err == nil && f.Type == wire.TypeWelcome && f.Decode(&w) == nil {
		d.codec, err = wire.NewCodec(w.Version)
	}
	return f, err
}

// expect reads the next frame, which must be of type typ with ref, and
// decodes its body into b.
func (d *device) expect(typ wire.Type, ref string, b wire.Body) {
	d.t.Helper()
	f, err := d.read()
	if err != nil {
		d.t.Fatalf("waiting for %s: %v", typ, err)
	}
	if f.Type != typ || f.Ref != ref {
		d.t.Fatalf("got %s frame ref %q (%s), want %s ref %q", f.Type, f.Ref, f.Body, typ, ref)
	}
	if err := f.Decode(b); err != nil {
		d.t.Fatalf("decode %s: %v", typ, err)
	}
}

func (d *device) expectError(ref, code string) wire.Error {
	d.t.Helper()
	var e wire.Error
	d.expect(wire.TypeError, ref, &e)
	if e.Code != code {
		d.t.Fatalf("error %s, want code %s", e, code)
	}
	return e
}

func (d *device) expectMessage() wire.Message {
	d.t.Helper()
	var m wire.Message
	d.expect(wire.TypeMessage, "", &m)
	return m
}

// expectClosed reads until the server closes the connection and returns
// the close code.
func (d *device) expectClosed() int {
	d.t.Helper()
	for {
		_, err := d.read()
		var ce *websocket.CloseError
		if errors.As(err, &ce) {
			return ce.Code
		}
		if err != nil && !errors.Is(err, wire.ErrBadFrame) {
			d.t.Fatalf("waiting for close: %v", err)
		}
	}
}

func (d *device) register(app, sender string) string {
	d.t.Helper()
	d.send("reg-"+app, wire.Register{App: app, Sender: sender})
	var r wire.Registered
	d.expect(wire.TypeRegistered, "reg-"+app, &r)
	if r.App != app || r.Sender != sender || r.Token == "" {
		d.t.Fatalf("registered %+v", r)
	}
	return r.Token
}

func (d *device) ack(ids ...string) {
	d.t.Helper()
	d.send("", wire.Ack{IDs: ids})
}

// subscribe subscribes the device's app to a topic and waits for the answer.
func (d *device) subscribe(app, sender, topic string) {
	d.t.Helper()
	ref := "sub-" + app + "-" + topic
	d.send(ref, wire.Subscribe{App: app, Sender: sender, Topic: topic})
	var s wire.Subscribed
	d.expect(wire.TypeSubscribed, ref, &s)
	if s.App != app || s.Sender != sender || s.Topic != topic {
		d.t.Fatalf("subscribed %+v", s)
	}
}

// expectDeleted reads the next frame, which must be a deleted_messages
// notice whose ref is its ID.
func (d *device) expectDeleted() wire.DeletedMessages {
	d.t.Helper()
	f, err := d.read()
	if err != nil {
		d.t.Fatalf("waiting for deleted_messages: %v", err)
	}
	var n wire.DeletedMessages
	if f.Type != wire.TypeDeletedMessages {
		d.t.Fatalf("got %s frame (%s), want deleted_messages", f.Type, f.Body)
	}
	if err := f.Decode(&n); err != nil || f.Ref != n.ID {
		d.t.Fatalf("deleted_messages %s ref %q: %v", f.Body, f.Ref, err)
	}
	return n
}

// expectRefresh reads the next frame, which must be a token_refresh
// notice whose ref is its ID.
func (d *device) expectRefresh() wire.TokenRefresh {
	d.t.Helper()
	f, err := d.read()
	if err != nil {
		d.t.Fatalf("waiting for token_refresh: %v", err)
	}
	var n wire.TokenRefresh
	if f.Type != wire.TypeTokenRefresh {
		d.t.Fatalf("got %s frame (%s), want token_refresh", f.Type, f.Body)
	}
	if err := f.Decode(&n); err != nil || f.Ref != n.ID {
		d.t.Fatalf("token_refresh %s ref %q: %v", f.Body, f.Ref, err)
	}
	return n
}

// topicAnswer is the answer to a topic or condition send.
type topicAnswer struct {
	MessageID json.Number `json:"message_id"`
	Error     string      `json:"error"`
}

// sendTopic posts a JSON topic or condition send and decodes the answer,
// which must have exactly one of message_id and error.
func (ts *testServer) sendTopic(key string, req any) (topicAnswer, httpAnswer) {
	ts.t.Helper()
	body, err := json.Marshal(req)
	if err != nil {
		ts.t.Fatal(err)
	}
	ans := ts.post("/gcm/send", key, "application/json", string(body))
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(ans.body), &raw); err != nil || len(raw) != 1 {
		ts.t.Fatalf("topic send answered %d %q, want one of message_id and error", ans.status, ans.body)
	}
	var a topicAnswer
	dec := json.NewDecoder(strings.NewReader(ans.body))
	dec.UseNumber()
	if err := dec.Decode(&a); err != nil {
		ts.t.Fatalf("topic send answer %q: %v", ans.body, err)
	}
	return a, ans
}

// fanOutWaiter collects the topic messages a server has fanned out.
type fanOutWaiter chan fannedOut

type fannedOut struct {
	id     string
	copies int
}

// watchFanOut makes mod's server report each finished fan-out to the
// returned waiter.
func watchFanOut(c *Config) fanOutWaiter {
	w := make(fanOutWaiter, 100)
	c.fanOutDone = func(tm store.TopicMessage, copies int) { w <- fannedOut{tm.ID, copies} }
	return w
}

// wait waits for the fan-out of message id and returns its copies.
func (w fanOutWaiter) wait(t testing.TB, id string) int {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case f := <-w:
			if f.id == id {
				return f.copies
			}
		case <-timeout:
			t.Fatalf("topic message %s not fanned out within 30 s", id)
		}
	}
}

// helloMode opens a session of d's device in a power mode.
func (ts *testServer) helloMode(d *device, mode string) *device {
	ts.t.Helper()
	return ts.hello(wire.Hello{DeviceID: d.id, DeviceSecret: d.secret, Mode: mode})
}

// probe opens a probe connection with d's credentials.
func (ts *testServer) probe(d *device, heartbeat int) *device {
	ts.t.Helper()
	return ts.hello(wire.Hello{DeviceID: d.id, DeviceSecret: d.secret, Heartbeat: heartbeat, Probe: true})
}

// state reports a power mode and heartbeat; the frame has no answer.
func (d *device) state(mode string, heartbeat int) {
	d.t.Helper()
	d.send("", wire.State{Mode: mode, Heartbeat: heartbeat})
}

// expectServerClosed reads until the connection ends and fails unless the
// server ended it (a close frame, or the connection dropped) before the
// device's own read deadline.
func (d *device) expectServerClosed() {
	d.t.Helper()
	for {
		_, err := d.read()
		if err == nil || errors.Is(err, wire.ErrBadFrame) {
			continue
		}
		if isTimeout(err) {
			d.t.Fatalf("the server kept the connection open: %v", err)
		}
		return
	}
}

// isTimeout reports whether err is a read or write deadline that passed.
func isTimeout(err error) bool {
	ne, ok := errors.AsType[net.Error](err)
	return ok && ne.Timeout()
}

// highMarker sends a high-priority message with time to live 0 and
// expects it as the next frame.
func highMarker(t *testing.T, ts *testServer, d *device, key, token string) {
	t.Helper()
	id := ts.sendOne(key, token, map[string]any{"data": map[string]string{"marker": "high"}, "time_to_live": 0, "priority": "high"})
	if m := d.expectMessage(); m.ID != id {
		t.Fatalf("got message %s (%v), want only the high-priority marker %s", m.ID, m.Data, id)
	}
}

// expectMessages reads the next messages, which must have these IDs in
// this order.
func (d *device) expectMessages(ids ...string) {
	d.t.Helper()
	for i, want := range ids {
		if m := d.expectMessage(); m.ID != want {
			d.t.Fatalf("message %d is %s (%v), want %s", i, m.ID, m.Data, want)
		}
	}
}

// manualTimers replaces the timers of held messages with ones the test
// fires.
type manualTimers chan *manualTimer

type manualTimer struct {
	d       time.Duration
	fire    func()
	stopped atomic.Bool
}

func (m *manualTimer) Stop() bool { return !m.stopped.Swap(true) }

func useManualTimers(c *Config) manualTimers {
	ch := make(manualTimers, 100)
	c.afterFunc = func(d time.Duration, f func()) stopper {
		t := &manualTimer{d: d, fire: f}
		ch <- t
		return t
	}
	return ch
}

func (ch manualTimers) next(t *testing.T) *manualTimer {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(10 * time.Second):
		t.Fatal("no timer armed for held messages")
		return nil
	}
}
