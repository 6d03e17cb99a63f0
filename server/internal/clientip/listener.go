// SPDX-License-Identifier: Apache-2.0

package clientip

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultHeaderTimeout is how long a trusted peer has to send its PROXY
// header, when Config.HeaderTimeout is not set.
const DefaultHeaderTimeout = 5 * time.Second

// ErrTooManyConns is the error, wrapped, of a connection refused because
// its client already holds Config.Conns's cap of open connections.
var ErrTooManyConns = errors.New("too many open connections from this client")

// Config is the configuration of a Listener.
type Config struct {
	// Trusted are the networks of the proxies and load balancers whose
	// PROXY protocol headers are believed. A connection from anywhere else
	// is passed on as it is, with its peer's address.
	Trusted []netip.Prefix
	// HeaderTimeout bounds the wait for a trusted peer's first bytes and,
	// once they begin a PROXY header, for the whole header.
	// DefaultHeaderTimeout if zero or negative.
	HeaderTimeout time.Duration
	// Conns, when set, caps the connections each client holds open: a
	// connection over the cap is closed. It counts connections whose client
	// address is known at the connection level: an untrusted peer's own
	// address, refused in Accept, and the client named by a PROXY header,
	// refused by the connection's first Read or RemoteAddr (Read then
	// fails with ErrTooManyConns). A trusted peer's connection without a
	// header, or with a LOCAL or UNKNOWN one, is the proxy's own and is not
	// counted: an HTTP reverse proxy carries many clients' requests on it.
	Conns *Counter
	// Logger, when set, gets refused connections and failed headers, at
	// Debug level: the connection's own error says the same to its user.
	Logger *slog.Logger
	// Refused, when set, is called with the client and the error of each
	// connection refused over the cap or for a bad header, so that the
	// caller can tell the operator, who may need to raise the cap.
	Refused func(client netip.Addr, err error)
}

// Listener accepts connections from a net.Listener and gives those from
// trusted peers the client address their PROXY header names. It starts no
// goroutines: a header is read by the first Read or RemoteAddr of its
// connection, in the goroutine that calls it.
type Listener struct {
	ln      net.Listener
	trusted []netip.Prefix
	timeout time.Duration
	conns   *Counter
	log     *slog.Logger
	refused func(netip.Addr, error)
}

// NewListener returns a Listener accepting from ln under cfg. Closing it
// closes ln.
func NewListener(ln net.Listener, cfg Config) *Listener {
	l := &Listener{
		ln:      ln,
		trusted: append([]netip.Prefix(nil), cfg.Trusted...),
		timeout: cfg.HeaderTimeout,
		conns:   cfg.Conns,
		log:     cfg.Logger,
		refused: cfg.Refused,
	}
	if l.timeout <= 0 {
		l.timeout = DefaultHeaderTimeout
	}
	if l.log == nil {
		l.log = slog.New(slog.DiscardHandler)
	}

	return l
}

// Accept returns the next connection. One from a trusted peer is a *Conn
// whose header is yet to be read. One from an untrusted peer is the
// underlying connection itself, or a *Conn that gives back its place in
// Config.Conns when closed; Accept closes those over the cap and waits for
// the next. Errors are the underlying listener's.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.ln.Accept()
		if err != nil {
			return nil, err
		}
		peer := Addr(nc.RemoteAddr())
		if isTrusted(l.trusted, peer) {
			return &Conn{raw: nc, l: l}, nil
		}
		if l.conns == nil {
			return nc, nil
		}
		release, ok := l.conns.Acquire(peer)
		if !ok {
			l.log.Debug("clientip: connection refused", "remote", addrString(nc.RemoteAddr()), "err", ErrTooManyConns)
			l.refuse(peer, ErrTooManyConns)
			nc.Close()
			continue
		}
		c := &Conn{raw: nc, l: l, remote: nc.RemoteAddr(), release: release}
		c.once.Do(func() {})
		return c, nil
	}
}

// refuse tells Config.Refused, if set, of a refused connection.
func (l *Listener) refuse(client netip.Addr, err error) {
	if l.refused != nil {
		l.refused(client, err)
	}
}

// Close closes the underlying listener. Connections already accepted stay
// open.
func (l *Listener) Close() error { return l.ln.Close() }

// Addr is the underlying listener's address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Conn is a connection accepted by a Listener. Its RemoteAddr is the
// client's address: the one its PROXY header names, if it came from a
// trusted peer with one, else its peer's. The first Read or RemoteAddr
// reads the header; if the header is malformed or late, the connection is
// closed, every Read and Write returns the error, and RemoteAddr is the
// peer's address.
type Conn struct {
	raw net.Conn
	l   *Listener

	once   sync.Once
	remote net.Addr    // set by once
	err    error       // set by once; failed tells other methods
	failed atomic.Bool // err is set

	// pending holds the bytes read with the header that come after it.
	pmu        sync.Mutex
	pending    []byte
	hasPending atomic.Bool

	mu       sync.Mutex
	readDL   time.Time // the caller's read deadline
	headerBy time.Time // while the header is being read: its deadline
	closed   bool
	release  func() // gives back the place in Config.Conns
}

