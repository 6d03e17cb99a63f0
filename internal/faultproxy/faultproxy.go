// SPDX-License-Identifier: Apache-2.0

// Package faultproxy is a TCP proxy that injects network faults between two
// programs under test, so that a test can show how they behave when the
// network misbehaves. Its faults:
//
//   - Reset: every current connection is aborted with a TCP RST on both
//     sides, as a NAT box or a crashing middlebox does.
//   - Blackhole: nothing moves in either direction, not even a close, while
//     the connections stay open; new connections are accepted and left
//     hanging, undialled. Only the ends' own timeouts (heartbeats, dial
//     timeouts) can tell. When the blackhole lifts, what was held moves on,
//     as after a network partition that healed before TCP gave up.
//   - Latency: each chunk read from one side is written to the other no
//     sooner than the latency after it was read, in order.
//   - Bandwidth: each direction of each connection carries at most that
//     many bytes per second.
//
// Faults apply at once, to open connections too, and Set with zero Faults
// is back to normal.
//
// The proxy forwards bytes and knows nothing of the protocol it carries. It
// is a test tool for loopback and lab networks, not a production proxy: it
// obeys whoever holds it, and keeps at most a small window of each
// direction's data in memory (a full window stops reading from that side,
// so TCP flow control holds the sender back).
package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"slices"
	"sync"
	"time"
)

const (
	// readSize is the largest chunk read at once.
	readSize = 16 << 10
	// queueDepth is how many chunks a direction holds between its reader
	// and its writer: what a blackhole or latency keeps in memory.
	queueDepth = 64
	// paceSlices is how finely a bandwidth limit divides each second: a
	// direction writes at most a tenth of its limit at once, then rests.
	paceSlices = 10

	defaultDialTimeout  = 10 * time.Second
	defaultIdleTimeout  = time.Hour
	defaultWriteTimeout = 30 * time.Second
)

// Config is what a Proxy listens on and forwards to.
type Config struct {
	// Listen is the TCP address to accept connections on; 127.0.0.1:0
	// (a free loopback port, see Addr) when empty.
	Listen string
	// Upstream is the TCP address each accepted connection is forwarded
	// to, dialled afresh for each one. When it cannot be dialled, the
	// accepted connection is reset, as a refused connection would be.
	Upstream string
	// DialTimeout bounds dialling Upstream; 10 s when zero.
	DialTimeout time.Duration
	// IdleTimeout ends a connection whose one direction carried nothing
	// for that long; one hour when zero, longer than any heartbeat.
	IdleTimeout time.Duration
	// WriteTimeout bounds each write to either side; 30 s when zero.
	WriteTimeout time.Duration
	// Logger gets a line for each fault set and, at debug level, for
	// each connection; nothing when nil.
	Logger *slog.Logger
}

// Faults are the faults the proxy applies; the zero value forwards
// normally.
type Faults struct {
	// Blackhole stops all traffic, and holds new connections undialled,
	// until it is lifted.
	Blackhole bool
	// Latency delays each chunk by this much after it was read.
	Latency time.Duration
	// Bandwidth, when positive, caps each direction of each connection at
	// this many bytes per second.
	Bandwidth int
}

// Proxy forwards TCP connections from its listener to one upstream
// address, applying the Faults last Set.
type Proxy struct {
	cfg Config
	ln  net.Listener
	log *slog.Logger

	mu     sync.Mutex
	faults Faults
	// changed is closed, and replaced, each time faults change, waking
	// the writers that wait on a fault.
	changed chan struct{}
	links   map[*link]struct{}
	closed  bool

	// conns owns every connection's goroutines; Serve waits for them.
	conns sync.WaitGroup
}

// New listens on cfg.Listen. Connections wait in the listener's backlog
// until Serve runs.
func New(cfg Config) (*Proxy, error) {
	if cfg.Upstream == "" {
		return nil, errors.New("faultproxy: no upstream address")
	}
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.DialTimeout <= 0 {
		cfg.DialTimeout = defaultDialTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = defaultIdleTimeout
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = defaultWriteTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("faultproxy: listen on %s: %w", cfg.Listen, err)
	}
	return &Proxy{
		cfg: cfg, ln: ln, log: log.With("proxy", ln.Addr().String(), "upstream", cfg.Upstream),
		changed: make(chan struct{}), links: map[*link]struct{}{},
	}, nil
}

