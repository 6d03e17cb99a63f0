// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"tether/server/store"
	"tether/wire"
)

// closeReplaced is the close code of a session replaced by a newer session
// of the same device (a private-use code).
const closeReplaced = 4000

// minUpstreamDedupe is the shortest time a device's upstream message ID is
// remembered, so that even a TTL-0 message resent after a lost ack is not
// delivered twice.
const minUpstreamDedupe = time.Hour

// clusterRecheck is when, after a session opens on a cluster, it looks
// at its queue once more. Its subscription reaches the other NATS servers
// within milliseconds on a LAN.
const clusterRecheck = 2 * time.Second

// readRetry is how long a session waits to read its device's queue or
// notices again after the store failed to read them: a device that has
// nothing in flight sends nothing that would wake the writer, and the
// messages waiting for it would wait for the next send to it.
const readRetry = time.Second

// directQueue bounds time-to-live-0 messages waiting for a session's
// writer; beyond it they are dropped, as their sender asked.
const directQueue = 64

// replyQueue bounds the answers the reader has for the writer before it
// waits: the writer takes them as fast as the connection does.
const replyQueue = 4

// maxLiveReceipts bounds the time-to-live-0 messages a session remembers
// for their delivery receipts until the device acks them.
const maxLiveReceipts = 1000

func newUpgrader() *websocket.Upgrader {
	return &websocket.Upgrader{
		Subprotocols: []string{wire.Subprotocol},
		// Idle sessions, the common case, hold no write buffer, and the
		// smallest read buffer gorilla takes, 128 bytes (a control frame
		// is up to 125): a longer frame is read past it, and over TLS from
		// the record crypto/tls holds decrypted anyway. 1024 bytes held
		// 0.9 KiB more per session; 0 would keep net/http's 4 KiB reader.
		WriteBufferPool: &sync.Pool{},
		ReadBufferSize:  128,
	}
}

// handleDevice runs the handshake of one device connection, then hands
// the connection to a goroutine of its own for its session or probe.
func (s *Server) handleDevice(w http.ResponseWriter, r *http.Request) {
	if !slices.Contains(websocket.Subprotocols(r), wire.Subprotocol) {
		http.Error(w, "offer the WebSocket subprotocol "+wire.Subprotocol, http.StatusBadRequest)
		return
	}
	p := s.peerOf(r)
	release, allowed := s.sessions.Acquire(p.addr)
	conn, err := s.upgrader.Upgrade(w, r, nil)
	if err != nil {
		release()
		return // Upgrade has answered the request.
	}
	// The connection is a device's now, which the session cap counts, not
	// the cap on HTTP connections.
	releaseConn(conn.NetConn())
	if !allowed {
		s.refusals.refused(p.key(), "device refused", "err", fmt.Sprintf("more than %d device connections from this address", s.sessions.Limit()))
		s.goAwayConn(conn, wire.GoAway{RetryAfter: spreadSeconds(time.Minute), Reason: "too many connections from this address"}, websocket.CloseTryAgainLater, "too many connections")
		conn.Close()
		return
	}
	if s.refuseWhileDraining(conn) {
		release()
		conn.Close()
		return
	}
	if !s.hub.enter() {
		release()
		s.goAwayConn(conn, s.shutdownGoAway(), websocket.CloseGoingAway, "server shutting down")
		conn.Close()
		return
	}
	leave := func() {
		conn.Close()
		release()
		s.hub.leave()
	}
	conn.SetReadLimit(wire.MaxFrameSize)
	log := s.log.With("remote", p.addr.String())
	acc, err := s.handshake(r.Context(), conn, p, log)
	if err != nil {
		s.refusals.refused(p.key(), "device refused", "err", err)
		leave()
		return
	}
	// The handler returns and the hub owns the rest (enter and leave):
	// net/http's goroutine goes, with the stack the handshake grew, its
	// request and its buffers, which an idle session would hold for hours.
	if acc.hello.Probe {
		go func() {
			defer leave()
			s.runProbe(conn, acc)
		}()
		return
	}
	// A session's start runs here too, for the same reason: the deep
	// calls of the welcome, the log line and the first read of the queue
	// would grow the stacks of its long-lived goroutines, which keep that
	// size while idle until collections shrink them.
	ss, ok := s.openSession(r.Context(), conn, acc)
	if !ok {
		leave()
		return
	}
	go func() {
		defer leave()
		s.serveSession(ss)
	}()
}

// releaseConn gives back the place of a connection, under its TLS, in the
// cap on each client's HTTP connections.
func releaseConn(nc net.Conn) {
	if t, ok := nc.(*tls.Conn); ok {
		nc = t.NetConn()
	}
	if c, ok := nc.(interface{ Release() }); ok {
		c.Release()
	}
}

// openSession attaches a device's session to the hub and sends its
// welcome, then the first window of what is queued for it. False means
// there is no session to serve.
func (s *Server) openSession(ctx context.Context, conn *websocket.Conn, acc accepted) (*session, bool) {
	ss := newSession(s, conn, acc.device.ID, acc.timeout, powerMode(acc.hello.Mode), acc.log)
	ss.codec = acc.codec
	ss.wifi = acc.hello.Link == wire.LinkWiFi
	if s.node != nil {
		// On a cluster the session's place in the order of the device's
		// sessions comes from the state, not from this node's clock:
		// of two sessions, the one opened later ends the other, however
		// the nodes' clocks disagree.
		seq, err := s.node.st.OpenSession(ctx, acc.device.ID)
		if err != nil {
			ss.log.Error("session not opened in the cluster's state", "err", err)
			s.goAwayConn(conn, *s.storeGoAway(), websocket.CloseTryAgainLater, "store unavailable")
			return nil, false
		}
		ss.key = fmt.Sprintf("%020d", seq)
	}
	// Attached before the welcome goes out: once the agent has its
	// welcome, the device counts as connected for time-to-live-0 sends.
	// What arrives meanwhile waits in the session's channels.
	if !s.hub.attach(ss) {
		s.goAwayConn(conn, s.shutdownGoAway(), websocket.CloseGoingAway, "server shutting down")
		return nil, false
	}
	if err := ss.write(acc.welcome); err != nil {
		s.hub.detach(ss)
		ss.close(0, "")
		ss.log.Info("write welcome", "err", err)
		return nil, false
	}
	s.metrics.sessionsOpened.Inc()
	ss.log.Info("session open", "heartbeat", ss.timeout-s.cfg.HeartbeatGrace, "mode", powerMode(acc.hello.Mode), "version", ss.codec.Version())
	ss.agent, ss.seen = acc.hello.Agent, acc.device.LastSeen
	if acc.device.Agent != ss.agent || acc.device.PowerMode != ss.mode {
		ss.seen = time.Time{} // what the device says of itself changed
	}
	ss.noteSeen()
	// The writer is not running yet, so this goroutine may write. A
	// failure closes the connection, and serveSession ends the session.
	if err := ss.fill(); err != nil {
		ss.log.Debug("write failed", "err", err)
		ss.close(0, "")
	}
	if s.node != nil {
		// A kick published before every NATS server knew of the
		// session's subscription is lost: one more look catches it.
		time.AfterFunc(clusterRecheck, ss.notify)
	}
	return ss, true
}

