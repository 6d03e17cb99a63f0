// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"tether/internal/websocket"
	"tether/wire"
)

// Link timing. The heartbeat interval itself is configurable and can change
// at run time (SetHeartbeat); these are not.
const (
	dialTimeout  = 30 * time.Second // TCP, TLS and WebSocket handshake
	helloTimeout = 30 * time.Second // hello written and welcome read
	writeTimeout = 15 * time.Second // one frame or control message
	closeGrace   = 2 * time.Second  // wait for the server's close frame
	// stableSession is how long a session must last for the backoff to
	// start again from its base.
	stableSession = time.Minute
	// sessionQueue is how many outgoing frames may wait for the writer.
	sessionQueue = 64
	// frameQueue is how many received frames may wait for the handler; a
	// burst larger than this is handled in several batches.
	frameQueue = 256
)

// errSessionClosed is returned by Session.Send once the connection is gone.
var errSessionClosed = errors.New("session closed")

// Handler is what a Link needs from its user.
type Handler interface {
	// Hello returns the hello frame for the next connection; the link fills
	// in the version and heartbeat.
	Hello() (wire.Hello, error)
	// Serve runs one session after the server's welcome. It must return
	// once s.Frames is closed (the connection is gone) or ctx is done (the
	// link is closing the session).
	Serve(ctx context.Context, s *Session)
	// Refused is told that the server answered hello with an error frame
	// (unauthorized, revoked) in place of the welcome. It returns true when
	// the next hello will be another (the handler changed what it
	// presents), and the link dials after its usual backoff; false holds
	// the link off for about its longest backoff, whatever wakes it, since
	// the same hello would be refused the same way.
	Refused(hello wire.Hello, e wire.Error) bool
}

// LinkConfig configures a Link.
type LinkConfig struct {
	// URLs are the full WebSocket URLs of the device endpoint on each node
	// of the connection server (one, or several of a cluster).
	URLs []string
	// Insecure allows a goaway to name a ws:// server off loopback, as it
	// allowed such URLs in the configuration.
	Insecure bool
	// TLS configures wss:// connections; nil means the system roots.
	TLS *tls.Config
	// Proxy gives the HTTP proxy to reach a URL through, or nil to
	// connect directly (websocket.Dialer.Proxy).
	Proxy func(*url.URL) *url.URL
	// Heartbeat is the interval between pings; the server's welcome may
	// ask for a shorter one.
	Heartbeat time.Duration
	// PongWait is how long the link waits, past the next heartbeat, to hear
	// anything from the server before it declares the connection dead.
	PongWait time.Duration
	// MinBackoff and MaxBackoff bound the delay between connection
	// attempts, which doubles from MinBackoff up to MaxBackoff, with full
	// jitter.
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// OnSessionEnd, when set, is told why each session ended and the
	// heartbeat it had, so that a silent death can be learned from.
	OnSessionEnd func(reason string, heartbeat time.Duration)
	// OnServerChange, when set, is called when the link is about to dial
	// another server than it last did (LinkStats.Server), so that whoever
	// shows where the device is learns of it without polling.
	OnServerChange func()
	Logger         *slog.Logger
}

// ReasonHeartbeatTimeout is the disconnect reason of a connection that
// died silently: nothing heard within a heartbeat and the pong wait.
const ReasonHeartbeatTimeout = "heartbeat timeout"

// Link keeps one WebSocket connection to the connection server: it dials,
// says hello, hands each session to its Handler, drives the heartbeat and
// reconnects with exponential backoff and full jitter. While a session is
// idle the only timer that fires is the heartbeat, and while disconnected
// only the backoff.
//
// With several URLs it starts at a random one, so that a fleet spreads
// over the nodes, and moves to the next after a failed attempt or a lost
// session; one attempt per backoff step, whichever the node, so that the
// devices of a node that went away come back spread over time and over
// the nodes left. A goaway may name a node to dial next, once. A host
// name with several addresses is one URL whose addresses are tried in a
// random order (hostDialer).
//
// Its controls are for whoever knows more about the network than the link
// does (a battery or network monitor): Wake skips the backoff, Hold stops
// dialling while there is no route, Suspend closes the connection before
// the system sleeps, SetHeartbeat changes the ping interval.
type Link struct {
	cfg    LinkConfig
	log    *slog.Logger
	dialer websocket.Dialer
	hosts  *hostDialer // the dialer's, kept for tests to give it a resolver

	kick chan struct{} // Wake: dial now

	heartbeats atomic.Uint64 // pings sent, over all sessions

	mu        sync.Mutex
	heartbeat time.Duration
	held      chan struct{}      // non-nil while held; closed on release
	cancel    context.CancelFunc // ends the current attempt or session
	// attemptDone is closed when the current attempt or session has ended.
	attemptDone chan struct{}
	session     *Session
	// dropReason is why the current session is being ended on purpose.
	dropReason string
	// notBefore is when the server said it may be dialled again.
	notBefore time.Time
	// entry is the index in cfg.URLs of the next configured node to dial.
	entry int
	// redirect is the endpoint a goaway named, to dial next, once.
	redirect string
	// server is the endpoint of the current attempt or session, or of the
	// last one, or the first to be dialled.
	server string
	// cause is why the next connection is dialled; stats what happened.
	cause string
	stats LinkStats
}

