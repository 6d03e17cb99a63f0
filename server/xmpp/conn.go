// SPDX-License-Identifier: Apache-2.0

package xmpp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"
)

// Handler gets what one bound stream brings. Its methods are called from
// the connection's reader goroutine, one at a time.
type Handler interface {
	// Message gets the text inside <gcm xmlns="google:mobile:data"> of each
	// message stanza from the client, unescaped, in order. It owns payload.
	// It may block: the client is not read meanwhile, which is backpressure
	// on it; Serve waits for it to return.
	Message(payload []byte)

	// Closed is called exactly once, when the stream has ended: with nil
	// when it was ended politely (by Close or by the client), else with
	// why. Nothing queued with Send is written after it, and Send returns
	// ErrClosed.
	Closed(err error)
}

// ErrClosed is what Send returns once the connection has ended or Close was
// called.
var ErrClosed = errors.New("xmpp: connection closed")

// ErrInvalidPayload is what Send returns for a payload XML 1.0 cannot
// carry: invalid UTF-8, a control character other than tab, newline and
// carriage return, U+FFFE or U+FFFF.
var ErrInvalidPayload = errors.New("xmpp: payload has a character XML cannot carry")

// Conn is one authenticated, bound stream. Its methods are safe for
// concurrent use.
type Conn struct {
	srv *Server
	nc  net.Conn
	log *slog.Logger

	// Set before Open is called, read-only after.
	user, domain, resource string

	// One writer goroutine writes everything: ctrl carries the reader's
	// stream headers and replies, out the payloads of Send (read only once
	// the bind result is written, so nothing overtakes it), end the last
	// bytes of a stream the reader ended.
	ctrl       chan frame
	out        chan []byte
	end        chan []byte
	writerDone chan struct{}

	mu      sync.Mutex
	closed  bool          // Send fails
	closing chan struct{} // closed by Close: write what is queued, then end the stream
	sends   sync.WaitGroup
	ended   atomic.Bool // the writer ended the stream politely

	// rmu orders changes of the read deadline between the reader and
	// those who stop it.
	rmu     sync.Mutex
	stopErr error     // the reader stops with this
	closeBy time.Time // after our end of the stream: the last moment to read

	ids atomic.Uint64
}

type frame struct {
	b        []byte
	startOut bool // after b, write Send's payloads too: the stream is bound
}

func newConn(s *Server, nc net.Conn) *Conn {
	return &Conn{
		srv:        s,
		nc:         nc,
		log:        s.log.With("remote", nc.RemoteAddr().String()),
		ctrl:       make(chan frame, 16),
		out:        make(chan []byte, s.cfg.SendQueue),
		end:        make(chan []byte),
		writerDone: make(chan struct{}),
		closing:    make(chan struct{}),
	}
}

// User is the authenticated user, the sender ID.
func (c *Conn) User() string { return c.user }

// Domain is the domain the user authenticated with, one of Config.Domains.
func (c *Conn) Domain() string { return c.domain }

// JID is the full JID of the stream, user@domain/resource.
func (c *Conn) JID() string { return c.user + "@" + c.domain + "/" + c.resource }

// RemoteAddr is the client's network address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Send queues payload as <message id="…"><gcm xmlns="google:mobile:data">
// payload</gcm></message> for the client. It blocks while the queue
// (Config.SendQueue) is full, until ctx is done. A nil error means queued,
// not delivered: what is still queued when the connection fails is
// dropped. After Close or the end of the connection it returns ErrClosed.
func (c *Conn) Send(ctx context.Context, payload []byte) error {
	b, err := appendMessage(nil, c.ids.Add(1), payload)
	if err != nil {
		return err
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return ErrClosed
	}
	c.sends.Add(1)
	c.mu.Unlock()
	defer c.sends.Done()
	select {
	case c.out <- b:
		return nil
	case <-c.closing:
		return ErrClosed
	case <-c.writerDone:
		return ErrClosed
	case <-ctx.Done():
		return fmt.Errorf("xmpp: sending to %s: %w", c.JID(), ctx.Err())
	}
}

// Close ends the stream politely: what Send queued before is written, then
// </stream:stream>. The connection ends when the client ends its side, or
// after Config.CloseTimeout; Handler.Message still gets what arrives until
// then. Close does not wait for any of it.
func (c *Conn) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closed = true
	close(c.closing)
}

// refuseSends makes Send fail from now on, without ending the stream.
func (c *Conn) refuseSends() {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
}

// queue hands b to the writer; false if the writer is gone.
func (c *Conn) queue(f frame) bool {
	select {
	case c.ctrl <- f:
		return true
	case <-c.writerDone:
		return false
	}
}

// stopReading makes the reader return err (the first one given) at once.
func (c *Conn) stopReading(err error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.stopErr == nil {
		c.stopErr = err
	}
	c.nc.SetReadDeadline(time.Unix(1, 0))
}

// setReadDeadline sets the reader's deadline: own, or the close deadline
// once the stream is ended.
func (c *Conn) setReadDeadline(own time.Time) error {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	if c.stopErr != nil {
		return c.stopErr
	}
	if !c.closeBy.IsZero() {
		own = c.closeBy
	}
	return c.nc.SetReadDeadline(own)
}

// readState says whether the reader must stop, and the close deadline.
func (c *Conn) readState() (stop error, closeBy time.Time) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	return c.stopErr, c.closeBy
}