// serveSession serves a device's session: the reader loop in this
// goroutine, the writer in another while it has something to write.
func (s *Server) serveSession(ss *session) {
	// The handler goroutine wrote while the session opened; whatever came
	// in meanwhile is the writer's now.
	ss.mu.Lock()
	ss.writing = false
	ss.mu.Unlock()
	ss.wake()
	err := ss.readLoop()
	ss.ackers.Wait() // an ack read is committed, even with the connection gone
	s.hub.detach(ss)
	select {
	case <-ss.done:
		if ss.reason != "" {
			err = errors.New(ss.reason)
		}
	default:
	}
	ss.close(0, "")
	ss.writers.Wait()
	ss.stopHoldTimer() // no writer runs now to own it
	ss.log.Info("session closed", "why", err)
}

// closeConn sends a close frame; the caller closes the connection.
func (s *Server) closeConn(conn *websocket.Conn, code int, text string) {
	conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(s.cfg.WriteTimeout))
}

// answerPings makes conn answer the agent's pings with pongs, and re-arm
// its read deadline with timeout(), which the reader goroutine may change.
func (s *Server) answerPings(conn *websocket.Conn, timeout func() time.Duration) {
	conn.SetPingHandler(func(data string) error {
		conn.SetReadDeadline(time.Now().Add(timeout()))
		err := conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(s.cfg.WriteTimeout))
		var netErr net.Error
		if errors.Is(err, websocket.ErrCloseSent) || errors.As(err, &netErr) && netErr.Timeout() {
			return nil
		}
		return err
	})
}

// refusal is a handshake failure: the frame sent (an error frame, or a
// goaway in its place) and the close code.
type refusal struct {
	code      string
	message   string
	closeCode int
	// goAway, when set, goes out instead of the error frame: the device
	// should not come back for its retry_after.
	goAway *wire.GoAway
}

func (r refusal) Error() string { return r.code + ": " + r.message }

// accepted is a device whose hello the server took.
type accepted struct {
	hello   wire.Hello
	device  store.Device
	welcome []byte // the encoded welcome to send
	// codec speaks the version the welcome names.
	codec *wire.Codec
	// timeout is the silence after which the server closes the connection.
	timeout time.Duration
	log     *slog.Logger
}

// handshake reads the hello and authenticates or checks in the device. On
// a refusal it has sent an error frame (or a goaway) and a close frame.
func (s *Server) handshake(ctx context.Context, conn *websocket.Conn, p peer, log *slog.Logger) (accepted, error) {
	hello, err := s.readHello(conn)
	if ref := (refusal{}); errors.As(err, &ref) {
		return accepted{}, s.refuse(conn, ref)
	}
	if err != nil {
		return accepted{}, err
	}
	codec, err := wire.NewCodec(wire.Negotiate(hello.Version))
	if err != nil {
		return accepted{}, fmt.Errorf("choose protocol version: %w", err)
	}
	welcome := wire.Welcome{Version: codec.Version(), Heartbeat: s.heartbeatFor(hello.Heartbeat)}
	var dev store.Device
	if hello.DeviceID == "" {
		dev, welcome.DeviceSecret, err = s.checkIn(ctx, hello, p)
		if err == nil {
			log.Info("device checked in", "device", dev.ID, "agent", hello.Agent, "enrolled_by", dev.EnrolledBy, "replaced", dev.Replaced)
			s.metrics.enrolled(dev.EnrolledBy)
		}
	} else {
		dev, err = s.authenticateDevice(ctx, hello, p)
		// Counted once the credentials are right, so that nobody else can
		// use up a device's connections.
		if err == nil && !s.reconnects.allow(ctx, hello.DeviceID) {
			err = refusal{wire.CodeUnavailable, fmt.Sprintf("device %s opens more than %d connections a minute", hello.DeviceID, s.reconnects.perMinute()),
				websocket.CloseTryAgainLater, s.reconnectGoAway()}
		}
	}
	if ref := (refusal{}); errors.As(err, &ref) {
		s.metrics.refusedDevice(hello.DeviceID == "", ref.code)
		return accepted{}, s.refuse(conn, s.throttle(ctx, p, ref))
	}
	if err != nil {
		return accepted{}, err
	}
	welcome.DeviceID = dev.ID
	frame, err := wire.Encode("", welcome)
	if err != nil {
		return accepted{}, fmt.Errorf("encode welcome: %w", err)
	}
	return accepted{
		hello: hello, device: dev, welcome: frame, codec: codec,
		timeout: secondsDuration(int64(welcome.Heartbeat)) + s.cfg.HeartbeatGrace,
		log:     log.With("device", dev.ID, "agent", hello.Agent),
	}, nil
}