// Causes of a connection, as LinkStats reports them.
const (
	CauseStart   = "start"   // the first connection
	CauseBackoff = "backoff" // the backoff after a failure ran out
)

// LinkStats tells how the link has fared, for people diagnosing it.
type LinkStats struct {
	Connected bool
	// Server is the endpoint connected to, being dialled, or last dialled.
	Server string
	// Heartbeat is the ping interval of the current or next connection.
	Heartbeat time.Duration
	// LastConnect is why the current or last connection was dialled:
	// a Cause constant or what Wake was given.
	LastConnect    string
	LastConnectAt  time.Time
	LastDisconnect string
	// LastDisconnectAt is zero until a connection has ended.
	LastDisconnectAt time.Time
	// Reconnects counts connections established after the first.
	Reconnects uint64
	// Heartbeats counts the pings sent.
	Heartbeats uint64
}

// NewLink checks cfg and returns a Link; Run starts it.
func NewLink(cfg LinkConfig) (*Link, error) {
	switch {
	case len(cfg.URLs) == 0:
		return nil, errors.New("link: no server URL")
	case cfg.Heartbeat <= 0 || cfg.PongWait <= 0:
		return nil, errors.New("link: heartbeat and pong wait must be positive")
	case cfg.MinBackoff <= 0 || cfg.MaxBackoff < cfg.MinBackoff:
		return nil, errors.New("link: backoff bounds must be positive and ordered")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	netDialer := &net.Dialer{
		Timeout: dialTimeout,
		// The WebSocket ping is the only heartbeat: a TCP keepalive every
		// 15 s (Go's default) would keep a cellular radio awake.
		KeepAlive: -1,
	}
	hosts := newHostDialer(netDialer)
	entry := rand.IntN(len(cfg.URLs))
	return &Link{
		cfg: cfg,
		log: cfg.Logger,
		dialer: websocket.Dialer{
			NetDialContext:   hosts.DialContext,
			TLSClientConfig:  cfg.TLS,
			HandshakeTimeout: dialTimeout,
			Subprotocols:     []string{wire.Subprotocol},
			Proxy:            cfg.Proxy,
		},
		hosts:     hosts,
		kick:      make(chan struct{}, 1),
		heartbeat: cfg.Heartbeat,
		cause:     CauseStart,
		entry:     entry,
		server:    cfg.URLs[entry],
	}, nil
}

// Stats reports how the link has fared.
func (l *Link) Stats() LinkStats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.stats
	st.Connected = l.session != nil
	st.Server = l.server
	st.Heartbeat = l.heartbeat
	if l.session != nil {
		st.Heartbeat = l.session.interval()
	}
	st.Heartbeats = l.heartbeats.Load()
	return st
}

// Wake releases a hold and dials at once, skipping any backoff; a
// connection that is up is closed first, since the network it was made on
// may be gone. cause ("route-up", "resume") is recorded as the reason for
// the new connection and for the end of the old one.
func (l *Link) Wake(cause string) {
	l.mu.Lock()
	if l.held != nil {
		close(l.held)
		l.held = nil
	}
	l.cause = cause
	l.dropReason = cause
	if l.cancel != nil {
		l.cancel()
	}
	l.mu.Unlock()
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// Hold stops dialling until Wake, for while there is no route to the
// server. A connection that is up stays up until it fails.
func (l *Link) Hold() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.held == nil {
		l.held = make(chan struct{})
	}
}

// Suspend holds the link and closes the connection cleanly (what is
// queued, then a close frame), for before the system sleeps. It returns
// once the connection is closed or ctx is done.
func (l *Link) Suspend(ctx context.Context) error {
	l.mu.Lock()
	if l.held == nil {
		l.held = make(chan struct{})
	}
	l.dropReason = "suspend"
	cancel, done := l.cancel, l.attemptDone
	l.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("suspend: closing the connection: %w", ctx.Err())
	}
}

