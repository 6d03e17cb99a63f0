// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"sync"
	"time"
)

// wireCounts is what has passed through the proxy so far, over every
// connection the agent made. Up is agent → server, down server → agent.
type wireCounts struct {
	UpBytes, DownBytes uint64
	// UpSegments and DownSegments are the TCP segments on the agent's side
	// of the proxy, pure ACKs included, as the kernel counts them.
	UpSegments, DownSegments uint64
	// Pings are the agent's heartbeats: pings on its session. ProbePings
	// are pings on its probe connections, which the learned heartbeat
	// opens to try longer intervals.
	Pings, ProbePings uint64
	Pongs             uint64 // pongs from the server
	// OtherUp and OtherDown are the frames that are neither: data frames,
	// close frames, pongs sent up and pings sent down.
	OtherUp, OtherDown uint64
	Connections        uint64
	ProbeConnections   uint64
	// Unparsed counts connections whose frames could not be followed
	// (TLS, or not WebSocket).
	Unparsed uint64
}

func (w wireCounts) sub(o wireCounts) wireCounts {
	return wireCounts{
		UpBytes: w.UpBytes - o.UpBytes, DownBytes: w.DownBytes - o.DownBytes,
		UpSegments: w.UpSegments - o.UpSegments, DownSegments: w.DownSegments - o.DownSegments,
		Pings: w.Pings - o.Pings, ProbePings: w.ProbePings - o.ProbePings, Pongs: w.Pongs - o.Pongs,
		OtherUp: w.OtherUp - o.OtherUp, OtherDown: w.OtherDown - o.OtherDown,
		Connections: w.Connections - o.Connections, ProbeConnections: w.ProbeConnections - o.ProbeConnections,
		Unparsed: w.Unparsed - o.Unparsed,
	}
}

// event is something the agent did on the wire, for the timeline.
type event struct {
	at   time.Time
	kind string
}

// proxy relays the agent's TCP connections to the server and counts what
// passes each way: bytes, TCP segments, and, on plain ws://, WebSocket
// frames by kind.
type proxy struct {
	ln     net.Listener
	target string
	// plain is false for wss://: frames are not followed.
	plain bool

	mu     sync.Mutex
	counts wireCounts // segments of closed connections only
	live   map[*relay]bool
	events []event
	wg     sync.WaitGroup
}

func newProxy(target string, plain bool) (*proxy, error) {
	// No TCP keepalive on the agent's side: Go's default (every 15 s)
	// would add segments the agent never asked for.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	return &proxy{ln: ln, target: target, plain: plain, live: map[*relay]bool{}}, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

// serve relays connections until Close.
func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			p.relay(c.(*net.TCPConn))
		}()
	}
}

// close stops accepting, ends every relay and waits for them.
func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for r := range p.live {
		r.agent.Close()
		r.server.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

// relay is one agent connection and its counterpart to the server.
type relay struct {
	agent, server *net.TCPConn
	probe         bool // guarded by proxy.mu
}

func (p *proxy) relay(agent *net.TCPConn) {
	defer agent.Close()
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1}
	sc, err := d.DialContext(context.Background(), "tcp", p.target)
	if err != nil {
		return
	}
	server := sc.(*net.TCPConn)
	defer server.Close()
	r := &relay{agent: agent, server: server}
	p.mu.Lock()
	p.live[r] = true
	p.counts.Connections++
	if !p.plain {
		p.counts.Unparsed++
	}
	p.mu.Unlock()

	up := &wsStream{client: true}
	down := &wsStream{}
	helloSeen := false
	up.onFrame = func(op byte, payload []byte) {
		p.mu.Lock()
		defer p.mu.Unlock()
		switch {
		case op == opText && !helloSeen:
			helloSeen = true
			if isProbeHello(payload) {
				r.probe = true
				p.counts.ProbeConnections++
			}
			p.counts.OtherUp++
		case op == opPing && r.probe:
			p.counts.ProbePings++
			p.events = append(p.events, event{time.Now(), "probe ping"})
		case op == opPing:
			p.counts.Pings++
			p.events = append(p.events, event{time.Now(), "heartbeat"})
		default:
			p.counts.OtherUp++
		}
	}
	down.onFrame = func(op byte, _ []byte) {
		p.mu.Lock()
		defer p.mu.Unlock()
		if op == opPong {
			p.counts.Pongs++
		} else {
			p.counts.OtherDown++
		}
	}

	var once sync.Once
	finish := func() {
		once.Do(func() {
			// The kernel's counts are read before the socket closes.
			out, in, err := tcpSegments(agent)
			p.mu.Lock()
			if err == nil {
				p.counts.UpSegments += uint64(in)
				p.counts.DownSegments += uint64(out)
			}
			if p.plain && (up.lost || down.lost) {
				p.counts.Unparsed++
			}
			delete(p.live, r)
			p.mu.Unlock()
			agent.Close()
			server.Close()
		})
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.pipe(server, agent, up, func(n int) { p.counts.UpBytes += uint64(n) })
		finish()
	}()
	p.pipe(agent, server, down, func(n int) { p.counts.DownBytes += uint64(n) })
	finish()
	<-done
}

// pipe copies from src to dst until either fails, counting the bytes and
// following the frames (on plain ws://) as they pass.
func (p *proxy) pipe(dst, src net.Conn, s *wsStream, count func(n int)) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			count(n)
			p.mu.Unlock()
			if p.plain {
				s.feed(buf[:n]) // takes p.mu itself, per frame
			} else if s.client {
				// Frames are encrypted: what the agent sends is all
				// that can be told apart.
				p.mu.Lock()
				p.events = append(p.events, event{time.Now(), "agent sent (wss)"})
				p.mu.Unlock()
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// isProbeHello reports whether a hello frame opens a probe connection.
func isProbeHello(payload []byte) bool {
	var f struct {
		Type string `json:"type"`
		Body struct {
			Probe bool `json:"probe"`
		} `json:"body"`
	}
	return json.Unmarshal(payload, &f) == nil && f.Type == "hello" && f.Body.Probe
}

// snapshot returns the counts so far, the segments of live connections
// included.
func (p *proxy) snapshot() wireCounts {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.counts
	for r := range p.live {
		if out, in, err := tcpSegments(r.agent); err == nil {
			c.UpSegments += uint64(in)
			c.DownSegments += uint64(out)
		}
	}
	return c
}

// eventsBetween returns the events from a to b.
func (p *proxy) eventsBetween(a, b time.Time) []event {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []event
	for _, e := range p.events {
		if !e.at.Before(a) && !e.at.After(b) {
			out = append(out, e)
		}
	}
	return out
}

var errNoTCPInfo = errors.New("TCP_INFO is not available here")