// heartbeatFor is the heartbeat a session keeps to when the agent asks
// for asked seconds: the server's default for 0, and at most
// Config.MaxHeartbeat, so that nobody holds a connection open for a day
// with one ping.
func (s *Server) heartbeatFor(asked int) int {
	if asked == 0 {
		asked = int(s.cfg.Heartbeat / time.Second)
	}
	return min(asked, int(s.cfg.MaxHeartbeat/time.Second))
}

// refuse sends r's error frame (or goaway) and close frame and returns r.
func (s *Server) refuse(conn *websocket.Conn, r refusal) error {
	if r.goAway != nil {
		s.goAwayConn(conn, *r.goAway, r.closeCode, r.code)
		return r
	}
	if frame, err := wire.Encode("", wire.Error{Code: r.code, Message: r.message}); err == nil {
		conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		conn.WriteMessage(websocket.TextMessage, frame)
	}
	s.closeConn(conn, r.closeCode, r.code)
	return r
}

// readHello reads and checks the first frame. Failures the device should
// hear about are refusals.
func (s *Server) readHello(conn *websocket.Conn) (wire.Hello, error) {
	var hello wire.Hello
	conn.SetReadDeadline(time.Now().Add(s.cfg.HelloTimeout))
	_, data, err := conn.ReadMessage()
	if err != nil {
		return hello, fmt.Errorf("read hello: %w", err)
	}
	f, err := wire.Decode(data)
	if err != nil {
		return hello, refusal{code: wire.CodeBadFrame, message: err.Error(), closeCode: websocket.CloseProtocolError}
	}
	if f.Type != wire.TypeHello {
		return hello, refusal{code: wire.CodeBadFrame, message: fmt.Sprintf("the first frame must be hello, not %.40q", f.Type), closeCode: websocket.CloseProtocolError}
	}
	if err := f.Decode(&hello); err != nil {
		return hello, refusal{code: wire.CodeBadFrame, message: err.Error(), closeCode: websocket.CloseProtocolError}
	}
	return hello, nil
}

// session is one device's live connection. The reader goroutine handles
// incoming frames; writeLoop, while it runs, is the only goroutine that
// writes data frames. Control frames (pong, close) go through WriteControl,
// which gorilla allows beside one writer.
type session struct {
	srv *Server
	// ctx is for the session's store calls. It does not end with the
	// connection: what the device sent (an ack, an upstream message) is
	// committed even when the connection is gone by then.
	ctx    context.Context
	conn   *websocket.Conn
	device string
	log    *slog.Logger
	// key names the session in a cluster: of two sessions of one device,
	// the later has the greater key (openSession, hub.attach).
	key string
	// unwatch ends this node's subscription to the device, on a cluster.
	unwatch     func()
	unwatchOnce sync.Once
	// timeout is the silence after which the session is closed: the
	// agent's heartbeat plus the grace. Reader goroutine only, and the
	// goroutine it handles a frame on.
	timeout time.Duration
	// codec encodes and decodes the session's frames in the version of
	// its welcome.
	codec *wire.Codec

	replies chan []byte // encoded frames from the reader
	// direct holds time-to-live-0 messages, never stored, for the
	// writer, under mu; nil, and no memory, while there are none.
	direct []store.Message
	// early holds messages offered while their commit runs, in flight
	// already, for the writer, under mu.
	early []store.Message
	// caughtUp says the writer has sent everything stored that it may
	// send, so that an offered message overtakes none; offerMisses counts
	// the offers refused, so that a fill that read the queue before one
	// does not take it for caught up. Under mu.
	caughtUp    bool
	offerMisses uint64
	kick        chan struct{}   // the device's queue may have something to send
	final       chan finalFrame // a last frame for the writer, then the close
	done        chan struct{}   // closed by close
	once        sync.Once
	reason      string // why the server closed the session; set before done closes

	// ackers runs the goroutine that commits acks, while there are any.
	ackers sync.WaitGroup
	// writers runs the writer goroutine (writeLoop), while there is
	// something to write: an idle session holds the reader's goroutine
	// alone, and its stack.
	writers sync.WaitGroup

	mu sync.Mutex
	// writing says the writer runs; wake starts it when it does not.
	writing bool
	// rereading says a read of the store failed and a look again is
	// due (retryRead).
	rereading bool
	// acks are the acked IDs read and not yet committed, and acking says
	// an acker runs: the reader goes on reading while one commits, and
	// what it reads meanwhile shares the next commit.
	acks   []string
	acking bool
	// reading says the writer has begun a read of the store whose
	// results it is still going through (ackedLately).
	reading bool
	// inflight holds the messages and notices sent in this session, by
	// ID, until their ack is committed; acked counts those whose ack the
	// reader has read. The window bounds the others: the device's link
	// carries more while the server commits what it acked.
	inflight map[string]sentEntry
	acked    int
	// ackedLately holds the IDs whose ack committed, and which left
	// inflight, since the writer last began a read of the store: such a
	// read may predate the ack's commit and still list them
	// (readingStore, alreadySent).
	ackedLately map[string]struct{}
	// liveReceipts are time-to-live-0 messages sent in this session that
	// asked for a delivery receipt, by ID, until the device acks them.
	liveReceipts map[string]store.Message
	// mode is the device's power mode (wire.ModeMains, ModeBattery or
	// ModeLow), from its hello and state frames.
	mode string
	// wifi is whether the device reaches the server over Wi-Fi, as its
	// hello and state frames say (false when they do not).
	wifi bool
	// rescan asks the writer to look at held messages again (the mode
	// changed); flushDue to push them (their maximum delay ran out).
	rescan, flushDue bool

	cursor uint64    // Seq of the last queued message looked at; writer only
	hold   holdState // writer only

	// agent is what the device's hello said it runs, and seen when the
	// store last noted the device seen (noteSeen); reader only.
	agent string
	seen  time.Time
}

// finalFrame is the last frame of a session and the close that follows it.
type finalFrame struct {
	frame []byte
	code  int
	text  string
}

