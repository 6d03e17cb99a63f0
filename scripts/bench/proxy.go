// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"time"
)

// protocol tells the frames of a device link apart as its bytes pass.
type protocol struct {
	name string
	// upgrade is set for WebSocket: an HTTP head comes before the frames,
	// each way.
	upgrade bool
	// header reads a frame's header from its first bytes: once it has
	// them all it returns the whole frame's size and its type, and ok.
	header func(h []byte) (size uint64, typ byte, ok bool, err error)
	// ping is the type of the heartbeat the device sends, pong that of
	// the answer.
	ping, pong byte
}

// errNotFramed is a stream that stopped looking like its protocol.
var errNotFramed = errors.New("not a stream of frames of this protocol")

// WebSocket opcodes (RFC 6455, 5.2) and MQTT packet types (MQTT 3.1.1,
// 2.2.1) the tool looks for.
const (
	wsPing        = 0x9
	wsPong        = 0xA
	mqttSuback    = 9
	mqttPingreq   = 12
	mqttPingresp  = 13
	maxHTTPHead   = 16 << 10
	maxHeaderSize = 14 // the longest WebSocket frame header
)

var websocketProtocol = protocol{name: "WebSocket", upgrade: true, header: wsHeader, ping: wsPing, pong: wsPong}

var mqttProtocol = protocol{name: "MQTT", header: mqttHeader, ping: mqttPingreq, pong: mqttPingresp}

func wsHeader(h []byte) (uint64, byte, bool, error) {
	if len(h) < 2 {
		return 0, 0, false, nil
	}
	need := 2
	length := uint64(h[1] & 0x7f)
	switch length {
	case 126:
		need += 2
	case 127:
		need += 8
	}
	if h[1]&0x80 != 0 {
		need += 4 // the masking key
	}
	if len(h) < need {
		return 0, 0, false, nil
	}
	switch length {
	case 126:
		length = uint64(binary.BigEndian.Uint16(h[2:4]))
	case 127:
		length = binary.BigEndian.Uint64(h[2:10])
		if length > 1<<40 {
			return 0, 0, false, errNotFramed
		}
	}
	return uint64(need) + length, h[0] & 0x0f, true, nil
}

func mqttHeader(h []byte) (uint64, byte, bool, error) {
	// A type byte, then the remaining length in 1 to 4 bytes, 7 bits
	// each, least significant first.
	var length uint64
	for i := 1; i < len(h); i++ {
		length |= uint64(h[i]&0x7f) << (7 * (i - 1))
		if h[i]&0x80 == 0 {
			return uint64(i+1) + length, h[0] >> 4, true, nil
		}
		if i == 4 {
			return 0, 0, false, errNotFramed
		}
	}
	return 0, 0, false, nil
}

// splitter follows one direction of a connection and reports each frame
// as its last byte passes.
type splitter struct {
	proto   protocol
	onFrame func(typ byte, size uint64)

	inHead bool   // in the HTTP head that comes first (WebSocket)
	head   []byte // the head so far
	hdr    []byte // the current frame's header so far
	size   uint64 // the current frame's size, once its header is read
	left   uint64 // its bytes still to pass
	typ    byte
	lost   bool
}

func newSplitter(p protocol, onFrame func(typ byte, size uint64)) *splitter {
	return &splitter{proto: p, onFrame: onFrame, inHead: p.upgrade}
}

func (s *splitter) feed(b []byte) {
	for len(b) > 0 && !s.lost {
		switch {
		case s.inHead:
			s.head = append(s.head, b...)
			i := bytes.Index(s.head, []byte("\r\n\r\n"))
			if i < 0 {
				if len(s.head) > maxHTTPHead {
					s.lost = true
				}
				return
			}
			b = s.head[i+4:]
			s.inHead, s.head = false, nil
		case s.left > 0:
			n := uint64(len(b))
			if n > s.left {
				n = s.left
			}
			s.left -= n
			b = b[n:]
			if s.left == 0 {
				s.onFrame(s.typ, s.size)
			}
		default:
			s.hdr = append(s.hdr, b[0])
			b = b[1:]
			size, typ, ok, err := s.proto.header(s.hdr)
			if err != nil || (!ok && len(s.hdr) >= maxHeaderSize) {
				s.lost = true
				return
			}
			if !ok {
				continue
			}
			s.size, s.typ, s.left = size, typ, size-uint64(len(s.hdr))
			s.hdr = s.hdr[:0]
			if s.left == 0 {
				s.onFrame(typ, size)
			}
		}
	}
}

