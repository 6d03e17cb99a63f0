// SPDX-License-Identifier: Apache-2.0

package socketdoor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"tether/ipc"
)

const (
	// DefaultWriteTimeout bounds every write to an app; one that does not
	// read for this long is dropped.
	DefaultWriteTimeout = 10 * time.Second
	// DefaultMode lets every local user connect: who may do what is
	// decided per request from the caller's kernel credentials.
	DefaultMode os.FileMode = 0o666
	// DefaultMaxConnsPerUser bounds the connections one Unix user holds at
	// once, so that one user cannot take every file descriptor the agent
	// has.
	DefaultMaxConnsPerUser = 64
)

// Config configures a Server.
type Config struct {
	// Path of the socket file. Its directory is created (0755) if missing.
	Path string
	// Mode of the socket file; zero means DefaultMode.
	Mode os.FileMode
	// Backend serves the requests.
	Backend ipc.Backend
	// Logger; nil means slog.Default().
	Logger *slog.Logger
	// WriteTimeout bounds each write to an app; zero means
	// DefaultWriteTimeout.
	WriteTimeout time.Duration
	// MaxConnsPerUser bounds the connections of one uid; zero means
	// DefaultMaxConnsPerUser. One more is answered TooManyConnections and
	// closed.
	MaxConnsPerUser int
}

// Server is the Unix socket door: newline-delimited JSON requests
// from local apps, answered by a Backend, with the backend's events pushed
// to listening connections. The protocol is described in docs/ipc.md.
type Server struct {
	backend      ipc.Backend
	log          *slog.Logger
	ln           *net.UnixListener
	writeTimeout time.Duration

	// ctx is the parent of every connection's context; Close cancels it so
	// that backend calls in progress give up.
	ctx    context.Context
	cancel context.CancelFunc

	maxConnsPerUser int

	mu     sync.Mutex
	closed bool
	conns  map[*socketConn]struct{}
	byUID  map[uint32]int // open connections per uid

	wg        sync.WaitGroup // one per connection
	closeOnce sync.Once
	closeErr  error
}

// New creates the socket file and listens on it. A socket file
// left over from an earlier run is removed; one that another process still
// listens on, or a path that is not a socket, is an error.
func New(cfg Config) (*Server, error) {
	if cfg.Path == "" {
		return nil, errors.New("socket door: no socket path")
	}
	if cfg.Backend == nil {
		return nil, errors.New("socket door: no backend")
	}
	mode := cfg.Mode
	if mode == 0 {
		mode = DefaultMode
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Path), 0o755); err != nil {
		return nil, fmt.Errorf("socket door: create socket directory: %w", err)
	}
	if err := removeStaleSocket(cfg.Path); err != nil {
		return nil, fmt.Errorf("socket door: %w", err)
	}
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: cfg.Path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("socket door: %w", err)
	}
	if err := os.Chmod(cfg.Path, mode); err != nil {
		ln.Close()
		return nil, fmt.Errorf("socket door: set socket mode: %w", err)
	}
	writeTimeout := cfg.WriteTimeout
	if writeTimeout == 0 {
		writeTimeout = DefaultWriteTimeout
	}
	maxConns := cfg.MaxConnsPerUser
	if maxConns <= 0 {
		maxConns = DefaultMaxConnsPerUser
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Server{
		maxConnsPerUser: maxConns,
		byUID:           make(map[uint32]int),
		writeTimeout:    writeTimeout,
		backend:         cfg.Backend,
		log:             log.With("door", "socket"),
		ln:              ln,
		ctx:             ctx,
		cancel:          cancel,
		conns:           make(map[*socketConn]struct{}),
	}, nil
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check socket file: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; not replacing it", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return fmt.Errorf("another process is listening on %s", path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale socket: %w", err)
	}
	return nil
}