func newSession(s *Server, conn *websocket.Conn, device string, timeout time.Duration, mode string, log *slog.Logger) *session {
	ss := &session{
		// The handler goroutine writes until serveSession hands over.
		writing: true,
		srv:     s, ctx: context.Background(), conn: conn, device: device, log: log, timeout: timeout, mode: mode,
		replies: make(chan []byte, replyQueue),
		kick:    make(chan struct{}, 1),
		final:   make(chan finalFrame, 1),
		done:    make(chan struct{}),
	}
	s.answerPings(conn, func() time.Duration { return ss.timeout })
	// A pong answers only after the acks read before its ping are
	// committed, so that an agent (or a test) that pings knows they are.
	answer := conn.PingHandler()
	conn.SetPingHandler(func(data string) error {
		ss.ackers.Wait()
		ss.noteSeen()
		return answer(data)
	})
	return ss
}

// noteSeen notes in the store that the device was seen, at most once every
// Config.SeenInterval: a heartbeat is not worth a write.
func (ss *session) noteSeen() {
	now := ss.srv.now()
	if now.Sub(ss.seen) < ss.srv.cfg.SeenInterval {
		return
	}
	ss.seen = now
	ss.mu.Lock()
	mode := ss.mode
	ss.mu.Unlock()
	if err := ss.srv.store.SeenDevice(ss.ctx, ss.device, now, ss.agent, mode); err != nil {
		ss.log.Warn("note device seen", "err", err)
	}
}

// stopWatching ends the session's subscription to its device, if any.
func (ss *session) stopWatching() {
	ss.unwatchOnce.Do(func() {
		if ss.unwatch != nil {
			ss.unwatch()
		}
	})
}

// replaced closes the session that a newer one of its device replaced.
func (ss *session) replaced() {
	ss.log.Info("session replaced by a newer one")
	ss.close(closeReplaced, "replaced by a newer session")
}

// close ends the session once: it sends a close frame unless code is 0
// and closes the connection, which ends both loops.
func (ss *session) close(code int, text string) {
	ss.once.Do(func() {
		ss.reason = text
		// Under the lock that wake takes: no writer starts once the
		// session is over, so waiting for the writers ends.
		ss.mu.Lock()
		close(ss.done)
		ss.mu.Unlock()
		if code != 0 {
			ss.srv.closeConn(ss.conn, code, text)
		}
		ss.conn.Close()
	})
}

// finish has the writer send b (a goaway, an error), the session's last
// data frame, and then close the session with code: data frames go
// through the writer only.
func (ss *session) finish(b wire.Body, code int, text string) {
	frame, err := wire.Encode("", b)
	if err != nil {
		ss.log.Error("encode last frame", "type", b.FrameType(), "err", err)
		ss.close(code, text)
		return
	}
	select {
	case ss.final <- finalFrame{frame, code, text}:
		ss.wake()
	default: // one is on its way already
	}
}

// retryRead has the writer look at the device's queue again after
// readRetry, unless a look is due already.
func (ss *session) retryRead() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.rereading {
		return
	}
	ss.rereading = true
	ss.srv.cfg.afterFunc(readRetry, func() {
		ss.mu.Lock()
		ss.rereading = false
		ss.mu.Unlock()
		ss.notify()
	})
}

func (ss *session) notify() {
	select {
	case ss.kick <- struct{}{}:
		ss.wake()
	default: // the writer looks at the queue already
	}
}

// wake starts the writer unless it runs, or the session is over. Whoever
// hands the writer something calls it after: the writer, before it ends,
// looks at its channels under the lock that wake takes.
func (ss *session) wake() {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	select {
	case <-ss.done:
		return
	default:
	}
	if !ss.writing {
		ss.writing = true
		ss.writers.Go(ss.writeLoop)
	}
}

// idle reports, under ss.mu, whether the writer has nothing to do.
func (ss *session) idle() bool {
	return len(ss.final) == 0 && len(ss.replies) == 0 && len(ss.kick) == 0
}

func (ss *session) deliverNow(m store.Message) bool {
	ss.mu.Lock()
	mode, wifi := ss.mode, ss.wifi
	ss.mu.Unlock()
	if holds(mode, wifi, m) {
		// GCM's rule: a normal-priority message with time to live 0 to
		// an idle device cannot be delivered now, so never.
		ss.log.Debug("time-to-live 0 message dropped: the device is idle", "mode", mode, "message_id", m.ID)
		return false
	}
	ss.mu.Lock()
	full := len(ss.direct) >= directQueue
	if !full {
		ss.direct = append(ss.direct, m)
	}
	ss.mu.Unlock()
	if full {
		return false
	}
	ss.wake()
	return true
}

// sentEntry is a message or notice in flight in a session.
type sentEntry struct {
	// plainApp is the app of a non-collapsible message, which GCM's cap
	// on waiting messages leaves out (flowing); empty for the others.
	plainApp string
	// acked says the device's ack was read; its commit may still run.
	acked bool
}

// markInflight notes id as sent and not acked, with plainApp the app of
// a non-collapsible message (else empty); under mu. The set is made at the
// first message: an idle session that never had one holds none.
func (ss *session) markInflight(id, plainApp string) {
	if ss.inflight == nil {
		ss.inflight = make(map[string]sentEntry)
	}
	ss.inflight[id] = sentEntry{plainApp: plainApp}
}

// plainApp is the app of m when GCM's cap on non-collapsible messages
// counts it, else empty (markInflight).
func plainApp(m store.Message) string {
	if m.CollapseKey != "" {
		return ""
	}
	return m.App
}

// unmarkInflight forgets id, whose ack is committed or which the device
// cannot take, and reports whether it was in flight; under mu.
func (ss *session) unmarkInflight(id string) bool {
	e, ok := ss.inflight[id]
	if e.acked {
		ss.acked--
	}
	delete(ss.inflight, id)
	return ok
}

// windowFree is how many more messages the window lets the writer send;
// under mu.
func (ss *session) windowFree() int {
	return ss.srv.cfg.Window - (len(ss.inflight) - ss.acked)
}

// readingStore is called by fill, on the writer, before each read of the
// store for notices or messages to send.
func (ss *session) readingStore() {
	ss.mu.Lock()
	ss.reading = true
	clear(ss.ackedLately)
	ss.mu.Unlock()
}