// GoAway obeys a server that asked not to be dialled again for d: no
// dial, whatever wakes the link, happens before then. When it names
// another node (server, as wire.GoAway has it), that node is dialled next,
// once, provided the agent would dial it as one of its own
// (nextEndpoint); then the link goes on with its own list.
func (l *Link) GoAway(d time.Duration, server string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.notBefore = time.Now().Add(d)
	l.dropReason = "goaway"
	if server == "" {
		return
	}
	next, err := nextEndpoint(l.server, server, l.cfg.Insecure)
	if err != nil {
		l.log.Warn("not following the goaway to another server", "err", err)
		return
	}
	l.redirect = next
}

// holdOff keeps the link from dialling for about its longest backoff (a
// random time between half of it and all of it, so that a fleet refused
// together comes back apart), for a server that would refuse the same
// hello again: a hammering device helps nobody, and an operator has to
// act first.
func (l *Link) holdOff() {
	limit := l.cfg.MaxBackoff
	l.mu.Lock()
	defer l.mu.Unlock()
	l.notBefore = time.Now().Add(limit/2 + rand.N(limit/2+1))
}

// SetHeartbeat changes the ping interval, for the current session at once
// and for later ones. The caller tells the server (a state frame), whose
// idle timeout must follow.
func (l *Link) SetHeartbeat(d time.Duration) {
	if d <= 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.heartbeat = d
	if l.session != nil {
		l.session.setHeartbeat(d)
	}
}

// Run connects and reconnects until ctx is done, then closes the session
// with a close frame and returns once every goroutine it started has
// stopped.
func (l *Link) Run(ctx context.Context, h Handler) error {
	attempt := 0
	for {
		if !l.waitRelease(ctx) {
			return nil
		}
		if !l.waitNotBefore(ctx) {
			return nil
		}
		select { // a kick from before this attempt is served by it
		case <-l.kick:
		default:
		}
		lasted, err := l.connect(ctx, h, l.nextTarget())
		if ctx.Err() != nil {
			return nil
		}
		l.mu.Lock()
		if l.cause == "" {
			l.cause = CauseBackoff
		}
		l.mu.Unlock()
		if lasted >= stableSession {
			attempt = 0
		}
		select {
		case <-l.kick:
			l.log.Info("reconnecting at once")
			continue
		default:
		}
		delay := backoff(l.cfg.MinBackoff, l.cfg.MaxBackoff, attempt)
		attempt++
		if lasted == 0 {
			l.log.Warn("connection failed", "err", err, "retry_in", delay.Round(time.Millisecond))
		} else {
			l.log.Info("disconnected", "err", err, "after", lasted.Round(time.Second), "retry_in", delay.Round(time.Millisecond))
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-l.kick:
		case <-t.C:
		}
		t.Stop()
	}
}

// backoff returns a delay drawn uniformly from [0, min(limit, base·2^attempt)).
func backoff(base, limit time.Duration, attempt int) time.Duration {
	ceiling := limit
	if attempt < 32 && base<<attempt < limit && base<<attempt > 0 {
		ceiling = base << attempt
	}
	return rand.N(ceiling)
}

// target is the server of one attempt: a configured node, or one a goaway
// named (entry -1).
type target struct {
	url   string
	entry int
}

// nextTarget is the server to dial now: the one a goaway named, else the
// next configured node.
func (l *Link) nextTarget() target {
	l.mu.Lock()
	t := target{url: l.cfg.URLs[l.entry], entry: l.entry}
	if l.redirect != "" {
		t = target{url: l.redirect, entry: -1}
		l.redirect = ""
	}
	changed := t.url != l.server
	l.server = t.url
	l.mu.Unlock()
	if changed && l.cfg.OnServerChange != nil {
		l.cfg.OnServerChange()
	}
	return t
}