// wireCounts is what crossed a device link, both ways, over every
// connection. Frames count whole, when their last byte passes.
type wireCounts struct {
	UpBytes   uint64 `json:"up_bytes"` // device to server or broker
	DownBytes uint64 `json:"down_bytes"`
	// Heartbeats are the device's pings (WebSocket) or PINGREQs (MQTT);
	// HeartbeatBytes are the bytes of those and of their answers.
	Heartbeats     uint64 `json:"heartbeats"`
	HeartbeatBytes uint64 `json:"heartbeat_bytes"`
	// DataBytes are the bytes of every other frame, both ways.
	DataBytes   uint64 `json:"data_bytes"`
	Frames      uint64 `json:"frames"`
	Connections uint64 `json:"connections"`
	// Unframed counts directions whose frames could not be followed.
	Unframed uint64 `json:"unframed,omitempty"`
}

func (w wireCounts) sub(o wireCounts) wireCounts {
	return wireCounts{
		UpBytes: w.UpBytes - o.UpBytes, DownBytes: w.DownBytes - o.DownBytes,
		Heartbeats: w.Heartbeats - o.Heartbeats, HeartbeatBytes: w.HeartbeatBytes - o.HeartbeatBytes,
		DataBytes: w.DataBytes - o.DataBytes, Frames: w.Frames - o.Frames,
		Connections: w.Connections - o.Connections, Unframed: w.Unframed - o.Unframed,
	}
}

// proxy relays a device's TCP connections to its server or broker on
// loopback and counts what passes, frame by frame.
type proxy struct {
	ln     net.Listener
	target string
	proto  protocol
	// onFrame, when set, is told of each frame: up is the device's
	// direction. It runs on the relay's goroutine, so it must not block.
	onFrame func(up bool, typ byte)

	mu     sync.Mutex
	counts wireCounts
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

func newProxy(target string, p protocol, onFrame func(up bool, typ byte)) (*proxy, error) {
	// No TCP keepalive: it would add segments neither side asked for.
	lc := net.ListenConfig{KeepAlive: -1}
	ln, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	px := &proxy{ln: ln, target: target, proto: p, onFrame: onFrame, conns: map[net.Conn]bool{}}
	px.wg.Go(px.serve)
	return px, nil
}

func (p *proxy) addr() string { return p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.wg.Go(func() { p.relay(c) })
	}
}

// close ends every relay and waits for them.
func (p *proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *proxy) snapshot() wireCounts {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.counts
}

func (p *proxy) relay(device net.Conn) {
	d := net.Dialer{Timeout: 10 * time.Second, KeepAlive: -1}
	server, err := d.Dial("tcp", p.target)
	if err != nil {
		device.Close()
		return
	}
	p.mu.Lock()
	p.conns[device], p.conns[server] = true, true
	p.counts.Connections++
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, device)
		delete(p.conns, server)
		p.mu.Unlock()
	}()
	var wg sync.WaitGroup
	wg.Go(func() { p.pipe(server, device, true) })
	p.pipe(device, server, false)
	wg.Wait()
}

// pipe copies src to dst until either fails, then closes both, which
// ends the other direction too.
func (p *proxy) pipe(dst, src net.Conn, up bool) {
	defer dst.Close()
	defer src.Close()
	s := newSplitter(p.proto, func(typ byte, size uint64) {
		// Called from feed, under p.mu.
		p.counts.Frames++
		switch {
		case up && typ == p.proto.ping:
			p.counts.Heartbeats++
			p.counts.HeartbeatBytes += size
		case !up && typ == p.proto.pong:
			p.counts.HeartbeatBytes += size
		default:
			p.counts.DataBytes += size
		}
		if p.onFrame != nil {
			p.onFrame(up, typ)
		}
	})
	buf := make([]byte, 64<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			if up {
				p.counts.UpBytes += uint64(n)
			} else {
				p.counts.DownBytes += uint64(n)
			}
			lost := s.lost
			s.feed(buf[:n])
			if s.lost && !lost {
				p.counts.Unframed++
			}
			p.mu.Unlock()
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}