// Serve accepts connections until ctx ends or Close is called, then closes
// the server and returns once every connection is gone.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	defer s.Close()

	var backoff time.Duration
	for {
		nc, err := s.ln.AcceptUnix()
		if err != nil {
			if s.isClosed() {
				return nil
			}
			// Running out of file descriptors passes; spinning on it
			// would not help it pass.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed", "err", err, "retry_in", backoff)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-s.ctx.Done():
				t.Stop()
			}
			continue
		}
		backoff = 0
		s.start(nc)
	}
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Server) start(nc *net.UnixConn) {
	caller, err := peerCaller(nc)
	if err != nil {
		s.log.Warn("refusing connection", "err", err)
		nc.Close()
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	c := &socketConn{
		writeTimeout: s.writeTimeout,
		backend:      s.backend,
		nc:           nc,
		caller:       caller,
		log:          s.log.With("uid", caller.UID, "pid", caller.PID),
		ctx:          ctx,
		cancel:       cancel,
		out:          make(chan outLine, ipc.MaxQueuedEvents),
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		cancel()
		nc.Close()
		return
	}
	s.conns[c] = struct{}{}
	s.byUID[caller.UID]++
	over := s.byUID[caller.UID] > s.maxConnsPerUser
	s.wg.Add(1)
	s.mu.Unlock()

	go func() {
		defer s.wg.Done()
		if over {
			c.log.Warn("connection refused: the user has as many as it may", "max", s.maxConnsPerUser)
			c.refuse(ipc.Response{Error: &ipc.ResponseError{
				Code:    ipc.CodeTooManyConnections,
				Message: fmt.Sprintf("uid %d has %d connections to the agent already, the most allowed; closing this one", caller.UID, s.maxConnsPerUser),
			}})
		} else {
			c.run()
		}
		s.mu.Lock()
		delete(s.conns, c)
		if s.byUID[caller.UID]--; s.byUID[caller.UID] == 0 {
			delete(s.byUID, caller.UID)
		}
		s.mu.Unlock()
	}()
}

// Close stops accepting, closes every connection (cancelling the backend
// calls they are making) and waits until all of the server's goroutines
// have returned. It removes the socket file.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		conns := make([]*socketConn, 0, len(s.conns))
		for c := range s.conns {
			conns = append(conns, c)
		}
		s.mu.Unlock()

		s.cancel()
		if err := s.ln.Close(); err != nil {
			s.closeErr = fmt.Errorf("socket door: close: %w", err)
		}
		for _, c := range conns {
			c.shutdown()
		}
	})
	s.wg.Wait()
	return s.closeErr
}

// outLine is one line queued for an app. closeAfter ends the connection
// once the line is written (or at once, for a line with no data).
type outLine struct {
	data       []byte
	closeAfter bool
}

// socketConn is one app connection. Its run goroutine reads and handles
// requests one at a time; a writer goroutine owns all writes, fed by out.
type socketConn struct {
	writeTimeout time.Duration
	backend      ipc.Backend
	nc           *net.UnixConn
	caller       ipc.Caller
	log          *slog.Logger

	// ctx ends when the connection does; its cancel is part of shutdown.
	ctx    context.Context
	cancel context.CancelFunc
	out    chan outLine

	wg           sync.WaitGroup // the writer and sends waiting for an outcome
	shutdownOnce sync.Once

	// Owned by the run goroutine.
	listener     *socketListener
	cancelListen func()
}

func (c *socketConn) run() {
	c.log.Debug("app connected")
	c.wg.Add(1)
	go c.writeLoop()

	c.readLoop()

	c.shutdown()
	if c.listener != nil && !c.listener.wasReplaced() {
		c.cancelListen()
	}
	c.wg.Wait()
	c.log.Debug("app disconnected")
}

// refuse answers resp and closes the connection without reading from it.
func (c *socketConn) refuse(resp ipc.Response) {
	c.wg.Add(1)
	go c.writeLoop()
	c.respondThenClose(resp)
	c.shutdown()
	c.wg.Wait()
}

// shutdown ends the connection: it stops the writer, the waiting sends
// and any read in progress. Safe to call from any goroutine, any number of
// times; it never blocks.
func (c *socketConn) shutdown() {
	c.shutdownOnce.Do(func() {
		c.cancel()
		c.nc.Close()
	})
}