// doneReading ends what readingStore began, when fill is over.
func (ss *session) doneReading() {
	ss.mu.Lock()
	ss.reading = false
	ss.ackedLately = nil
	ss.mu.Unlock()
}

// alreadySent reports whether the message or notice id, listed by the
// read that readingStore began, went to the device in this session: it is
// in flight, or its ack committed during the read, which was then stale;
// under mu.
func (ss *session) alreadySent(id string) bool {
	if _, ok := ss.inflight[id]; ok {
		return true
	}
	_, ok := ss.ackedLately[id]
	return ok
}

// offer takes m, queued in a transaction whose commit runs, to send at
// once when the device is on mains, the window has room and nothing
// stored waits to go before it; else fill sends it after the commit.
func (ss *session) offer(m store.Message) {
	ss.mu.Lock()
	_, sent := ss.inflight[m.ID]
	take := !sent && ss.caughtUp && ss.mode == wire.ModeMains && ss.windowFree() > 0
	switch {
	case take:
		ss.markInflight(m.ID, plainApp(m))
		ss.early = append(ss.early, m)
	case !sent:
		ss.caughtUp = false
		ss.offerMisses++
	}
	ss.mu.Unlock()
	if take {
		ss.wake()
	}
}

// writeEarly sends the offered messages; writer only.
func (ss *session) writeEarly() error {
	ss.mu.Lock()
	early := ss.early
	ss.early = nil
	ss.mu.Unlock()
	now := ss.srv.now()
	for _, m := range early {
		if frame := ss.encodeMessage(m, now); frame != nil {
			if err := ss.writeMessage(frame); err != nil {
				return err
			}
		}
	}
	return nil
}

// flowing lists app's non-collapsible messages sent in this session whose
// ack is not committed: they flow to a device that keeps up, and do not
// wait.
func (ss *session) flowing(app string) []string {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var ids []string
	for id, e := range ss.inflight {
		if e.plainApp == app {
			ids = append(ids, id)
		}
	}
	return ids
}

// reply queues a frame for the writer.
func (ss *session) reply(ref string, b wire.Body) {
	frame, err := wire.Encode(ref, b)
	if err != nil {
		ss.log.Error("encode reply", "type", b.FrameType(), "err", err)
		return
	}
	select {
	case ss.replies <- frame:
		ss.wake()
	case <-ss.done:
	}
}

func (ss *session) replyError(ref, code, message string) {
	ss.reply(ref, wire.Error{Code: code, Message: message})
}

func (ss *session) readLoop() error {
	for {
		ss.conn.SetReadDeadline(time.Now().Add(ss.timeout))
		_, data, err := ss.conn.ReadMessage()
		if err != nil {
			return err
		}
		// On a goroutine that ends with the frame, and the reader waits
		// for it: decoding and handling a frame grow a stack to 8 KiB,
		// and the runtime shrinks a stack only when its goroutine uses
		// under a quarter of it, which a reader waiting in gorilla and
		// crypto/tls does not (2.1 KiB). Handled here, one frame would
		// leave an idle session's reader holding 8 KiB, not 4.
		var handler sync.WaitGroup
		handler.Go(func() { ss.handle(data) })
		handler.Wait()
	}
}

func (ss *session) handle(data []byte) {
	f, err := ss.codec.Decode(data)
	if err != nil {
		ss.log.Debug("bad frame", "err", err)
		ss.replyError("", wire.CodeBadFrame, err.Error())
		return
	}
	switch f.Type {
	case wire.TypeRegister:
		ss.register(f)
	case wire.TypeUnregister:
		ss.unregister(f)
	case wire.TypeAck:
		ss.ack(f)
	case wire.TypeUpstream:
		ss.upstream(f)
	case wire.TypeSubscribe:
		ss.subscribe(f)
	case wire.TypeUnsubscribe:
		ss.unsubscribe(f)
	case wire.TypeState:
		ss.state(f)
	case wire.TypeHello:
		ss.replyError(f.Ref, wire.CodeInvalid, "the session is open already; hello comes only first")
	case wire.TypeError:
		// The agent's word on a frame of ours; never answered, so that two
		// peers cannot keep answering each other's errors.
		var e wire.Error
		if f.Decode(&e) == nil {
			ss.log.Debug("device reports an error", "ref", f.Ref, "code", e.Code, "message", e.Message)
			if e.Code == wire.CodeUnknownType && f.Ref != "" {
				ss.dropNotice(f.Ref)
			}
		}
	default:
		ss.log.Debug("unknown frame type", "type", f.Type)
		ss.replyError(f.Ref, wire.CodeUnknownType, fmt.Sprintf("unknown frame type %.40q", f.Type))
	}
}

// decode decodes f's body into b or answers a bad_frame error.
func (ss *session) decode(f wire.Frame, b wire.Body) bool {
	if err := f.Decode(b); err != nil {
		ss.log.Debug("bad frame body", "type", f.Type, "err", err)
		ss.replyError(f.Ref, wire.CodeBadFrame, err.Error())
		return false
	}
	return true
}

func (ss *session) register(f wire.Frame) {
	var req wire.Register
	if !ss.decode(f, &req) {
		return
	}
	origin := ss.srv.PublicOrigin()
	if req.Sender == store.WebPushSender && origin == "" {
		ss.replyError(f.Ref, wire.CodeInvalid, "this server takes no Web Push registrations: it has no public URL (tether-server serve --public-url)")
		return
	}
	if req.VAPID != "" {
		if _, err := decodeVAPIDKey(req.VAPID); err != nil {
			ss.replyError(f.Ref, wire.CodeInvalid, "vapid: "+err.Error())
			return
		}
	}
	reg, err := ss.srv.store.Register(ss.ctx, ss.device, req.App, req.Sender, req.VAPID, ss.srv.now())
	switch {
	case err == nil && reg.VAPID != req.VAPID:
		ss.replyError(f.Ref, wire.CodeInvalid, "the app is registered with another VAPID key; unregister it first")
		return
	case errors.Is(err, store.ErrNotFound):
		ss.replyError(f.Ref, wire.CodeNotRegistered, fmt.Sprintf("no sender with ID %s", req.Sender))
		return
	case errors.Is(err, store.ErrTooManyRegistrations):
		ss.replyError(f.Ref, wire.CodeInvalid, fmt.Sprintf("the device has %d registrations already, the most allowed; unregister one first", store.MaxRegistrationsPerDevice))
		return
	case err != nil:
		ss.log.Error("register", "app", req.App, "sender", req.Sender, "err", err)
		ss.replyError(f.Ref, wire.CodeUnavailable, "cannot store the registration now; try again later")
		return
	}
	ss.log.Info("registered", "app", req.App, "sender", req.Sender)
	ans := wire.Registered{App: req.App, Sender: req.Sender, Token: reg.Token}
	if req.Sender == store.WebPushSender {
		ans.Endpoint = webPushEndpoint(origin, reg.Token)
	}
	ss.reply(f.Ref, ans)
}