// resolve reads the header, once.
func (c *Conn) resolve() {
	c.remote = c.raw.RemoteAddr()
	c.mu.Lock()
	c.headerBy = time.Now().Add(c.l.timeout)
	// An error here means the connection is closed; the read will say so.
	_ = c.setReadDeadlineLocked()
	c.mu.Unlock()

	h, rest, err := readHeader(c.raw)
	if err != nil {
		err = fmt.Errorf("clientip: PROXY header from %s: %w", c.remote, err)
	}
	client, named := h.client()

	c.mu.Lock()
	c.headerBy = time.Time{}
	_ = c.setReadDeadlineLocked()
	if err == nil && named && c.l.conns != nil && !c.closed {
		release, ok := c.l.conns.Acquire(client.Addr())
		if ok {
			c.release = release
		} else {
			err = fmt.Errorf("clientip: connection from %s via %s: %w", client.Addr(), c.remote, ErrTooManyConns)
		}
	}
	c.mu.Unlock()

	if err != nil {
		c.err = err
		c.failed.Store(true)
		c.raw.Close()
		c.l.log.Debug("clientip: connection refused", "remote", addrString(c.remote), "err", err)
		who := Addr(c.remote)
		if named {
			who = client.Addr()
		}
		c.l.refuse(who, err)
		return
	}
	if named {
		c.remote = net.TCPAddrFromAddrPort(client)
	}
	if len(rest) > 0 {
		c.pending = rest
		c.hasPending.Store(true)
	}
}

// Read reads the header first, then hands out what came after it.
func (c *Conn) Read(b []byte) (int, error) {
	c.once.Do(c.resolve)
	if c.err != nil {
		return 0, c.err
	}
	if c.hasPending.Load() {
		c.pmu.Lock()
		if len(c.pending) > 0 {
			n := copy(b, c.pending)
			c.pending = c.pending[n:]
			if len(c.pending) == 0 {
				c.pending = nil
				c.hasPending.Store(false)
			}
			c.pmu.Unlock()
			return n, nil
		}
		c.pmu.Unlock()
	}
	return c.raw.Read(b)
}

// Write writes to the connection; it does not wait for the header.
func (c *Conn) Write(b []byte) (int, error) {
	if c.failed.Load() {
		return 0, c.err
	}
	return c.raw.Write(b)
}

// Close closes the connection and gives back its place in Config.Conns.
func (c *Conn) Close() error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	c.Release()
	return c.raw.Close()
}

// Release gives back the connection's place in Config.Conns while it stays
// open: for a connection that becomes something a cap of its own counts,
// such as an HTTP connection taken over by a WebSocket session.
func (c *Conn) Release() {
	c.mu.Lock()
	release := c.release
	c.release = nil
	c.mu.Unlock()
	if release != nil {
		release()
	}
}

// CloseWrite shuts down the writing side, if the underlying connection can
// (TCP can): net/http and crypto/tls use it for a graceful close.
func (c *Conn) CloseWrite() error {
	if cw, ok := c.raw.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return fmt.Errorf("clientip: close write on %T: %w", c.raw, errors.ErrUnsupported)
}

// RemoteAddr is the client's address. It waits for the header, at most
// Config.HeaderTimeout, if no Read has read it yet.
func (c *Conn) RemoteAddr() net.Addr {
	c.once.Do(c.resolve)
	return c.remote
}

// PeerAddr is the address of the connection's peer: the proxy, when a
// PROXY header named the client. It does not wait.
func (c *Conn) PeerAddr() net.Addr { return c.raw.RemoteAddr() }

// LocalAddr is the connection's local address (not the one a PROXY header
// names). It does not wait.
func (c *Conn) LocalAddr() net.Addr { return c.raw.LocalAddr() }

// NetConn is the underlying connection.
func (c *Conn) NetConn() net.Conn { return c.raw }

// SetDeadline sets both deadlines; while the header is being read, the
// read deadline is at most Config.HeaderTimeout away.
func (c *Conn) SetDeadline(t time.Time) error {
	c.mu.Lock()
	c.readDL = t
	err := c.setReadDeadlineLocked()
	c.mu.Unlock()
	return errors.Join(err, c.raw.SetWriteDeadline(t))
}

// SetReadDeadline sets the read deadline; while the header is being read,
// it is at most Config.HeaderTimeout away.
func (c *Conn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.readDL = t
	return c.setReadDeadlineLocked()
}

// SetWriteDeadline sets the write deadline.
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }

// setReadDeadlineLocked sets the earlier of the caller's read deadline and
// the header's. The caller holds c.mu.
func (c *Conn) setReadDeadlineLocked() error {
	t := c.readDL
	if !c.headerBy.IsZero() && (t.IsZero() || c.headerBy.Before(t)) {
		t = c.headerBy
	}
	return c.raw.SetReadDeadline(t)
}

// addrString is a.String(), or "" for no address.
func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}
