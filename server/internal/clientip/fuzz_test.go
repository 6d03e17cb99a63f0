// SPDX-License-Identifier: Apache-2.0

package clientip

import (
	"bytes"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// proxySeeds are headers and near-headers for the fuzzers' corpora.
func proxySeeds() [][]byte {
	seeds := [][]byte{
		nil,
		[]byte("GET / HTTP/1.1\r\n\r\n"),
		{0x16, 0x03, 0x01, 0x00, 0x05},
		[]byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\r\nGET"),
		[]byte("PROXY TCP6 2001:db8::7 2001:db8:1::1 51000 443\r\n"),
		[]byte("PROXY TCP6 ::ffff:192.0.2.7 2001:db8:1::1 0 65535\r\n"),
		[]byte("PROXY UNKNOWN\r\n"),
		[]byte("PROXY UNKNOWN 1 2 3 4\r\nxyz"),
		[]byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\n"),
		[]byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000\r\n"),
		[]byte("PROXY " + strings.Repeat("A", 120)),
		[]byte("PROX"),
		v2(0x21, 0x11, v2Addrs(src4, dst4), nil),
		v2(0x21, 0x21, v2Addrs(src6, dst6), append(tlv(0x01, []byte("h2")), tlv(0x04, nil)...)),
		append(v2(0x21, 0x21, v2Addrs(src6, dst6), tlv(0xE0, make([]byte, 300))), "after"...),
		v2(0x20, 0x00, nil, nil),
		v2(0x21, 0x31, make([]byte, 216), nil),
		v2(0x21, 0x12, v2Addrs(src4, dst4), nil),
		v2(0x22, 0x11, v2Addrs(src4, dst4), nil),
		v2(0x21, 0x21, v2Addrs(src4, dst4), nil),
		v2(0x21, 0x11, v2Addrs(src4, dst4), nil)[:20],
		[]byte(v2Sig[:7]),
	}
	return seeds
}

// FuzzProxyHeader reads PROXY protocol headers, v1 and v2, from arbitrary
// bytes, whole and in pieces. It must not panic; both readings must agree;
// a stream without a header must come out untouched, and one with a header
// must lose exactly the header; a header must survive a round trip.
func FuzzProxyHeader(f *testing.F) {
	for i, s := range proxySeeds() {
		f.Add(s, uint8(i))
	}
	f.Fuzz(func(t *testing.T, data []byte, piece uint8) {
		h, rest, err := readAll(t, bytes.NewReader(data))
		h2, rest2, err2 := readAll(t, &pieces{b: data, n: int(piece%32) + 1})
		if h != h2 || !bytes.Equal(rest, rest2) || errClass(err) != errClass(err2) {
			t.Fatalf("whole: %+v %q %v\nin pieces of %d: %+v %q %v", h, rest, err, piece%32+1, h2, rest2, err2)
		}
		if err != nil {
			if errClass(err) != "malformed" {
				t.Fatalf("from memory, an error that is not a malformed header: %v", err)
			}
			return
		}
		if !bytes.HasSuffix(data, rest) {
			t.Fatalf("rest %q is not the end of the input", rest)
		}
		consumed := data[:len(data)-len(rest)]
		switch h.version {
		case 0:
			if len(consumed) != 0 {
				t.Fatalf("no header, yet %q is gone", consumed)
			}
		case 1:
			if !bytes.HasPrefix(consumed, []byte(v1Prefix)) || !bytes.HasSuffix(consumed, []byte("\r\n")) || len(consumed) > v1MaxLen {
				t.Fatalf("v1 header %q", consumed)
			}
		case 2:
			if !bytes.HasPrefix(consumed, []byte(v2Sig)) || len(consumed) != v2FixedLen+int(binary.BigEndian.Uint16(consumed[14:16])) {
				t.Fatalf("v2 header %q", consumed)
			}
		default:
			t.Fatalf("version %d", h.version)
		}
		if c, ok := h.client(); ok {
			if a := c.Addr(); !a.IsValid() || a.Is4In6() || a.Zone() != "" {
				t.Fatalf("client address %s", a)
			}
		}
		if h.version != 0 {
			back, tail, err := readAll(t, bytes.NewReader(encode(h)))
			if err != nil || back != h || len(tail) != 0 {
				t.Fatalf("%+v came back as %+v, %q, %v", h, back, tail, err)
			}
		}
	})
}

// FuzzConn sends arbitrary bytes, in pieces, to a Conn from a trusted
// peer: what it reads is the stream after the header, or the whole stream
// if there is none; or the header's error.
func FuzzConn(f *testing.F) {
	for i, s := range proxySeeds() {
		f.Add(s, uint8(i))
	}
	l := &Listener{timeout: time.Minute, log: slog.New(slog.DiscardHandler)}
	f.Fuzz(func(t *testing.T, data []byte, piece uint8) {
		want, wantRest, wantErr := readAll(t, bytes.NewReader(data))
		client, server := net.Pipe()
		defer client.Close()
		c := &Conn{raw: server, l: l}
		defer c.Close()
		go func() {
			for b := data; len(b) > 0; {
				n, err := client.Write(b[:min(len(b), int(piece%64)+1)])
				if err != nil {
					return
				}
				b = b[n:]
			}
			client.Close()
		}()
		got, err := io.ReadAll(c)
		if wantErr != nil {
			if errClass(err) != "malformed" {
				t.Fatalf("read %q, %v; want %v", got, err, wantErr)
			}
			return
		}
		if err != nil || !bytes.Equal(got, wantRest) {
			t.Fatalf("read %q, %v; want %q", got, err, wantRest)
		}
		ra := c.RemoteAddr()
		if cl, ok := want.client(); ok {
			if ra.String() != net.TCPAddrFromAddrPort(cl).String() {
				t.Fatalf("RemoteAddr %s, want %s", ra, cl)
			}
		} else if ra != server.RemoteAddr() {
			t.Fatalf("RemoteAddr %s, want the peer's", ra)
		}
	})
}

// FuzzForwarded reads X-Forwarded-For in two fields from a peer, and
// checks FromRequest against a plain reading of the rule: split every
// entry, walk from the right past trusted addresses.
func FuzzForwarded(f *testing.F) {
	for _, s := range [][3]string{
		{"10.1.2.3:1234", "198.51.100.7", ""},
		{"10.1.2.3:1234", "1.1.1.1, 198.51.100.7", "203.0.113.9, 10.0.0.5"},
		{"192.0.2.1:80", "198.51.100.7", ""},
		{"[2001:db8:ffff::1]:443", "[2001:db8::7]:51000, 2001:db8:ffff::2", ""},
		{"10.1.2.3:1234", "198.51.100.7, unknown", "10.0.0.1"},
		{"10.1.2.3:1234", ",, ,", "\t"},
		{"[::ffff:10.1.2.3]:1", "::ffff:198.51.100.7:80", "[fe80::1%eth0]"},
		{"pipe", "198.51.100.7", ""},
	} {
		f.Add(s[0], s[1], s[2])
	}
	f.Fuzz(func(t *testing.T, remote, xff1, xff2 string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = remote
		r.Header["X-Forwarded-For"] = []string{xff1, xff2}
		got := FromRequest(r, testTrusted)

		peer := remoteAddr(remote)
		want := peer
		var entries []string
		for _, v := range []string{xff1, xff2} {
			for e := range strings.SplitSeq(v, ",") {
				if e = strings.Trim(e, " \t"); e != "" {
					entries = append(entries, e)
				}
			}
		}
		for i := len(entries) - 1; i >= 0 && isTrusted(testTrusted, want); i-- {
			ip, ok := parseForwarded(entries[i])
			if !ok {
				break
			}
			want = ip
		}
		if got != want {
			t.Fatalf("FromRequest = %s, want %s (peer %s, entries %q)", got, want, peer, entries)
		}
		if joined := fromForwarded(peer, []string{xff1 + "," + xff2}, testTrusted); joined != got {
			t.Fatalf("as one field: %s, as two: %s", joined, got)
		}
		if !isTrusted(testTrusted, peer) && got != peer {
			t.Fatalf("an untrusted peer's header was read: %s", got)
		}
		if got.IsValid() && (got.Is4In6() || got.Zone() != "") {
			t.Fatalf("address %s not normalized", got)
		}
		for _, e := range entries {
			ip, ok := parseForwarded(e)
			if !ok {
				continue
			}
			if back, ok := parseForwarded(ip.String()); !ok || back != ip {
				t.Fatalf("%q parsed as %s, which parses back as %s, %v", e, ip, back, ok)
			}
			if direct, err := netip.ParseAddr(e); err == nil && direct.Zone() == "" && direct.Unmap() != ip {
				t.Fatalf("%q parsed as %s, not %s", e, ip, direct.Unmap())
			}
		}
	})
}