func (ss *session) unregister(f wire.Frame) {
	var req wire.Unregister
	if !ss.decode(f, &req) {
		return
	}
	dropped, err := ss.srv.store.Unregister(ss.ctx, ss.device, req.App, req.Sender, ss.srv.now())
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		ss.log.Error("unregister", "app", req.App, "sender", req.Sender, "err", err)
		ss.replyError(f.Ref, wire.CodeUnavailable, "cannot store the change now; try again later")
		return
	}
	// Unregistering what is not registered succeeds: the agent may be
	// repeating a request whose answer it lost.
	if err == nil {
		ss.log.Info("unregistered", "app", req.App, "sender", req.Sender, "dropped_messages", dropped)
	}
	ss.reply(f.Ref, wire.Unregistered{App: req.App, Sender: req.Sender})
}

// ack queues the acked IDs for the acker, starting one if none runs: a
// reader that committed each ack itself would read nothing while the
// commit ran, and an agent acking message by message would wait a commit
// per message.
func (ss *session) ack(f wire.Frame) {
	var req wire.Ack
	if !ss.decode(f, &req) {
		return
	}
	ss.mu.Lock()
	ss.acks = append(ss.acks, req.IDs...)
	start := !ss.acking
	ss.acking = true
	freed := false
	for _, id := range req.IDs {
		if e, ok := ss.inflight[id]; ok && !e.acked {
			e.acked = true
			ss.inflight[id] = e
			ss.acked++
			freed = true
		}
	}
	ss.mu.Unlock()
	if start {
		ss.ackers.Go(ss.ackLoop)
	}
	if freed {
		ss.notify() // the window has room while the acks commit
	}
}

// ackLoop commits the queued acks, as many at a time as are queued, until
// none are left.
func (ss *session) ackLoop() {
	for {
		ss.mu.Lock()
		ids := ss.acks
		ss.acks = nil
		if len(ids) == 0 {
			ss.acking = false
			ss.mu.Unlock()
			return
		}
		ss.mu.Unlock()
		ss.commitAcks(ids)
	}
}

// commitAcks deletes acked messages from the store, queues the receipts
// they asked for and lets the writer send more.
func (ss *session) commitAcks(ids []string) {
	now := ss.srv.now()
	// An ack that fails to commit only means a redelivery next session,
	// which the agent drops as a duplicate.
	acked, receipts, err := ss.srv.store.Ack(ss.ctx, ss.device, ids, now)
	if err != nil {
		ss.log.Error("ack", "count", len(ids), "err", err)
	}
	ss.srv.metrics.acks.Add(float64(acked))
	var live []store.Message
	ss.mu.Lock()
	for _, id := range ids {
		if ss.unmarkInflight(id) && ss.reading {
			if ss.ackedLately == nil {
				ss.ackedLately = make(map[string]struct{})
			}
			ss.ackedLately[id] = struct{}{}
		}
		if m, ok := ss.liveReceipts[id]; ok {
			live = append(live, m)
			delete(ss.liveReceipts, id)
		}
	}
	ss.mu.Unlock()
	if len(live) > 0 {
		more, err := ss.srv.store.AddReceipts(ss.ctx, live, now)
		if err != nil {
			ss.log.Error("queue delivery receipts", "count", len(live), "err", err)
		}
		receipts = append(receipts, more...)
	}
	for _, u := range receipts {
		ss.srv.up.add(u)
	}
	ss.notify()
}

// dropNotice forgets a notice the agent does not know how to take (an
// agent older than the notice's frame type): it would never ack it.
func (ss *session) dropNotice(id string) {
	ss.mu.Lock()
	sent := ss.unmarkInflight(id)
	ss.mu.Unlock()
	if !sent {
		return
	}
	if _, _, err := ss.srv.store.Ack(ss.ctx, ss.device, []string{id}, ss.srv.now()); err != nil {
		ss.log.Error("drop notice", "err", err)
	}
	ss.log.Info("agent does not take this notice; dropped", "notice", id)
	ss.notify()
}

func (ss *session) subscribe(f wire.Frame) {
	var req wire.Subscribe
	if !ss.decode(f, &req) {
		return
	}
	err := ss.srv.store.Subscribe(ss.ctx, ss.device, req.App, req.Sender, req.Topic, ss.srv.now())
	switch {
	case errors.Is(err, store.ErrNotFound):
		ss.replyError(f.Ref, wire.CodeNotRegistered, fmt.Sprintf("app %q has no registration for sender %s", req.App, req.Sender))
		return
	case errors.Is(err, store.ErrTooManyTopics):
		ss.replyError(f.Ref, wire.CodeInvalid, fmt.Sprintf("the registration has %d topics already, the most allowed", store.MaxTopicsPerRegistration))
		return
	case err != nil:
		ss.log.Error("subscribe", "app", req.App, "sender", req.Sender, "err", err)
		ss.replyError(f.Ref, wire.CodeUnavailable, "cannot store the subscription now; try again later")
		return
	}
	ss.log.Debug("subscribed", "app", req.App, "sender", req.Sender, "topic", req.Topic)
	ss.reply(f.Ref, wire.Subscribed{App: req.App, Sender: req.Sender, Topic: req.Topic})
}

