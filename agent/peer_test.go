// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"tether/internal/testwait"
	"tether/ipc"
	"tether/store"
	"tether/wire"
)

// waitLimit bounds every wait in these tests; reaching it is a failure,
// not a measurement.
const waitLimit = 15 * time.Second

// peer is a small connection server speaking the wire protocol: it checks
// devices in, answers registrations, and lets the test see every frame the
// agent sends and send any frame it likes. It may listen on several
// addresses (addNode), the nodes of one cluster: they share the devices.
type peer struct {
	t   *testing.T
	mux *http.ServeMux
	srv *httptest.Server // the first node
	url string

	conns chan *peerConn

	mu       sync.Mutex
	devices  map[string]string // device ID → secret
	checkins int
	// ackUpstream makes the peer answer each upstream frame with an ack.
	ackUpstream bool
	// gate, when set, holds each welcome until it is closed.
	gate chan struct{}
	// welcomeHeartbeat is announced in each welcome, in seconds.
	welcomeHeartbeat int
	// deaf makes the peer ignore pings.
	deaf bool
	// probes counts the probe connections.
	probes int
	// goAway, when set, answers hellos instead of a welcome, on every node
	// but the one it names.
	goAway *wire.GoAway
	// enrollKey, when set, is required for a check-in without a client
	// certificate.
	enrollKey string
	// clientAuth is asked of the agent by the TLS nodes added from then on.
	clientAuth tls.ClientAuthType
	// revoked devices are refused with CodeRevoked.
	revoked map[string]bool
	// tokens gives the token of a registration; peerToken's when nil.
	tokens func(device, app, sender string) string
	// registerGate, when set, holds each answer to a register until it
	// is closed; the peer reads on meanwhile.
	registerGate chan struct{}
	// hellos records every hello, probes and refused ones included, and
	// when it came.
	hellos []peerHello
	// version is the highest protocol version the peer speaks;
	// wire.Version when 0.
	version int
}

// peerHello is one hello as the peer received it.
type peerHello struct {
	hello wire.Hello
	at    time.Time
	// cert is the common name of the client certificate, if any.
	cert string
}

func (p *peer) helloLog() []peerHello {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Clone(p.hellos)
}

func newPeer(t *testing.T) *peer {
	p := &peer{t: t, mux: http.NewServeMux(), conns: make(chan *peerConn, 16), devices: map[string]string{}, welcomeHeartbeat: 600}
	p.mux.HandleFunc(wire.Path, p.serve)
	p.srv = p.addNode(nil, false)
	p.url = p.srv.URL // http://, which the agent turns into ws://
	return p
}

// addNode serves the peer on ln as well (a new listener on 127.0.0.1
// when nil), over TLS if asked; its URL is http:// or https://.
func (p *peer) addNode(ln net.Listener, useTLS bool) *httptest.Server {
	srv := httptest.NewUnstartedServer(p.mux)
	if ln != nil {
		srv.Listener.Close()
		srv.Listener = ln
	}
	if useTLS {
		srv.TLS = &tls.Config{ClientAuth: p.clientAuth}
		srv.StartTLS()
	} else {
		srv.Start()
	}
	p.t.Cleanup(srv.Close)
	return srv
}

func (p *peer) set(f func(p *peer)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	f(p)
}

func (p *peer) checkinCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.checkins
}

// peerConn is one agent connection as the peer sees it.
type peerConn struct {
	ws *websocket.Conn
	// node is the address the agent reached, host:port.
	node string
	// device is the ID the peer welcomed the connection as.
	device string
	hello  wire.Hello
	codec  *wire.Codec     // of the welcome's version
	frames chan wire.Frame // every frame the agent sent after hello
	out    chan []byte
	pings  chan struct{}
	done   chan struct{}
}

var upgrader = websocket.Upgrader{Subprotocols: []string{wire.Subprotocol}}