// waitNotBefore waits out the delay a server asked for (GoAway) or a
// refusal calls for (holdOff); false when ctx is done.
func (l *Link) waitNotBefore(ctx context.Context) bool {
	l.mu.Lock()
	wait := time.Until(l.notBefore)
	l.mu.Unlock()
	if wait <= 0 {
		return true
	}
	l.log.Info("waiting before dialling again", "wait", wait.Round(time.Second))
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// waitRelease blocks while the link is held; false when ctx is done.
func (l *Link) waitRelease(ctx context.Context) bool {
	l.mu.Lock()
	held := l.held
	l.mu.Unlock()
	if held == nil {
		return ctx.Err() == nil
	}
	l.log.Info("dialling held")
	select {
	case <-held:
		return true
	case <-ctx.Done():
		return false
	}
}

// connect runs one attempt at t: dial, hello, welcome, session. It returns
// how long the session lasted (zero if none was established) and why it
// ended.
func (l *Link) connect(ctx context.Context, h Handler, t target) (time.Duration, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	l.mu.Lock()
	l.cancel = cancel
	heartbeat := l.heartbeat
	cause := l.cause
	l.cause, l.dropReason = "", ""
	done := make(chan struct{})
	l.attemptDone = done
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		l.cancel, l.attemptDone = nil, nil
		// A failed attempt or a lost session moves on to the next node.
		// One the link ended itself (Wake, Suspend) was not the node's
		// fault: the same node is dialled again.
		if t.entry >= 0 && ctx.Err() == nil {
			l.entry = (t.entry + 1) % len(l.cfg.URLs)
		}
		l.mu.Unlock()
		close(done)
	}()

	hello, err := h.Hello()
	if err != nil {
		return 0, fmt.Errorf("prepare hello: %w", err)
	}
	hello.Version = wire.Version
	hello.Heartbeat = int((heartbeat + time.Second - 1) / time.Second)
	helloFrame, err := wire.Encode("", hello)
	if err != nil {
		return 0, err
	}

	conn, resp, err := l.dialer.DialContext(ctx, t.url, nil)
	if err != nil {
		if resp != nil {
			return 0, fmt.Errorf("dial %s: %w (HTTP %s)", t.url, err, resp.Status)
		}
		return 0, fmt.Errorf("dial %s: %w", t.url, err)
	}
	if conn.Subprotocol() != wire.Subprotocol {
		conn.Close()
		return 0, fmt.Errorf("dial %s: server speaks subprotocol %q, want %q", t.url, conn.Subprotocol(), wire.Subprotocol)
	}
	conn.SetReadLimit(wire.MaxFrameSize)
	welcome, err := exchangeHello(ctx, conn, helloFrame)
	if err != nil {
		conn.Close()
		if ga, ok := errors.AsType[*goAwayError](err); ok {
			l.GoAway(ga.after, ga.server)
		}
		if r, ok := errors.AsType[*refusedError](err); ok && !h.Refused(hello, r.e) {
			l.holdOff()
		}
		return 0, err
	}
	codec, err := wire.NewCodec(welcome.Version)
	if err != nil {
		conn.Close()
		return 0, fmt.Errorf("welcome from %s: %w", t.url, err)
	}

	s := newSession(conn, welcome, codec, heartbeat, l.cfg.PongWait, &l.heartbeats, l.log)
	started := time.Now()
	l.mu.Lock()
	l.session = s
	if !l.stats.LastConnectAt.IsZero() {
		l.stats.Reconnects++
	}
	l.stats.LastConnect, l.stats.LastConnectAt = cause, started
	l.mu.Unlock()
	l.log.Debug("session up", "cause", cause, "server", t.url)
	s.start()
	h.Serve(ctx, s)
	err = s.shutdown()
	l.mu.Lock()
	reason := disconnectReason(ctx, l.dropReason, err)
	l.session = nil
	l.stats.LastDisconnect, l.stats.LastDisconnectAt = reason, time.Now()
	l.mu.Unlock()
	if l.cfg.OnSessionEnd != nil {
		l.cfg.OnSessionEnd(reason, s.interval())
	}
	return time.Since(started), err
}

// disconnectReason names why a session ended: why it was dropped on
// purpose, a silent death (nothing heard within a heartbeat and the pong
// wait), the server's close frame, or the network error.
func disconnectReason(ctx context.Context, dropReason string, err error) string {
	var closeErr *websocket.CloseError
	var netErr net.Error
	switch {
	case dropReason != "" && (ctx.Err() != nil || dropReason == "goaway"):
		return dropReason
	case ctx.Err() != nil:
		return "agent stopping"
	case errors.As(err, &closeErr):
		return fmt.Sprintf("server closed: %d %s", closeErr.Code, closeErr.Text)
	case errors.As(err, &netErr) && netErr.Timeout():
		return ReasonHeartbeatTimeout
	case err == nil:
		return "session ended"
	}
	return "network error: " + err.Error()
}