func (ss *session) unsubscribe(f wire.Frame) {
	var req wire.Unsubscribe
	if !ss.decode(f, &req) {
		return
	}
	if err := ss.srv.store.Unsubscribe(ss.ctx, ss.device, req.App, req.Sender, req.Topic); err != nil {
		ss.log.Error("unsubscribe", "app", req.App, "sender", req.Sender, "err", err)
		ss.replyError(f.Ref, wire.CodeUnavailable, "cannot store the change now; try again later")
		return
	}
	ss.log.Debug("unsubscribed", "app", req.App, "sender", req.Sender, "topic", req.Topic)
	ss.reply(f.Ref, wire.Unsubscribed{App: req.App, Sender: req.Sender, Topic: req.Topic})
}

func (ss *session) upstream(f wire.Frame) {
	var req wire.Upstream
	if !ss.decode(f, &req) {
		return
	}
	// The rate counts the messages stored: repeats and refusals are
	// answered without taking from it. A session handles its frames one
	// at a time, so nothing takes from the device's rate between the look
	// and the take.
	if ss.srv.upstreamRate.exhausted(ss.ctx, ss.device) {
		ss.log.Debug("upstream message refused for now: over the device's upstream rate", "app", req.App, "message_id", req.ID)
		ss.replyError(f.Ref, wire.CodeUnavailable, "over the device's upstream rate; try again later")
		return
	}
	now := ss.srv.now()
	ttl := secondsDuration(req.TTL)
	u := store.Upstream{
		Device: ss.device, App: req.App, Sender: req.To, ID: req.ID, Priority: req.Priority,
		Data: req.Data, TTL: req.TTL, Received: now, Expiry: now.Add(ttl),
	}
	outcome, err := ss.srv.store.PutUpstream(ss.ctx, &u, now.Add(max(ttl, minUpstreamDedupe)))
	ack := wire.UpstreamAck{App: req.App, ID: req.ID}
	switch {
	case err != nil:
		ss.log.Error("store upstream message", "app", req.App, "message_id", req.ID, "err", err)
		ss.replyError(f.Ref, wire.CodeUnavailable, "cannot store the message now; try again later")
		return
	case outcome == store.UpstreamNotRegistered:
		ack.Error = wire.UpstreamNotRegistered
		ss.log.Info("upstream message refused: not registered", "app", req.App, "sender", req.To, "message_id", req.ID)
	case outcome == store.UpstreamTooManyMessages:
		ack.Error = wire.UpstreamTooManyMessages
		ss.log.Info("upstream message refused: the app has the most waiting for its app server", "app", req.App, "sender", req.To, "message_id", req.ID)
	case outcome == store.UpstreamDuplicate:
		ss.log.Debug("upstream message repeated", "app", req.App, "message_id", req.ID)
	default:
		ss.log.Debug("upstream message queued", "app", req.App, "sender", req.To, "message_id", req.ID)
		ss.srv.metrics.upstreamQueued.Inc()
		ss.srv.upstreamRate.allow(ss.ctx, ss.device)
		ss.srv.up.add(u)
	}
	ss.reply(f.Ref, ack)
}

// writeLoop is the session's only data writer, run by wake while there is
// something to write; it ends when there is nothing.
func (ss *session) writeLoop() {
	for {
		var err error
		select {
		case <-ss.done:
			return
		default:
		}
		select {
		case f := <-ss.final:
			if err := ss.write(f.frame); err != nil {
				ss.log.Debug("write last frame", "err", err)
			}
			ss.close(f.code, f.text)
			return
		case frame := <-ss.replies:
			err = ss.write(frame)
		case <-ss.kick:
			err = ss.fill()
		default:
			ss.mu.Lock()
			if len(ss.direct) == 0 && len(ss.early) == 0 && ss.idle() {
				ss.writing = false
				ss.mu.Unlock()
				return
			}
			if len(ss.early) > 0 {
				ss.mu.Unlock()
				err = ss.writeEarly()
				break
			}
			var m store.Message
			direct := len(ss.direct) > 0
			if direct {
				m = ss.direct[0]
				ss.direct = slices.Delete(ss.direct, 0, 1)
				if len(ss.direct) == 0 {
					ss.direct = nil
				}
			}
			ss.mu.Unlock()
			if direct {
				err = ss.writeDirect(m)
			}
		}
		if err != nil {
			ss.log.Debug("write failed", "err", err)
			ss.close(0, "")
			return
		}
	}
}

func (ss *session) write(frame []byte) error {
	ss.conn.SetWriteDeadline(time.Now().Add(ss.srv.cfg.WriteTimeout))
	return ss.conn.WriteMessage(wire.MessageType(frame), frame)
}

// writeMessage writes the frame of a downstream message and counts it
// delivered.
func (ss *session) writeMessage(frame []byte) error {
	if err := ss.write(frame); err != nil {
		return err
	}
	ss.srv.metrics.deliveries.Inc()
	return nil
}

// writeDirect sends a time-to-live-0 message. A high-priority one wakes
// the radio of a device on battery, so the messages held for it follow.
func (ss *session) writeDirect(m store.Message) error {
	frame := ss.encodeMessage(m, ss.srv.now())
	if frame == nil {
		return nil
	}
	if m.Receipt {
		ss.mu.Lock()
		if ss.liveReceipts == nil {
			ss.liveReceipts = make(map[string]store.Message)
		}
		if len(ss.liveReceipts) < maxLiveReceipts {
			ss.liveReceipts[m.ID] = m
		}
		ss.mu.Unlock()
	}
	if err := ss.writeMessage(frame); err != nil {
		return err
	}
	ss.mu.Lock()
	mode, wifi := ss.mode, ss.wifi
	ss.mu.Unlock()
	if mode == wire.ModeBattery && !holds(mode, wifi, m) {
		// Queued messages the writer has not looked at yet go too.
		ss.rewind(true)
		return ss.fill()
	}
	return nil
}