func (p *peer) serve(w http.ResponseWriter, r *http.Request) {
	ws, err := upgrader.Upgrade(w, r, nil)
	if err != nil {
		return
	}
	defer ws.Close()
	node := ws.LocalAddr().String()
	_, data, err := ws.ReadMessage()
	if err != nil {
		return
	}
	f, err := wire.Decode(data)
	var hello wire.Hello
	if err == nil {
		err = f.Decode(&hello)
	}
	if err != nil {
		p.t.Errorf("peer: bad hello: %v", err)
		return
	}
	p.mu.Lock()
	welcome := wire.Welcome{Version: wire.Negotiate(hello.Version)}
	if p.version != 0 {
		welcome.Version = min(welcome.Version, p.version)
	}
	ph := peerHello{hello: hello, at: time.Now()}
	if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 {
		ph.cert = r.TLS.PeerCertificates[0].Subject.CommonName
	}
	p.hellos = append(p.hellos, ph)
	welcome.Heartbeat = p.welcomeHeartbeat
	var refusal *wire.Error
	switch {
	case hello.DeviceID == "" && p.enrollKey != "" && hello.EnrollKey != p.enrollKey && ph.cert == "":
		refusal = &wire.Error{Code: wire.CodeUnauthorized, Message: "check-in needs the enrollment key"}
	case hello.DeviceID == "":
		p.checkins++
		welcome.DeviceID = fmt.Sprintf("dev-%d", p.checkins)
		welcome.DeviceSecret = fmt.Sprintf("secret-%d", p.checkins)
		p.devices[welcome.DeviceID] = welcome.DeviceSecret
	case p.revoked[hello.DeviceID]:
		refusal = &wire.Error{Code: wire.CodeRevoked, Message: "the device was revoked"}
	case p.devices[hello.DeviceID] != hello.DeviceSecret:
		refusal = &wire.Error{Code: wire.CodeUnauthorized, Message: "unknown device"}
	default:
		welcome.DeviceID = hello.DeviceID
	}
	if refusal != nil {
		p.mu.Unlock()
		frame, _ := wire.Encode("", *refusal)
		ws.WriteMessage(websocket.TextMessage, frame)
		return
	}
	gate, deaf, goAway := p.gate, p.deaf, p.goAway
	p.mu.Unlock()
	if goAway != nil && !strings.HasSuffix(goAway.Server, "//"+node) {
		frame, _ := wire.Encode("", *goAway)
		ws.WriteMessage(websocket.TextMessage, frame)
		return
	}
	if hello.Probe {
		// A probe: welcome it, answer its pings (gorilla's default), and
		// never count it as the device's connection.
		p.mu.Lock()
		p.probes++
		p.mu.Unlock()
		frame, _ := wire.Encode("", welcome)
		if ws.WriteMessage(websocket.TextMessage, frame) != nil {
			return
		}
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				return
			}
		}
	}

	codec, err := wire.NewCodec(welcome.Version)
	if err != nil {
		p.t.Errorf("peer: %v", err)
		return
	}
	pc := &peerConn{
		ws: ws, node: node, device: welcome.DeviceID, hello: hello, codec: codec,
		frames: make(chan wire.Frame, 1024),
		out:    make(chan []byte, 1024),
		pings:  make(chan struct{}, 64),
		done:   make(chan struct{}),
	}
	ws.SetPingHandler(func(string) error {
		select {
		case pc.pings <- struct{}{}:
		default:
		}
		if deaf {
			return nil
		}
		return ws.WriteControl(websocket.PongMessage, nil, time.Now().Add(time.Second))
	})
	p.conns <- pc
	if gate != nil {
		<-gate
	}
	frame, _ := wire.Encode("", welcome)
	if err := ws.WriteMessage(websocket.TextMessage, frame); err != nil {
		return
	}
	go func() {
		for {
			select {
			case data := <-pc.out:
				if ws.WriteMessage(wire.MessageType(data), data) != nil {
					return
				}
			case <-pc.done:
				return
			}
		}
	}()
	defer close(pc.done)
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			return
		}
		f, err := pc.codec.Decode(data)
		if err != nil {
			p.t.Errorf("peer: agent sent a bad frame: %v", err)
			return
		}
		p.answer(pc, f)
		pc.frames <- f
	}
}