// goAwayError is a server's refusal of a session with a delay to wait
// before dialling again (overloaded, store trouble), and maybe another
// node to dial.
type goAwayError struct {
	after  time.Duration
	reason string
	server string
}

func (e *goAwayError) Error() string {
	if e.server != "" {
		return fmt.Sprintf("server asked to come back in %v, to %s: %s", e.after, e.server, e.reason)
	}
	return fmt.Sprintf("server asked to come back in %v: %s", e.after, e.reason)
}

// refusedError is the server's error frame in place of a welcome.
type refusedError struct{ e wire.Error }

func (e *refusedError) Error() string { return "server refused hello: " + e.e.String() }

// exchangeHello writes hello and reads the welcome, both under deadlines
// that ctx can cut short.
func exchangeHello(ctx context.Context, conn *websocket.Conn, hello []byte) (wire.Welcome, error) {
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	deadline := time.Now().Add(helloTimeout)
	conn.SetWriteDeadline(deadline)
	if err := conn.WriteMessage(websocket.TextMessage, hello); err != nil {
		return wire.Welcome{}, fmt.Errorf("send hello: %w", err)
	}
	conn.SetReadDeadline(deadline)
	_, data, err := conn.ReadMessage()
	if err != nil {
		return wire.Welcome{}, fmt.Errorf("read welcome: %w", err)
	}
	f, err := wire.Decode(data)
	if err != nil {
		return wire.Welcome{}, fmt.Errorf("read welcome: %w", err)
	}
	if f.Type == wire.TypeGoAway {
		var g wire.GoAway
		if err := f.Decode(&g); err != nil {
			return wire.Welcome{}, fmt.Errorf("read welcome: %w", err)
		}
		return wire.Welcome{}, &goAwayError{after: time.Duration(g.RetryAfter) * time.Second, reason: g.Reason, server: g.Server}
	}
	if f.Type == wire.TypeError {
		var e wire.Error
		if err := f.Decode(&e); err != nil {
			return wire.Welcome{}, fmt.Errorf("read welcome: %w", err)
		}
		return wire.Welcome{}, &refusedError{e}
	}
	var w wire.Welcome
	if err := f.Decode(&w); err != nil {
		return wire.Welcome{}, fmt.Errorf("read welcome: %w", err)
	}
	return w, nil
}

// Session is one established connection: the server's welcome, the frames
// it sends, and a queue to the connection's single writer.
type Session struct {
	conn      *websocket.Conn
	welcome   wire.Welcome
	codec     *wire.Codec
	log       *slog.Logger
	pongWait  time.Duration
	pings     *atomic.Uint64 // the link's count of heartbeats sent
	heartbeat atomic.Int64   // time.Duration
	// allowed is the longest heartbeat the server keeps the session for
	// (the welcome's), zero when it set none.
	allowed time.Duration
	// awaiting is set while the read deadline of a ping is armed: a
	// later ping must not push it back, or a heartbeat shorter than the
	// pong wait would keep a dead connection forever.
	awaiting atomic.Bool

	out       chan []byte
	frames    chan []byte
	pongDue   chan string   // a server ping's payload, for the writer to answer
	hbChanged chan struct{} // the heartbeat changed, for the writer
	stopping  chan struct{} // closed by shutdown: flush, say goodbye
	readDone  chan struct{}
	writeDone chan struct{}
	readErr   error // set before readDone closes
}

func newSession(conn *websocket.Conn, w wire.Welcome, codec *wire.Codec, heartbeat, pongWait time.Duration, pings *atomic.Uint64, log *slog.Logger) *Session {
	s := &Session{
		conn:      conn,
		welcome:   w,
		codec:     codec,
		log:       log,
		pongWait:  pongWait,
		pings:     pings,
		out:       make(chan []byte, sessionQueue),
		frames:    make(chan []byte, frameQueue),
		pongDue:   make(chan string, 1),
		hbChanged: make(chan struct{}, 1),
		stopping:  make(chan struct{}),
		readDone:  make(chan struct{}),
		writeDone: make(chan struct{}),
		allowed:   time.Duration(w.Heartbeat) * time.Second,
	}
	s.heartbeat.Store(int64(s.capped(heartbeat)))
	return s
}

// capped is heartbeat d as the session may use it: the server's welcome
// may hold the session for less than the agent asks, in hello or later
// (a learned heartbeat, a state frame), and a ping after that would come
// to a session the server has closed.
func (s *Session) capped(d time.Duration) time.Duration {
	if s.allowed > 0 && d > s.allowed {
		return s.allowed
	}
	return d
}