// Addr is the address the proxy accepts connections on.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Serve accepts and forwards connections until ctx is done or Close is
// called; then it resets the connections still open and returns once
// every one of their goroutines has ended. It returns nil when stopped
// that way, else the error that stopped the listener.
func (p *Proxy) Serve(ctx context.Context) error {
	done := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		select {
		case <-ctx.Done():
			p.Close()
		case <-done:
		}
	})
	defer func() {
		close(done)
		watch.Wait()
	}()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			p.mu.Lock()
			closed := p.closed
			p.mu.Unlock()
			p.Close() // no connection is tracked from now on
			p.Reset()
			p.conns.Wait()
			if closed {
				return nil
			}
			return fmt.Errorf("faultproxy: accept: %w", err)
		}
		p.conns.Go(func() { p.handle(c.(*net.TCPConn)) })
	}
}

// Close stops the listener, which makes Serve reset every connection and
// return. Closing again does nothing.
func (p *Proxy) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	p.closed = true
	if err := p.ln.Close(); err != nil {
		return fmt.Errorf("faultproxy: close listener: %w", err)
	}
	return nil
}

// Set replaces the faults applied, for open connections and new ones.
func (p *Proxy) Set(f Faults) error {
	if f.Latency < 0 || f.Bandwidth < 0 {
		return fmt.Errorf("faultproxy: latency %v and bandwidth %d must not be negative", f.Latency, f.Bandwidth)
	}
	p.mu.Lock()
	p.faults = f
	close(p.changed)
	p.changed = make(chan struct{})
	p.mu.Unlock()
	p.log.Info("faults set", "blackhole", f.Blackhole, "latency", f.Latency, "bandwidth", f.Bandwidth)
	return nil
}

// Faults returns the faults applied now.
func (p *Proxy) Faults() Faults {
	f, _ := p.current()
	return f
}

// Reset aborts every open connection, hanging ones too, with a TCP RST to
// both sides, and returns how many there were. Later connections are not
// affected.
func (p *Proxy) Reset() int {
	p.mu.Lock()
	links := slices.Collect(maps.Keys(p.links))
	p.mu.Unlock()
	for _, l := range links {
		l.abort()
	}
	p.log.Info("connections reset", "count", len(links))
	return len(links)
}

func (p *Proxy) current() (Faults, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.faults, p.changed
}

// track adds l to the open connections, unless the proxy is closed.
func (p *Proxy) track(l *link) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return false
	}
	p.links[l] = struct{}{}
	return true
}

func (p *Proxy) untrack(l *link) {
	p.mu.Lock()
	delete(p.links, l)
	p.mu.Unlock()
}

// link is one proxied connection: the accepted client side and, once
// dialled, the upstream side.
type link struct {
	client *net.TCPConn
	// cancel ends the link's context, which stops its goroutines.
	cancel context.CancelFunc

	mu      sync.Mutex
	server  *net.TCPConn
	aborted bool
}

// abort resets both sides and stops the link's goroutines; a side dialled
// later is closed at once.
func (l *link) abort() {
	l.mu.Lock()
	l.aborted = true
	server := l.server
	l.mu.Unlock()
	l.cancel()
	resetConn(l.client)
	if server != nil {
		resetConn(server)
	}
}

// attach records the dialled upstream side; false means the link was
// aborted meanwhile.
func (l *link) attach(server *net.TCPConn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.aborted {
		return false
	}
	l.server = server
	return true
}

// resetConn closes c with an RST instead of a FIN.
func resetConn(c *net.TCPConn) {
	c.SetLinger(0) // fails only on a closed connection, which is the goal
	c.Close()
}