// answer plays the server's part for registrations and upstream messages.
func (p *peer) answer(pc *peerConn, f wire.Frame) {
	switch f.Type {
	case wire.TypeRegister:
		var r wire.Register
		if err := f.Decode(&r); err != nil {
			p.t.Errorf("peer: bad register: %v", err)
			return
		}
		token := peerToken(r.App, r.Sender)
		p.mu.Lock()
		if p.tokens != nil {
			token = p.tokens(pc.device, r.App, r.Sender)
		}
		gate := p.registerGate
		p.mu.Unlock()
		ans := wire.Registered{App: r.App, Sender: r.Sender, Token: token}
		if r.Sender == wire.WebPushSender {
			ans.Endpoint = peerEndpoint(token)
		}
		answer := func() { pc.send(f.Ref, ans) }
		if gate == nil {
			answer()
			return
		}
		go func() {
			select {
			case <-gate:
				answer()
			case <-pc.done:
			}
		}()
	case wire.TypeUnregister:
		var u wire.Unregister
		if err := f.Decode(&u); err != nil {
			p.t.Errorf("peer: bad unregister: %v", err)
			return
		}
		pc.send(f.Ref, wire.Unregistered{App: u.App, Sender: u.Sender})
	case wire.TypeSubscribe:
		var s wire.Subscribe
		if err := f.Decode(&s); err != nil {
			p.t.Errorf("peer: bad subscribe: %v", err)
			return
		}
		pc.send(f.Ref, wire.Subscribed(s))
	case wire.TypeUnsubscribe:
		var u wire.Unsubscribe
		if err := f.Decode(&u); err != nil {
			p.t.Errorf("peer: bad unsubscribe: %v", err)
			return
		}
		pc.send(f.Ref, wire.Unsubscribed(u))
	case wire.TypeUpstream:
		var u wire.Upstream
		if err := f.Decode(&u); err != nil {
			p.t.Errorf("peer: bad upstream: %v", err)
			return
		}
		p.mu.Lock()
		ack := p.ackUpstream
		p.mu.Unlock()
		if ack {
			pc.send("", wire.UpstreamAck{App: u.App, ID: u.ID})
		}
	}
}

func peerToken(app, sender string) string { return "tok-" + app + "-" + sender }

// peerEndpoint is the endpoint the peer gives a Web Push registration.
func peerEndpoint(token string) string { return "https://push.example.test/up/" + token }

// nextConn waits for the agent's next connection.
func (p *peer) nextConn(t *testing.T) *peerConn {
	t.Helper()
	select {
	case pc := <-p.conns:
		return pc
	case <-time.After(waitLimit):
		t.Fatal("the agent did not connect")
		return nil
	}
}

func (pc *peerConn) send(ref string, b wire.Body) {
	frame, err := pc.codec.Encode(ref, b)
	if err != nil {
		panic(err)
	}
	pc.out <- frame
}

func (pc *peerConn) sendRaw(data string) { pc.out <- []byte(data) }

// message sends one downstream message for (app, sender).
func (pc *peerConn) message(id, app, sender string, ttl int64) {
	pc.send("", wire.Message{ID: id, App: app, From: sender, Token: peerToken(app, sender),
		Data: map[string]string{"n": id}, TTL: ttl})
}

// waitFor returns the next frame of type typ, skipping others.
func (pc *peerConn) waitFor(t *testing.T, typ wire.Type) wire.Frame {
	t.Helper()
	timeout := time.After(waitLimit)
	for {
		select {
		case f := <-pc.frames:
			if f.Type == typ {
				return f
			}
		case <-pc.done:
			t.Fatalf("connection closed while waiting for a %s frame", typ)
		case <-timeout:
			t.Fatalf("no %s frame from the agent", typ)
		}
	}
}

// waitAck returns the IDs of the next ack frame.
func (pc *peerConn) waitAck(t *testing.T) []string {
	t.Helper()
	var ack wire.Ack
	if err := pc.waitFor(t, wire.TypeAck).Decode(&ack); err != nil {
		t.Fatal(err)
	}
	return ack.IDs
}

// waitAcked collects acks until they hold n IDs, however the agent
// grouped them.
func (pc *peerConn) waitAcked(t *testing.T, n int) []string {
	t.Helper()
	var ids []string
	for len(ids) < n {
		ids = append(ids, pc.waitAck(t)...)
	}
	return ids
}

// drop breaks the connection without a close frame.
func (pc *peerConn) drop() { pc.ws.NetConn().Close() }