// Welcome is the server's answer to hello.
func (s *Session) Welcome() wire.Welcome { return s.welcome }

// Codec encodes and decodes the session's frames, in the version of its
// welcome.
func (s *Session) Codec() *wire.Codec { return s.codec }

// Frames yields each frame the server sends; it is closed when the
// connection is gone.
func (s *Session) Frames() <-chan []byte { return s.frames }

// Send queues one encoded frame for the writer. It fails once the session
// is closing or ctx is done; a frame queued just before the connection
// fails may be lost, so what must arrive is resent by its owner.
func (s *Session) Send(ctx context.Context, frame []byte) error {
	select {
	case <-s.stopping:
		return errSessionClosed
	case <-s.writeDone:
		return errSessionClosed
	default:
	}
	select {
	case s.out <- frame:
		return nil
	case <-s.stopping:
		return errSessionClosed
	case <-s.writeDone:
		return errSessionClosed
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Session) interval() time.Duration { return time.Duration(s.heartbeat.Load()) }

func (s *Session) setHeartbeat(d time.Duration) {
	s.heartbeat.Store(int64(s.capped(d)))
	select {
	case s.hbChanged <- struct{}{}:
	default:
	}
}

// heard clears the read deadline: the server was heard from. The writer
// arms it again with each ping, so a dead connection is found within a
// heartbeat and the pong wait. A deadline pushed out on every frame
// instead would leave a runtime timer that wakes the process once a
// heartbeat at the deadline it had.
func (s *Session) heard() {
	s.awaiting.Store(false)
	s.conn.SetReadDeadline(time.Time{})
}

func (s *Session) start() {
	s.conn.SetPongHandler(func(string) error {
		s.heard()
		return nil
	})
	// The writer answers pings and close frames: a single goroutine writes.
	s.conn.SetCloseHandler(func(int, string) error { return nil })
	s.conn.SetPingHandler(func(payload string) error {
		s.heard()
		select {
		case s.pongDue <- payload:
		default:
		}
		return nil
	})
	s.heard()
	go s.readLoop()
	go s.writeLoop()
}

func (s *Session) readLoop() {
	defer close(s.readDone)
	defer close(s.frames)
	for {
		_, data, err := s.conn.ReadMessage()
		if err != nil {
			s.readErr = err
			return
		}
		s.heard()
		select {
		case s.frames <- data:
		case <-s.stopping: // nobody reads frames any more; wait for the close
		}
	}
}

func (s *Session) writeLoop() {
	defer close(s.writeDone)
	ping := time.NewTimer(s.interval())
	defer ping.Stop()
	for {
		var err error
		select {
		case frame := <-s.out:
			err = s.write(frame)
		case <-ping.C:
			s.pings.Add(1)
			if !s.awaiting.Swap(true) {
				s.conn.SetReadDeadline(time.Now().Add(s.pongWait))
			}
			err = s.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeTimeout))
			ping.Reset(s.interval())
		case payload := <-s.pongDue:
			err = s.conn.WriteControl(websocket.PongMessage, []byte(payload), time.Now().Add(writeTimeout))
		case <-s.hbChanged:
			ping.Reset(s.interval())
			s.heard()
		case <-s.readDone:
			return
		case <-s.stopping:
			s.goodbye()
			return
		}
		if err != nil {
			s.log.Debug("write failed", "err", err)
			s.conn.Close() // the reader fails and ends the session
			return
		}
		// A write deadline left armed fires a timer writeTimeout after
		// every frame and ping: one more wake-up per heartbeat.
		s.conn.NetConn().SetWriteDeadline(time.Time{})
	}
}

// goodbye writes what is still queued (acks above all) and a close frame.
func (s *Session) goodbye() {
	for len(s.out) > 0 { // the writer is the only receiver
		if err := s.write(<-s.out); err != nil {
			return
		}
	}
	msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "agent closing")
	if err := s.conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(writeTimeout)); err != nil {
		s.log.Debug("write close frame", "err", err)
	}
}

func (s *Session) write(frame []byte) error {
	s.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	return s.conn.WriteMessage(wire.MessageType(frame), frame)
}

// shutdown closes the session with a close frame, waits briefly for the
// server's, and returns once both goroutines have stopped, with the error
// that ended the connection.
func (s *Session) shutdown() error {
	close(s.stopping)
	<-s.writeDone
	t := time.NewTimer(closeGrace)
	select {
	case <-s.readDone:
	case <-t.C:
	}
	t.Stop()
	s.conn.Close()
	<-s.readDone
	return s.readErr
}