// The writer gathers up to maxBatch bytes from its queues for one write,
// and keeps a buffer of up to keptBuffer bytes between writes.
const (
	maxBatch   = 16 << 10
	keptBuffer = 4 << 10
)

func (c *Conn) writeLoop() {
	defer close(c.writerDone)
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("xmpp: writer panicked", "panic", r, "stack", string(debug.Stack()))
			c.stopReading(fmt.Errorf("xmpp: writer panicked: %v", r))
		}
	}()
	var (
		// Both nil until the bind result is written: Send and Close may
		// come from within Open, before it.
		out     chan []byte
		closing chan struct{}
		buf     []byte
	)
	take := func(f frame) {
		buf = append(buf, f.b...)
		if f.startOut {
			out, closing = c.out, c.closing
		}
	}
	for {
		buf = buf[:0]
		select {
		case f := <-c.ctrl:
			take(f)
		case b := <-out:
			buf = append(buf, b...)
		case <-closing:
			c.endPolitely(buf)
			return
		case last := <-c.end:
			if last == nil {
				return
			}
			// The reader's last frames go first, e.g. a SASL failure
			// before the stream error it led to.
			for more := true; more; {
				select {
				case f := <-c.ctrl:
					take(f)
				default:
					more = false
				}
			}
			c.writeLast(buf, last)
			return
		}
	gather:
		for len(buf) < maxBatch {
			select {
			case f := <-c.ctrl:
				take(f)
			case b := <-out:
				buf = append(buf, b...)
			default:
				break gather
			}
		}
		if err := c.write(buf); err != nil {
			c.stopReading(err)
			return
		}
		if cap(buf) > keptBuffer {
			buf = nil // an idle connection holds little
		}
	}
}

// endPolitely writes what is queued and </stream:stream>, then gives the
// client CloseTimeout to end its side.
func (c *Conn) endPolitely(buf []byte) {
	c.sends.Wait() // a Send that got in before Close has queued its payload
	for more := true; more; {
		select {
		case f := <-c.ctrl:
			buf = append(buf, f.b...)
		case b := <-c.out:
			buf = append(buf, b...)
		default:
			more = false
		}
	}
	if !c.writeLast(buf, []byte(streamEnd)) {
		return
	}
	c.ended.Store(true)
	c.rmu.Lock()
	c.closeBy = time.Now().Add(c.srv.cfg.CloseTimeout)
	c.nc.SetReadDeadline(c.closeBy)
	c.rmu.Unlock()
}

// writeLast writes buf and last, the end of the stream, and shuts the
// connection for writing.
func (c *Conn) writeLast(buf, last []byte) bool {
	if err := c.write(append(buf, last...)); err != nil {
		c.stopReading(err)
		return false
	}
	if cw, ok := c.nc.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	return true
}

func (c *Conn) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	if err := c.nc.SetWriteDeadline(time.Now().Add(c.srv.cfg.WriteTimeout)); err != nil {
		return fmt.Errorf("xmpp: writing to the client: %w", err)
	}
	if _, err := c.nc.Write(b); err != nil {
		return fmt.Errorf("xmpp: writing to the client: %w", err)
	}
	return nil
}

// serveConn runs one connection from accept to close.
func (s *Server) serveConn(ctx context.Context, nc net.Conn) {
	c := newConn(s, nc)
	defer nc.Close()
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("xmpp: connection panicked", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	handshakeBy := time.Now().Add(s.cfg.HandshakeTimeout)
	if s.cfg.TLS != nil {
		tc := tls.Server(nc, s.cfg.TLS)
		c.nc = tc
		nc.SetDeadline(handshakeBy)
		hctx, cancel := context.WithDeadline(ctx, handshakeBy)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			c.log.Debug("xmpp: TLS handshake failed", "err", err)
			return
		}
		nc.SetDeadline(time.Time{})
	}
	stop := context.AfterFunc(ctx, func() {
		c.stopReading(&streamError{cond: "system-shutdown", text: "the server is shutting down", cause: context.Cause(ctx)})
	})
	defer stop()

	go c.writeLoop()
	st := newStream(ctx, c, handshakeBy)
	err := st.runSafely()
	c.finish(st, err)
}

// finish ends the stream the reader stopped reading with err, closes the
// connection and tells the handler.
func (c *Conn) finish(st *stream, err error) {
	c.refuseSends()
	var last []byte
	var se *streamError
	switch {
	case errors.As(err, &se):
		last = st.streamErrorBytes(se)
	case errors.Is(err, errStreamEnd), errors.Is(err, errClientError):
		last = []byte(streamEnd)
	}
	select {
	case c.end <- last:
	case <-c.writerDone:
	}
	<-c.writerDone
	lingering := false
	if c.ended.Load() || errors.Is(err, errStreamEnd) {
		// Ended politely by Close or by the client; whatever came after
		// does not matter.
		err = nil
	} else if se != nil {
		st.logStreamError(se)
		lingering = true
	}
	if st.handler != nil {
		st.log.Debug("xmpp: connection ended", "err", err)
		st.handler.Closed(err)
	}
	if lingering {
		c.linger()
	}
	c.nc.Close()
}

// linger reads and drops what the client still sends after a stream
// error, so that closing does not reset the connection before the client
// read the error.
func (c *Conn) linger() {
	c.nc.SetReadDeadline(time.Now().Add(c.srv.cfg.CloseTimeout))
	buf := make([]byte, 4096)
	for range 64 { // at most 256 KiB
		if _, err := c.nc.Read(buf); err != nil {
			return
		}
	}
}