func (c *socketConn) readLoop() {
	r := bufio.NewReader(c.nc)
	for {
		line, err := readLine(r, ipc.MaxLineSize)
		if errors.Is(err, errLineTooLong) {
			c.log.Debug("request line too long")
			c.respondThenClose(ipc.Response{Error: &ipc.ResponseError{
				Code:    ipc.CodeLineTooLong,
				Message: fmt.Sprintf("request line is longer than %d bytes; closing the connection", ipc.MaxLineSize),
			}})
			return
		}
		if (err == nil || err == io.EOF) && len(bytes.TrimSpace(line)) > 0 {
			c.handle(line, r)
		}
		if err == io.EOF {
			// The app is done sending: write what is already answered,
			// then close.
			c.enqueue(outLine{closeAfter: true})
			<-c.ctx.Done()
			return
		}
		if err != nil {
			if c.ctx.Err() == nil {
				c.log.Debug("read failed", "err", err)
			}
			return
		}
	}
}

var errLineTooLong = errors.New("line too long")

// readLine reads up to and without the next newline. It gives up with
// errLineTooLong once the line is longer than max. A last line without a
// newline is returned together with io.EOF.
func readLine(r *bufio.Reader, max int) ([]byte, error) {
	var line []byte
	for {
		chunk, err := r.ReadSlice('\n')
		line = append(line, chunk...)
		if err == nil {
			line = line[:len(line)-1]
		}
		if len(line) > max {
			return nil, errLineTooLong
		}
		if err != bufio.ErrBufferFull {
			return line, err
		}
	}
}

func (c *socketConn) writeLoop() {
	defer c.wg.Done()
	for {
		select {
		case <-c.ctx.Done():
			return
		case l := <-c.out:
			if l.data != nil {
				c.nc.SetWriteDeadline(time.Now().Add(c.writeTimeout))
				if _, err := c.nc.Write(l.data); err != nil {
					if c.ctx.Err() == nil {
						c.log.Debug("write failed; dropping the app", "err", err)
					}
					c.shutdown()
					return
				}
				// A deadline left armed wakes the process when it passes.
				c.nc.SetWriteDeadline(time.Time{})
			}
			if l.closeAfter {
				c.shutdown()
				return
			}
		}
	}
}

// enqueue waits for room in the outgoing queue; it is for responses, which
// the run goroutine can afford to wait on (the app that does not read its
// answers stops being read from).
func (c *socketConn) enqueue(l outLine) {
	select {
	case c.out <- l:
	case <-c.ctx.Done():
	}
}

// offer queues a line without waiting, for events pushed by the backend.
// An app that has let the queue fill up is dropped: what it has not acked
// comes again on its next listen.
func (c *socketConn) offer(l outLine) {
	if c.ctx.Err() != nil {
		return
	}
	select {
	case c.out <- l:
	default:
		c.log.Warn("app is not reading its events; dropping it")
		c.shutdown()
	}
}

func (c *socketConn) respond(resp ipc.Response) {
	c.enqueue(outLine{data: c.encodeResponse(resp)})
}

func (c *socketConn) respondThenClose(resp ipc.Response) {
	c.enqueue(outLine{data: c.encodeResponse(resp), closeAfter: true})
	<-c.ctx.Done()
}

func (c *socketConn) encodeResponse(resp ipc.Response) []byte {
	resp.OK = resp.Error == nil
	data, err := json.Marshal(resp)
	if err != nil {
		// Say so rather than leave the app waiting. Without the id,
		// since that may be what failed.
		c.log.Error("encode response", "err", err)
		data, _ = json.Marshal(ipc.Response{Error: &ipc.ResponseError{Code: ipc.CodeInternal, Message: "could not encode the response"}})
	}
	return append(data, '\n')
}

func (c *socketConn) fail(req ipc.Request, err error) {
	resp := backendError(err)
	if resp.Code == ipc.CodeInternal {
		c.log.Warn("request failed", "op", req.Op, "app", req.App, "err", err)
	} else {
		c.log.Debug("request refused", "op", req.Op, "app", req.App, "code", resp.Code, "err", err)
	}
	c.respond(ipc.Response{ID: req.ID, Error: resp})
}