// fill sends the device's notices not sent yet in this session, then
// queued messages after the cursor until the window is full or the queue
// is empty. Messages the power mode holds back are passed over and
// remembered (holdState); a flush rewinds the cursor to the first of them.
func (ss *session) fill() error {
	defer ss.doneReading()
	// Offered messages go first: the queue may hold them by now, and
	// what follows them there must not overtake them.
	if err := ss.writeEarly(); err != nil {
		return err
	}
	if err := ss.sendNotices(); err != nil {
		return err
	}
	ss.mu.Lock()
	mode, wifi, rescan, flushDue := ss.mode, ss.wifi, ss.rescan, ss.flushDue
	ss.rescan, ss.flushDue = false, false
	ss.mu.Unlock()
	if rescan {
		ss.rewind(false)
	}
	if flushDue && mode == wire.ModeBattery {
		ss.log.Debug("held messages reached their maximum delay")
		ss.rewind(true)
	}
	defer ss.armHoldTimer(mode)
	batch := ss.srv.cfg.Window
	for {
		ss.mu.Lock()
		free, misses := ss.windowFree(), ss.offerMisses
		if free <= 0 {
			ss.caughtUp = false
		}
		ss.mu.Unlock()
		if free <= 0 {
			return nil
		}
		ss.readingStore()
		msgs, last, err := ss.srv.store.Pending(ss.ctx, ss.device, ss.cursor, batch, ss.sentEarlier)
		if err != nil {
			ss.log.Error("read queue", "err", err)
			ss.retryRead()
			return nil
		}
		now := ss.srv.now()
		rewound := false
		for _, m := range msgs {
			if free == 0 {
				ss.mu.Lock()
				ss.caughtUp = false
				ss.mu.Unlock()
				return nil
			}
			ss.cursor = m.Seq
			if !m.Expiry.After(now) {
				continue
			}
			if !ss.hold.releasing && holds(mode, wifi, m) {
				ss.hold.add(m)
				continue
			}
			frame := ss.encodeMessage(m, now)
			if frame == nil {
				continue
			}
			// In flight before the write: the ack may come back before
			// the write returns.
			ss.mu.Lock()
			ss.markInflight(m.ID, plainApp(m))
			ss.mu.Unlock()
			if err := ss.writeMessage(frame); err != nil {
				return err
			}
			free--
			if mode == wire.ModeBattery && !holds(mode, wifi, m) && !ss.hold.releasing {
				// A high-priority message woke the radio: the held
				// messages go right behind it, and the rest of the
				// queue with them.
				rewound = ss.hold.first != 0
				ss.rewind(true)
				if rewound {
					break
				}
			}
		}
		if rewound {
			continue
		}
		// Past what the store left out after the last message too.
		ss.cursor = last
		if len(msgs) < batch {
			ss.hold.releasing = false // the flush reached the end of the queue
			ss.mu.Lock()
			// Held messages stay behind in the queue, but offers are
			// taken on mains only, where nothing is held.
			ss.caughtUp = ss.offerMisses == misses
			ss.mu.Unlock()
			return nil
		}
	}
}

// sentEarlier is fill's skip for the store's Pending: the messages that
// went to the device earlier in this session, offered early or looked at
// again after a rewind (alreadySent). None is offered once a read can see
// it (store.Live), so what the read returns is still unsent when fill
// comes to it. The store calls it inside its read, so it takes mu for
// each message rather than across the read.
func (ss *session) sentEarlier(id string) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.alreadySent(id)
}

// sendNotices sends the notices that are not in flight in this session.
// They take places in the window like messages.
func (ss *session) sendNotices() error {
	ss.readingStore()
	notices, err := ss.srv.store.Notices(ss.ctx, ss.device)
	if err != nil {
		ss.log.Error("read notices", "err", err)
		ss.retryRead()
		return nil
	}
	for _, n := range notices {
		ss.mu.Lock()
		sent := ss.alreadySent(n.ID)
		if !sent {
			ss.markInflight(n.ID, "")
		}
		ss.mu.Unlock()
		if sent {
			continue
		}
		var body wire.Body
		switch n.Kind {
		case store.NoticeTokenRefresh:
			tr := wire.TokenRefresh{ID: n.ID, App: n.App, Sender: n.Sender, Token: n.Token}
			if origin := ss.srv.PublicOrigin(); n.Sender == store.WebPushSender && origin != "" {
				tr.Endpoint = webPushEndpoint(origin, n.Token)
			}
			body = tr
		case store.NoticeDeleted:
			body = wire.DeletedMessages{ID: n.ID, App: n.App, Count: n.Count}
		default:
			continue
		}
		// The ref is the notice's ID, so that an agent that does not know
		// the frame type names it in its unknown_type error.
		frame, err := wire.Encode(n.ID, body)
		if err != nil {
			ss.log.Error("encode notice", "notice", n.ID, "err", err)
			continue
		}
		ss.log.Debug("notice sent", "notice", n.ID, "type", body.FrameType(), "app", n.App)
		if err := ss.write(frame); err != nil {
			return err
		}
	}
	return nil
}

// encodeMessage encodes m with the time it has left to live, or returns
// nil and logs when m does not fit the wire. Sends are checked against the
// wire's limits before they are accepted, so that is a bug; it costs the
// message, not the session.
func (ss *session) encodeMessage(m store.Message, now time.Time) []byte {
	ttl := int64(0)
	if left := m.Expiry.Sub(now); left > 0 {
		// Round up: a message with half a second left is still alive.
		ttl = int64((left + time.Second - 1) / time.Second)
	}
	frame, err := ss.codec.Encode("", wire.Message{
		ID: m.ID, Token: m.Token, App: m.App, From: m.Sender, CollapseKey: m.CollapseKey,
		Data: m.Data, Priority: m.Priority, TTL: min(ttl, wire.MaxTTL), SentTime: m.Sent.UnixMilli(),
		Notification: m.Notification, Topic: m.Topic, Raw: m.Raw,
	})
	if err != nil {
		ss.log.Error("encode message", "message_id", m.ID, "err", err)
		return nil
	}
	return frame
}
