// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"fmt"
	"slices"
	"testing"
)

const (
	upgradeRequest  = "GET /device/v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\r\n"
	upgradeResponse = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"
)

// seen is a frame as onFrame reported it.
type seen struct {
	op      byte
	payload string
	big     bool // payload not captured
}

func follow(client bool, chunks ...[]byte) ([]seen, bool) {
	var got []seen
	s := &wsStream{client: client, onFrame: func(op byte, payload []byte) {
		got = append(got, seen{op: op, payload: string(payload), big: payload == nil})
	}}
	for _, c := range chunks {
		s.feed(c)
	}
	return got, s.lost
}

func TestWSStream(t *testing.T) {
	long := bytes.Repeat([]byte{'x'}, 256)
	huge := bytes.Repeat([]byte{'y'}, 65536)
	tests := []struct {
		name   string
		client bool
		stream []byte
		want   []seen
		lost   bool
	}{{
		// RFC 6455, 5.7: a masked text frame holding "Hello".
		name:   "masked text",
		client: true,
		stream: cat(upgradeRequest, []byte{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}),
		want:   []seen{{op: opText, payload: "Hello"}},
	}, {
		name:   "masked empty ping, as the agent's heartbeat",
		client: true,
		stream: cat(upgradeRequest, []byte{0x89, 0x80, 1, 2, 3, 4}, []byte{0x89, 0x80, 5, 6, 7, 8}),
		want:   []seen{{op: opPing}, {op: opPing}},
	}, {
		// RFC 6455, 5.7: an unmasked ping and its pong, each with "Hello".
		name:   "unmasked ping and pong",
		stream: cat(upgradeResponse, []byte{0x89, 0x05, 'H', 'e', 'l', 'l', 'o'}, []byte{0x8a, 0x05, 'H', 'e', 'l', 'l', 'o'}),
		want:   []seen{{op: opPing, payload: "Hello"}, {op: opPong, payload: "Hello"}},
	}, {
		name:   "16-bit length",
		stream: cat(upgradeResponse, []byte{0x82, 0x7e, 0x01, 0x00}, long, []byte{0x8a, 0x00}),
		want:   []seen{{op: 0x2, payload: string(long)}, {op: opPong}},
	}, {
		name:   "64-bit length, too big to capture",
		stream: cat(upgradeResponse, []byte{0x82, 0x7f, 0, 0, 0, 0, 0, 1, 0, 0}, huge, []byte{0x88, 0x02, 0x03, 0xe8}),
		want:   []seen{{op: 0x2, big: true}, {op: opClose, payload: "\x03\xe8"}},
	}, {
		name:   "a refused upgrade is not followed",
		stream: cat("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n", []byte{0x8a, 0x00}),
		lost:   true,
	}, {
		name:   "an unmasked client frame is not followed",
		client: true,
		stream: cat(upgradeRequest, []byte{0x89, 0x00}, []byte{0x89, 0x80, 1, 2, 3, 4}),
		lost:   true,
	}, {
		name:   "a head that never ends is not followed",
		client: true,
		stream: cat("GET / HTTP/1.1\r\n", bytes.Repeat([]byte("X: y\r\n"), maxHead/6+1)),
		lost:   true,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, lost := follow(tt.client, tt.stream)
			if !slices.Equal(got, tt.want) || lost != tt.lost {
				t.Errorf("whole: got %v lost %v, want %v lost %v", brief(got), lost, brief(tt.want), tt.lost)
			}
			// The same stream a byte at a time, as TCP may deliver it.
			var bytewise [][]byte
			for i := range tt.stream {
				bytewise = append(bytewise, tt.stream[i:i+1])
			}
			got, lost = follow(tt.client, bytewise...)
			if !slices.Equal(got, tt.want) || lost != tt.lost {
				t.Errorf("byte by byte: got %v lost %v, want %v lost %v", brief(got), lost, brief(tt.want), tt.lost)
			}
		})
	}
}

func TestIsProbeHello(t *testing.T) {
	for _, tt := range []struct {
		frame string
		want  bool
	}{
		{`{"type":"hello","body":{"version":1,"device_id":"d","probe":true}}`, true},
		{`{"type":"hello","body":{"version":1,"device_id":"d"}}`, false},
		{`{"type":"state","body":{"probe":true}}`, false},
		{`not json`, false},
	} {
		if got := isProbeHello([]byte(tt.frame)); got != tt.want {
			t.Errorf("isProbeHello(%s) = %v, want %v", tt.frame, got, tt.want)
		}
	}
}

// FuzzWSStream checks that any stream, cut anywhere, is followed as it is
// whole, and never makes the follower fail.
func FuzzWSStream(f *testing.F) {
	f.Add(true, cat(upgradeRequest, []byte{0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58}), uint16(7))
	f.Add(false, cat(upgradeResponse, []byte{0x82, 0x7e, 0x00, 0x03, 1, 2, 3, 0x8a, 0x00}), uint16(60))
	f.Fuzz(func(t *testing.T, client bool, stream []byte, cut uint16) {
		whole, wholeLost := follow(client, stream)
		at := min(int(cut), len(stream))
		split, splitLost := follow(client, stream[:at], stream[at:])
		if !slices.Equal(whole, split) || wholeLost != splitLost {
			t.Fatalf("cut at %d: got %v lost %v, whole %v lost %v", at, brief(split), splitLost, brief(whole), wholeLost)
		}
	})
}

func cat(head string, parts ...[]byte) []byte {
	return append([]byte(head), bytes.Join(parts, nil)...)
}

func brief(frames []seen) string {
	var b bytes.Buffer
	for _, f := range frames {
		fmt.Fprintf(&b, "[op %#x, %d bytes, big %v]", f.op, len(f.payload), f.big)
	}
	return b.String()
}