// clock is an injected clock the test moves by hand.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func newClock() *clock { return &clock{now: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// onlineWithApp starts a peer and an agent with app registered for sender
// by alice, and returns them with the agent's first connection.
func onlineWithApp(t *testing.T, clk *clock, tweak ...func(*Config)) (*peer, *device, *peerConn) {
	t.Helper()
	p := newPeer(t)
	d := newDevice(t, "", p.url, clk, tweak...)
	registerDirect(t, d, app, sender, alice.UID)
	d.start()
	return p, d, p.nextConn(t)
}

// device is an agent on a store file, started and stopped by the test.
type device struct {
	t      *testing.T
	path   string
	store  *store.Store
	agent  *Agent
	cancel context.CancelFunc
	done   chan error
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug})).With("test", t.Name())
	}
	return slog.New(slog.DiscardHandler)
}

// newDevice opens (or reopens) the store at path and makes an agent on it
// for server; it does not start it.
func newDevice(t *testing.T, path, server string, clk *clock, tweak ...func(*Config)) *device {
	t.Helper()
	if path == "" {
		path = filepath.Join(t.TempDir(), "agent.db")
	}
	st, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if clk == nil {
		clk = newClock()
	}
	cfg := Config{
		Store:      st,
		Servers:    []string{server},
		Heartbeat:  time.Minute,
		MinBackoff: 5 * time.Millisecond,
		MaxBackoff: 50 * time.Millisecond,
		Logger:     testLogger(t),
		Now:        clk.Now,
	}
	for _, f := range tweak {
		f(&cfg)
	}
	a, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	d := &device{t: t, path: path, store: st, agent: a}
	t.Cleanup(d.stop)
	return d
}

func (d *device) start() *device {
	ctx, cancel := context.WithCancel(context.Background())
	d.cancel = cancel
	d.done = make(chan error, 1)
	go func() { d.done <- d.agent.Run(ctx) }()
	return d
}

// stop stops the agent (if running) and closes its store; idempotent.
func (d *device) stop() {
	if d.cancel != nil {
		d.cancel()
		select {
		case err := <-d.done:
			if err != nil {
				d.t.Errorf("Run: %v", err)
			}
		case <-time.After(waitLimit):
			d.t.Error("Run did not return")
		}
		d.cancel = nil
	}
	if d.store != nil {
		d.store.Close()
		d.store = nil
	}
}

// waitConnected waits until the agent reports itself connected, which it
// does once the welcome is adopted.
func (d *device) waitConnected(t *testing.T) {
	t.Helper()
	testwait.Until(t, "agent connected", waitLimit, func() bool {
		st, err := d.agent.Status(context.Background())
		return err == nil && st.Connected
	})
}

// listener records what the agent hands an app, in order.
type listener struct {
	events chan any
	mu     sync.Mutex
	// delivered and acked count messages, for window checks.
	delivered, acked, maxUnacked int
}

type deleted int
type replaced struct{}
type tokenRefreshed struct{ sender, token string }

func newListener() *listener { return &listener{events: make(chan any, 1024)} }

func (l *listener) Deliver(m ipc.Message) {
	l.mu.Lock()
	l.delivered++
	l.maxUnacked = max(l.maxUnacked, l.delivered-l.acked)
	l.mu.Unlock()
	l.events <- m
}
func (l *listener) SendResult(r ipc.SendResult) { l.events <- r }
func (l *listener) DeletedMessages(n int)       { l.events <- deleted(n) }
func (l *listener) Replaced()                   { l.events <- replaced{} }
func (l *listener) TokenRefreshed(sender, token string) {
	l.events <- tokenRefreshed{sender, token}
}

func (l *listener) next(t *testing.T) any {
	t.Helper()
	select {
	case e := <-l.events:
		return e
	case <-time.After(waitLimit):
		t.Fatal("nothing delivered to the listener")
		return nil
	}
}

func (l *listener) nextMessage(t *testing.T) ipc.Message {
	t.Helper()
	e := l.next(t)
	m, ok := e.(ipc.Message)
	if !ok {
		t.Fatalf("listener got %#v, want a message", e)
	}
	return m
}

// ack acknowledges ids for app as c, counting them first, so that the
// listener's unacked count is never below the agent's.
func (l *listener) ack(t *testing.T, a *Agent, c ipc.Caller, app string, ids ...string) {
	t.Helper()
	l.mu.Lock()
	l.acked += len(ids)
	l.mu.Unlock()
	if err := a.Ack(context.Background(), c, app, ids); err != nil {
		t.Fatal(err)
	}
}