// handle answers one request line; r holds the lines after it, of which
// an ack may take more acks (see moreAcks).
func (c *socketConn) handle(line []byte, r *bufio.Reader) {
	req, rerr := decodeRequest(line)
	if rerr != nil {
		c.log.Debug("bad request", "code", rerr.Code, "err", rerr.Message)
		c.respond(ipc.Response{ID: req.ID, Error: rerr})
		return
	}
	c.log.Debug("request", "op", req.Op, "app", req.App)
	switch req.Op {
	case "register":
		reg, err := c.backend.Register(c.ctx, c.caller, ipc.RegisterRequest{App: req.App, Sender: req.Sender, VAPID: req.VAPID})
		if err != nil {
			c.fail(req, err)
			return
		}
		c.respond(ipc.Response{ID: req.ID, Token: reg.Token, Endpoint: reg.Endpoint})
	case "unregister":
		if err := c.backend.Unregister(c.ctx, c.caller, req.App, req.Sender); err != nil {
			c.fail(req, err)
			return
		}
		c.respond(ipc.Response{ID: req.ID})
	case "subscribe_topic":
		if err := c.backend.SubscribeTopic(c.ctx, c.caller, req.App, req.Sender, req.Topic); err != nil {
			c.fail(req, err)
			return
		}
		c.respond(ipc.Response{ID: req.ID})
	case "unsubscribe_topic":
		if err := c.backend.UnsubscribeTopic(c.ctx, c.caller, req.App, req.Sender, req.Topic); err != nil {
			c.fail(req, err)
			return
		}
		c.respond(ipc.Response{ID: req.ID})
	case "listen":
		c.listen(req)
	case "ack":
		reqs := append([]ipc.Request{req}, moreAcks(r, req.App, len(req.IDs))...)
		ids := req.IDs
		for _, more := range reqs[1:] {
			ids = append(ids, more.IDs...)
		}
		err := c.backend.Ack(c.ctx, c.caller, req.App, ids)
		for _, req := range reqs {
			if err != nil {
				c.fail(req, err)
			} else {
				c.respond(ipc.Response{ID: req.ID})
			}
		}
	case "send":
		c.send(req)
	case "status":
		st, err := c.backend.Status(c.ctx)
		if err != nil {
			c.fail(req, err)
			return
		}
		c.respond(ipc.Response{ID: req.ID, Status: &st})
	default:
		c.respond(ipc.Response{ID: req.ID, Error: &ipc.ResponseError{
			Code:    ipc.CodeUnknownOp,
			Message: fmt.Sprintf("unknown op %q; the ops are register, unregister, subscribe_topic, unsubscribe_topic, listen, ack, send and status", req.Op),
		}})
	}
}

// maxAckBurst bounds the message IDs that acks merged by moreAcks carry.
const maxAckBurst = 1000

// moreAcks takes from r the lines already buffered behind an ack that ack
// messages of the same app, so that one store commit answers them all: an
// app that acks each message as it comes, without waiting for the answers,
// then costs a commit per burst rather than per message. It stops at the
// first other line, which stays in r, and at maxAckBurst IDs in all
// (taken counts those of the first ack); it never waits for input.
func moreAcks(r *bufio.Reader, app string, taken int) []ipc.Request {
	var more []ipc.Request
	for taken < maxAckBurst {
		buf, _ := r.Peek(r.Buffered())
		end := bytes.IndexByte(buf, '\n')
		if end < 0 {
			return more
		}
		req, rerr := decodeRequest(buf[:end])
		if rerr != nil || req.Op != "ack" || req.App != app || len(req.IDs) == 0 {
			return more
		}
		r.Discard(end + 1)
		more = append(more, req)
		taken += len(req.IDs)
	}
	return more
}

func (c *socketConn) listen(req ipc.Request) {
	if c.listener != nil {
		c.respond(ipc.Response{ID: req.ID, Error: &ipc.ResponseError{
			Code:    ipc.CodeAlreadyListening,
			Message: fmt.Sprintf("this connection already listens for app %q; open another connection to listen again", c.listener.app),
		}})
		return
	}
	l := &socketListener{conn: c, app: req.App, holding: true}
	cancel, err := c.backend.Listen(c.ctx, c.caller, req.App, l)
	if err != nil {
		l.discard()
		c.fail(req, err)
		return
	}
	c.listener, c.cancelListen = l, cancel
	c.respond(ipc.Response{ID: req.ID})
	l.release()
}

