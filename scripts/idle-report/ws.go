// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"encoding/binary"
)

// WebSocket opcodes (RFC 6455, section 5.2).
const (
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
)

const (
	// maxHead bounds the HTTP upgrade request or response; a longer one
	// is not a WebSocket handshake this tool follows.
	maxHead = 16 << 10
	// maxCapture is the largest payload handed to onFrame; larger frames
	// are counted without their payload.
	maxCapture = 4 << 10
)

// wsStream follows one direction of a plain-text WebSocket connection as
// its bytes pass through the proxy: the HTTP upgrade, then frame after
// frame. It reads the frames, it does not check them: a stream that stops
// looking like WebSocket is no longer followed (lost is set) and its bytes
// are still counted by the proxy.
type wsStream struct {
	// client is the agent's direction: it starts with a GET and its
	// frames are masked.
	client bool
	// onFrame is told of each frame as its last byte passes, with its
	// unmasked payload when that is at most maxCapture bytes (else nil).
	onFrame func(op byte, payload []byte)

	head   []byte // the HTTP head so far, until its blank line
	inBody bool   // the head has passed: frames follow
	lost   bool

	hdr     []byte // the current frame's header so far
	need    int    // the header's full length, once known (0: not yet)
	op      byte
	masked  bool
	mask    [4]byte
	left    uint64 // payload bytes of the current frame still to pass
	pos     uint64 // payload bytes of the current frame passed
	payload []byte // the payload so far, when it is captured
	capture bool
}

// feed passes the next bytes of the stream.
func (s *wsStream) feed(p []byte) {
	for len(p) > 0 && !s.lost {
		switch {
		case !s.inBody:
			p = s.feedHead(p)
		case s.need == 0 || len(s.hdr) < s.need:
			p = s.feedHeader(p)
		default:
			p = s.feedPayload(p)
		}
	}
}

// feedHead takes bytes of the HTTP head and returns what follows it.
func (s *wsStream) feedHead(p []byte) []byte {
	from := max(len(s.head)-3, 0)
	take := min(len(p), maxHead-len(s.head))
	s.head = append(s.head, p[:take]...)
	end := bytes.Index(s.head[from:], []byte("\r\n\r\n"))
	if end < 0 {
		if len(s.head) >= maxHead {
			s.lost = true
		}
		return nil
	}
	end += from + 4
	want := []byte("HTTP/1.1 101 ")
	if s.client {
		want = []byte("GET ")
	}
	if !bytes.HasPrefix(s.head, want) {
		s.lost = true
		return nil
	}
	used := end - (len(s.head) - take)
	s.head, s.inBody = nil, true
	return p[used:]
}

// feedHeader takes bytes of a frame header and returns what follows it.
func (s *wsStream) feedHeader(p []byte) []byte {
	for len(p) > 0 && (s.need == 0 || len(s.hdr) < s.need) {
		s.hdr = append(s.hdr, p[0])
		p = p[1:]
		if len(s.hdr) == 2 {
			s.need = 2
			switch s.hdr[1] & 0x7f {
			case 126:
				s.need += 2
			case 127:
				s.need += 8
			}
			if s.hdr[1]&0x80 != 0 {
				s.need += 4
			}
		}
	}
	if s.need == 0 || len(s.hdr) < s.need {
		return p
	}
	s.op = s.hdr[0] & 0x0f
	s.masked = s.hdr[1]&0x80 != 0
	n := uint64(s.hdr[1] & 0x7f)
	rest := s.hdr[2:]
	switch n {
	case 126:
		n, rest = uint64(binary.BigEndian.Uint16(rest)), rest[2:]
	case 127:
		n, rest = binary.BigEndian.Uint64(rest), rest[8:]
	}
	if s.masked != s.client {
		// Client frames are masked and server frames are not: anything
		// else is not a stream this tool understands.
		s.lost = true
		return nil
	}
	if s.masked {
		copy(s.mask[:], rest)
	}
	s.left, s.pos = n, 0
	s.capture = n <= maxCapture
	if s.payload == nil {
		s.payload = make([]byte, 0, 128) // an empty payload is not a missing one
	}
	s.payload = s.payload[:0]
	if n == 0 {
		s.endFrame()
	}
	return p
}

// feedPayload takes bytes of a frame's payload and returns what follows it.
func (s *wsStream) feedPayload(p []byte) []byte {
	take := p
	if uint64(len(take)) > s.left {
		take = take[:s.left]
	}
	if s.capture {
		for _, b := range take {
			if s.masked {
				b ^= s.mask[s.pos%4]
			}
			s.payload = append(s.payload, b)
			s.pos++
		}
	}
	s.left -= uint64(len(take))
	if s.left == 0 {
		s.endFrame()
	}
	return p[len(take):]
}

func (s *wsStream) endFrame() {
	if s.onFrame != nil {
		var payload []byte
		if s.capture {
			payload = s.payload
		}
		s.onFrame(s.op, payload)
	}
	s.hdr, s.need = s.hdr[:0], 0
}