// handle forwards one accepted connection until both directions have
// ended or the link is aborted (Serve aborts every link when it stops).
// It owns the connection's three other goroutines.
func (p *Proxy) handle(client *net.TCPConn) {
	// The link's context ends when it is aborted, by Reset or by itself.
	ctx, cancel := context.WithCancel(context.Background())
	l := &link{client: client, cancel: cancel}
	log := p.log.With("client", client.RemoteAddr().String())
	defer func() {
		cancel()
		p.untrack(l)
		client.Close()
		l.mu.Lock()
		if l.server != nil {
			l.server.Close()
		}
		l.mu.Unlock()
		log.Debug("connection closed")
	}()
	if !p.track(l) {
		l.abort()
		return
	}
	log.Debug("connection accepted")

	// A blackhole swallows new connections too: this one hangs, undialled.
	if !p.hold(ctx, nil, time.Time{}) {
		return
	}
	d := net.Dialer{Timeout: p.cfg.DialTimeout}
	c, err := d.DialContext(ctx, "tcp", p.cfg.Upstream)
	if err != nil {
		if ctx.Err() == nil {
			log.Debug("upstream unreachable; resetting the connection", "err", err)
			l.abort()
		}
		return
	}
	server := c.(*net.TCPConn)
	if !l.attach(server) {
		server.Close()
		return
	}
	up, down := make(chan chunk, queueDepth), make(chan chunk, queueDepth)
	var wg sync.WaitGroup
	wg.Go(func() { p.read(ctx, client, up) })
	wg.Go(func() { p.write(ctx, l, server, up) })
	wg.Go(func() { p.read(ctx, server, down) })
	p.write(ctx, l, client, down)
	wg.Wait()
}

// chunk is what one read got, or, with end set, how the reading side
// ended: reset for an error, else an orderly close.
type chunk struct {
	data  []byte
	at    time.Time // when it was read
	end   bool
	reset bool
}

// read moves what src sends into q, then how src ended.
func (p *Proxy) read(ctx context.Context, src *net.TCPConn, q chan<- chunk) {
	buf := make([]byte, readSize)
	for {
		src.SetReadDeadline(time.Now().Add(p.cfg.IdleTimeout))
		n, err := src.Read(buf)
		if n > 0 {
			select {
			case q <- chunk{data: bytes.Clone(buf[:n]), at: time.Now()}:
			case <-ctx.Done():
				return
			}
		}
		if err != nil {
			select {
			case q <- chunk{end: true, reset: !errors.Is(err, io.EOF), at: time.Now()}:
			case <-ctx.Done():
			}
			return
		}
	}
}

// write moves q's chunks to dst under the faults, and ends dst as the
// other side ended: a half close for a close, an abort for an error.
func (p *Proxy) write(ctx context.Context, l *link, dst *net.TCPConn, q <-chan chunk) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	for {
		var c chunk
		select {
		case c = <-q:
		case <-ctx.Done():
			return
		}
		if !p.hold(ctx, timer, c.at) {
			return
		}
		switch {
		case c.end && c.reset:
			l.abort()
			return
		case c.end:
			if err := dst.CloseWrite(); err != nil {
				l.abort()
			}
			return
		}
		if err := p.pace(ctx, timer, dst, c.data); err != nil {
			if ctx.Err() == nil {
				p.log.Debug("forwarding failed; resetting the connection", "err", err)
				l.abort()
			}
			return
		}
	}
}

// hold waits until no blackhole is on and the latency after at has
// passed; false means ctx ended first. timer, when not nil, is reused.
func (p *Proxy) hold(ctx context.Context, timer *time.Timer, at time.Time) bool {
	for {
		f, changed := p.current()
		var due <-chan time.Time
		if !f.Blackhole {
			wait := time.Until(at.Add(f.Latency))
			if wait <= 0 {
				return true
			}
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			due = timer.C
		}
		select {
		case <-due:
		case <-changed:
		case <-ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return false
		}
		if timer != nil {
			timer.Stop()
		}
	}
}

// pace writes b to dst within the bandwidth limit, and stops while a
// blackhole begun in the middle of it lasts.
func (p *Proxy) pace(ctx context.Context, timer *time.Timer, dst *net.TCPConn, b []byte) error {
	for len(b) > 0 {
		if !p.hold(ctx, timer, time.Time{}) {
			return ctx.Err()
		}
		f, changed := p.current()
		n := len(b)
		if f.Bandwidth > 0 {
			n = min(n, max(f.Bandwidth/paceSlices, 1))
		}
		dst.SetWriteDeadline(time.Now().Add(p.cfg.WriteTimeout))
		if _, err := dst.Write(b[:n]); err != nil {
			return fmt.Errorf("write to %s: %w", dst.RemoteAddr(), err)
		}
		b = b[n:]
		if f.Bandwidth <= 0 {
			continue
		}
		// Rest for the time the bytes take at the limit, unless the
		// limit changes meanwhile.
		timer.Reset(time.Duration(n) * time.Second / time.Duration(f.Bandwidth))
		select {
		case <-timer.C:
		case <-changed:
			timer.Stop()
		case <-ctx.Done():
			timer.Stop()
			return ctx.Err()
		}
	}
	return nil
}