func (c *socketConn) send(req ipc.Request) {
	id, result, err := c.backend.Send(c.ctx, c.caller, ipc.SendRequest{
		App:      req.App,
		To:       req.To,
		ID:       req.MessageID,
		TTL:      req.TTL,
		Priority: req.Priority,
		Data:     req.Data,
	})
	if err != nil {
		c.fail(req, err)
		return
	}
	if !req.Wait {
		c.respond(ipc.Response{ID: req.ID, MessageID: id})
		return
	}
	// The answer waits for the outcome, which may take as long as the
	// message's TTL; other requests on the connection go on meanwhile.
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		select {
		case r, ok := <-result:
			switch {
			case !ok:
				c.respond(ipc.Response{ID: req.ID, MessageID: id, Error: &ipc.ResponseError{
					Code:    ipc.CodeInternal,
					Message: fmt.Sprintf("the agent gave no outcome for message %q", id),
				}})
			case r.Err != "":
				c.respond(ipc.Response{ID: req.ID, MessageID: id, Error: &ipc.ResponseError{Code: ipc.CodeSendError, Message: r.Err}})
			default:
				c.respond(ipc.Response{ID: req.ID, MessageID: id, Sent: true})
			}
		case <-c.ctx.Done():
		}
	}()
}

// socketListener is the Listener the door hands to the backend for one
// listening connection. Its methods never block: they queue a line or, if
// the app has fallen too far behind, drop the connection.
type socketListener struct {
	conn *socketConn
	app  string

	mu sync.Mutex
	// holding keeps events back until the listen response has been
	// queued, so that the app sees "ok" before the first message.
	holding  bool
	held     []outLine
	replaced bool
	dead     bool
}

func (l *socketListener) Deliver(m ipc.Message) {
	l.push(ipc.Event{Event: ipc.EventMessage, Message: &m}, false)
}

func (l *socketListener) SendResult(r ipc.SendResult) {
	if r.Err == "" {
		l.push(ipc.Event{Event: ipc.EventSent, App: r.App, MessageID: r.ID}, false)
		return
	}
	l.push(ipc.Event{Event: ipc.EventSendError, App: r.App, MessageID: r.ID, Error: r.Err}, false)
}

func (l *socketListener) DeletedMessages(count int) {
	l.push(ipc.Event{Event: ipc.EventDeletedMessages, App: l.app, Count: count}, false)
}

func (l *socketListener) TokenRefreshed(sender, token string) {
	l.push(ipc.Event{Event: ipc.EventTokenRefreshed, App: l.app, Sender: sender, Token: token}, false)
}

func (l *socketListener) Replaced() {
	l.push(ipc.Event{Event: ipc.EventReplaced, App: l.app}, true)
}

func (l *socketListener) push(ev ipc.Event, last bool) {
	data, err := json.Marshal(ev)
	if err != nil {
		l.conn.log.Error("encode event", "event", ev.Event, "err", err)
		return
	}
	line := outLine{data: append(data, '\n'), closeAfter: last}

	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dead || l.replaced {
		return
	}
	l.replaced = last
	if l.holding {
		if len(l.held) == ipc.MaxQueuedEvents {
			l.conn.log.Warn("too many events before the listen response; dropping the app")
			l.conn.shutdown()
			l.dead = true
			return
		}
		l.held = append(l.held, line)
		return
	}
	l.conn.offer(line)
}

// release sends the events held back while the listen response was queued.
func (l *socketListener) release() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, line := range l.held {
		l.conn.offer(line)
	}
	l.held, l.holding = nil, false
}

// discard ignores everything the backend sends to a listener whose Listen
// call failed.
func (l *socketListener) discard() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.held, l.dead = nil, true
}

// wasReplaced reports whether the backend replaced this listener. The
// subscription then ended on the backend's side, and cancelling it again
// could only confuse the one that replaced it.
func (l *socketListener) wasReplaced() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.replaced
}
