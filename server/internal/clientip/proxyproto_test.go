// SPDX-License-Identifier: Apache-2.0

package clientip

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"
)

// v2 builds a version 2 header: verCmd, famProto, the address block and
// the TLVs, with the length they make.
func v2(verCmd, famProto byte, addrs, tlvs []byte) []byte {
	b := []byte(v2Sig)
	b = append(b, verCmd, famProto)
	b = binary.BigEndian.AppendUint16(b, uint16(len(addrs)+len(tlvs)))
	b = append(b, addrs...)
	return append(b, tlvs...)
}

// v2Addrs is the address block of src and dst, IPv4 or IPv6.
func v2Addrs(src, dst netip.AddrPort) []byte {
	var b []byte
	b = append(b, src.Addr().AsSlice()...)
	b = append(b, dst.Addr().AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}

// tlv is one type-length-value extension.
func tlv(typ byte, value []byte) []byte {
	b := []byte{typ}
	b = binary.BigEndian.AppendUint16(b, uint16(len(value)))
	return append(b, value...)
}

// encode writes h as the header of version h.version, for round trips.
// IPv4 addresses go as IPv4-mapped IPv6 when the other is IPv6.
func encode(h header) []byte {
	six := h.src.Addr().Is6() || h.dst.Addr().Is6()
	as6 := func(ap netip.AddrPort) netip.AddrPort {
		return netip.AddrPortFrom(netip.AddrFrom16(ap.Addr().As16()), ap.Port())
	}
	switch {
	case h.version == 1 && h.local:
		return []byte("PROXY UNKNOWN\r\n")
	case h.version == 1:
		proto, src, dst := "TCP4", h.src, h.dst
		if six {
			proto, src, dst = "TCP6", as6(src), as6(dst)
		}
		return []byte("PROXY " + proto + " " + src.Addr().String() + " " + dst.Addr().String() + " " +
			itoa(src.Port()) + " " + itoa(dst.Port()) + "\r\n")
	case h.version == 2 && h.local:
		return v2(0x20, 0x00, nil, nil)
	case h.version == 2 && !six:
		return v2(0x21, 0x11, v2Addrs(h.src, h.dst), nil)
	case h.version == 2:
		return v2(0x21, 0x21, v2Addrs(as6(h.src), as6(h.dst)), nil)
	}
	return nil
}

func itoa(p uint16) string { return strconv.Itoa(int(p)) }

var (
	src4 = netip.MustParseAddrPort("192.0.2.7:51000")
	dst4 = netip.MustParseAddrPort("198.51.100.1:443")
	src6 = netip.MustParseAddrPort("[2001:db8::7]:51000")
	dst6 = netip.MustParseAddrPort("[2001:db8:1::1]:443")
)

// errClass is which sentinel an error wraps, for comparing results read
// in different pieces: the byte counts in the messages differ.
func errClass(err error) string {
	switch {
	case err == nil:
		return "nil"
	case errors.Is(err, ErrMalformedHeader):
		return "malformed"
	case errors.Is(err, ErrHeaderTimeout):
		return "timeout"
	}
	return "other"
}

// readAll reads a header from r and returns it with everything after it.
func readAll(t testing.TB, r io.Reader) (header, []byte, error) {
	t.Helper()
	h, rest, err := readHeader(r)
	if err != nil {
		return h, nil, err
	}
	tail, rerr := io.ReadAll(r)
	if rerr != nil {
		t.Fatalf("reading after the header: %v", rerr)
	}
	return h, append(append([]byte(nil), rest...), tail...), nil
}

func TestReadHeader(t *testing.T) {
	const body = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	tlsHello := []byte{0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03}
	big := bytes.Repeat([]byte{0xAB}, 1000)
	unixAddrs := make([]byte, 216)
	tests := []struct {
		name    string
		in      []byte
		want    header
		rest    string // what follows the header; "" with an error
		wantErr error  // nil, ErrMalformedHeader or io.ErrUnexpectedEOF (also malformed)
		errHas  string
	}{
		// No header: every byte passes through.
		{name: "empty", in: nil},
		{name: "http", in: []byte(body), rest: body},
		{name: "tls", in: tlsHello, rest: string(tlsHello)},
		{name: "xmpp", in: []byte("<?xml version='1.0'?>"), rest: "<?xml version='1.0'?>"},
		{name: "POST", in: []byte("POST / HTTP/1.1\r\n"), rest: "POST / HTTP/1.1\r\n"},
		{name: "PROPFIND", in: []byte("PROPFIND / HTTP/1.1\r\n"), rest: "PROPFIND / HTTP/1.1\r\n"},
		{name: "h2 preface", in: []byte("PRI * HTTP/2.0\r\n"), rest: "PRI * HTTP/2.0\r\n"},
		{name: "lower case proxy", in: []byte("proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"), rest: "proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n"},
		{name: "PROXY without space", in: []byte("PROXYTCP4\r\n"), rest: "PROXYTCP4\r\n"},
		{name: "CRLF CRLF not v2", in: []byte("\r\n\r\nGET"), rest: "\r\n\r\nGET"},
		{name: "v2 signature one byte off", in: append([]byte("\r\n\r\n\x00\r\nQUIT\r"), 0x21), rest: "\r\n\r\n\x00\r\nQUIT\r\x21"},

		// Version 1.
		{name: "v1 TCP4", in: []byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\r\n" + body),
			want: header{version: 1, src: src4, dst: dst4}, rest: body},
		{name: "v1 TCP6", in: []byte("PROXY TCP6 2001:db8::7 2001:db8:1::1 51000 443\r\n" + body),
			want: header{version: 1, src: src6, dst: dst6}, rest: body},
		{name: "v1 TCP6 IPv4-mapped", in: []byte("PROXY TCP6 ::ffff:192.0.2.7 ::ffff:198.51.100.1 51000 443\r\n"),
			want: header{version: 1, src: src4, dst: dst4}},
		{name: "v1 UNKNOWN", in: []byte("PROXY UNKNOWN\r\n" + body), want: header{version: 1, local: true}, rest: body},
		{name: "v1 UNKNOWN with addresses", in: []byte("PROXY UNKNOWN ffff:f...f ffff:f...f 65535 65535\r\nx"),
			want: header{version: 1, local: true}, rest: "x"},
		{name: "v1 longest", in: []byte("PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n"),
			want: header{version: 1,
				src: netip.MustParseAddrPort("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"),
				dst: netip.MustParseAddrPort("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535")}},
		{name: "v1 ports 0", in: []byte("PROXY TCP4 192.0.2.7 198.51.100.1 0 0\r\n"),
			want: header{version: 1, src: netip.AddrPortFrom(src4.Addr(), 0), dst: netip.AddrPortFrom(dst4.Addr(), 0)}},
		{name: "v1 too long", in: []byte("PROXY UNKNOWN " + strings.Repeat("x", 100) + "\r\n"), wantErr: ErrMalformedHeader, errHas: "without CRLF in its first 107 bytes"},
		{name: "v1 no CRLF", in: []byte("PROXY UNKNOWN " + strings.Repeat("x", 200)), wantErr: ErrMalformedHeader, errHas: "without CRLF"},
		{name: "v1 LF only", in: []byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\n"), wantErr: ErrMalformedHeader, errHas: "LF without CR"},
		{name: "v1 truncated", in: []byte("PROXY TCP4 192.0.2.7 198.5"), wantErr: io.ErrUnexpectedEOF, errHas: "truncated"},
		{name: "v1 truncated in signature", in: []byte("PROX"), wantErr: io.ErrUnexpectedEOF, errHas: "v1, truncated after 4 bytes"},
		{name: "v1 empty protocol", in: []byte("PROXY \r\n"), wantErr: ErrMalformedHeader, errHas: `protocol ""`},
		{name: "v1 UDP4", in: []byte("PROXY UDP4 192.0.2.7 198.51.100.1 51000 443\r\n"), wantErr: ErrMalformedHeader, errHas: `protocol "UDP4"`},
		{name: "v1 tcp4 lower case", in: []byte("PROXY tcp4 192.0.2.7 198.51.100.1 51000 443\r\n"), wantErr: ErrMalformedHeader},
		{name: "v1 three fields", in: []byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000\r\n"), wantErr: ErrMalformedHeader, errHas: "four fields"},
		{name: "v1 five fields", in: []byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000 443 1\r\n"), wantErr: ErrMalformedHeader, errHas: "four fields"},
		{name: "v1 double space", in: []byte("PROXY TCP4 192.0.2.7  198.51.100.1 51000 443\r\n"), wantErr: ErrMalformedHeader},
		{name: "v1 trailing space", in: []byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000 443 \r\n"), wantErr: ErrMalformedHeader},
		{name: "v1 TCP4 with IPv6", in: []byte("PROXY TCP4 2001:db8::7 198.51.100.1 51000 443\r\n"), wantErr: ErrMalformedHeader, errHas: "source address"},
		{name: "v1 TCP6 with IPv4", in: []byte("PROXY TCP6 2001:db8::7 198.51.100.1 51000 443\r\n"), wantErr: ErrMalformedHeader, errHas: "destination address"},
		{name: "v1 bad IPv4", in: []byte("PROXY TCP4 256.0.2.7 198.51.100.1 51000 443\r\n"), wantErr: ErrMalformedHeader, errHas: `"256.0.2.7"`},
		{name: "v1 IPv4 leading zero", in: []byte("PROXY TCP4 192.0.2.07 198.51.100.1 51000 443\r\n"), wantErr: ErrMalformedHeader},
		{name: "v1 zone", in: []byte("PROXY TCP6 fe80::1%eth0 2001:db8:1::1 51000 443\r\n"), wantErr: ErrMalformedHeader},
		{name: "v1 hostname", in: []byte("PROXY TCP4 example.com 198.51.100.1 51000 443\r\n"), wantErr: ErrMalformedHeader},
		{name: "v1 port too big", in: []byte("PROXY TCP4 192.0.2.7 198.51.100.1 65536 443\r\n"), wantErr: ErrMalformedHeader, errHas: "source port"},
		{name: "v1 port sign", in: []byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000 +443\r\n"), wantErr: ErrMalformedHeader, errHas: "destination port"},
		{name: "v1 port empty", in: []byte("PROXY TCP4 192.0.2.7 198.51.100.1  443\r\n"), wantErr: ErrMalformedHeader},
		{name: "v1 port hex", in: []byte("PROXY TCP4 192.0.2.7 198.51.100.1 0x50 443\r\n"), wantErr: ErrMalformedHeader},
		{name: "v1 NUL", in: []byte("PROXY TCP4 192.0.2.7\x00 198.51.100.1 51000 443\r\n"), wantErr: ErrMalformedHeader},

		// Version 2.
		{name: "v2 TCP4", in: append(v2(0x21, 0x11, v2Addrs(src4, dst4), nil), body...),
			want: header{version: 2, src: src4, dst: dst4}, rest: body},
		{name: "v2 TCP6", in: append(v2(0x21, 0x21, v2Addrs(src6, dst6), nil), body...),
			want: header{version: 2, src: src6, dst: dst6}, rest: body},
		{name: "v2 TCP6 IPv4-mapped", in: v2(0x21, 0x21, v2Addrs(
			netip.AddrPortFrom(netip.AddrFrom16(src4.Addr().As16()), src4.Port()),
			netip.AddrPortFrom(netip.AddrFrom16(dst4.Addr().As16()), dst4.Port())), nil),
			want: header{version: 2, src: src4, dst: dst4}},
		{name: "v2 TLVs", in: append(v2(0x21, 0x11, v2Addrs(src4, dst4), append(tlv(0x01, []byte("h2")), tlv(0xEA, []byte("vpce-0123"))...)), body...),
			want: header{version: 2, src: src4, dst: dst4}, rest: body},
		{name: "v2 TLVs larger than the buffer", in: append(v2(0x21, 0x21, v2Addrs(src6, dst6), tlv(0xE0, big)), body...),
			want: header{version: 2, src: src6, dst: dst6}, rest: body},
		{name: "v2 longest", in: append(v2(0x21, 0x11, v2Addrs(src4, dst4), tlv(0xE0, make([]byte, 65535-12-3))), 'x'),
			want: header{version: 2, src: src4, dst: dst4}, rest: "x"},
		{name: "v2 LOCAL", in: append(v2(0x20, 0x00, nil, nil), body...), want: header{version: 2, local: true}, rest: body},
		{name: "v2 LOCAL with addresses", in: append(v2(0x20, 0x11, v2Addrs(src4, dst4), nil), body...), want: header{version: 2, local: true}, rest: body},
		{name: "v2 LOCAL short block", in: append(v2(0x20, 0x21, []byte{1, 2, 3}, nil), body...), want: header{version: 2, local: true}, rest: body},
		{name: "v2 UNSPEC", in: append(v2(0x21, 0x00, nil, tlv(0x04, nil)), body...), want: header{version: 2, local: true}, rest: body},
		{name: "v2 UDP4", in: append(v2(0x21, 0x12, v2Addrs(src4, dst4), nil), body...), want: header{version: 2, local: true}, rest: body},
		{name: "v2 INET unspecified protocol", in: v2(0x21, 0x10, v2Addrs(src4, dst4), nil), want: header{version: 2, local: true}},
		{name: "v2 UNIX", in: append(v2(0x21, 0x31, unixAddrs, nil), body...), want: header{version: 2, local: true}, rest: body},
		{name: "v2 version 1", in: v2(0x11, 0x11, v2Addrs(src4, dst4), nil), wantErr: ErrMalformedHeader, errHas: "version 1"},
		{name: "v2 version 3", in: v2(0x31, 0x11, v2Addrs(src4, dst4), nil), wantErr: ErrMalformedHeader, errHas: "version 3"},
		{name: "v2 command 2", in: v2(0x22, 0x11, v2Addrs(src4, dst4), nil), wantErr: ErrMalformedHeader, errHas: "command"},
		{name: "v2 family 4", in: v2(0x21, 0x41, v2Addrs(src4, dst4), nil), wantErr: ErrMalformedHeader, errHas: "family"},
		{name: "v2 protocol 3", in: v2(0x21, 0x13, v2Addrs(src4, dst4), nil), wantErr: ErrMalformedHeader, errHas: "family"},
		{name: "v2 INET block too short", in: v2(0x21, 0x11, v2Addrs(src4, dst4)[:11], nil), wantErr: ErrMalformedHeader, errHas: "12 needed"},
		{name: "v2 INET6 with IPv4 block", in: v2(0x21, 0x21, v2Addrs(src4, dst4), nil), wantErr: ErrMalformedHeader, errHas: "36 needed"},
		{name: "v2 UNIX block too short", in: v2(0x21, 0x31, unixAddrs[:100], nil), wantErr: ErrMalformedHeader, errHas: "216 needed"},
		{name: "v2 truncated in signature", in: []byte("\r\n\r\n\x00\r\nQU"), wantErr: io.ErrUnexpectedEOF, errHas: "v2, truncated"},
		{name: "v2 truncated in fixed part", in: v2(0x21, 0x11, nil, nil)[:14], wantErr: io.ErrUnexpectedEOF},
		{name: "v2 truncated in addresses", in: v2(0x21, 0x11, v2Addrs(src4, dst4), nil)[:20], wantErr: io.ErrUnexpectedEOF},
		{name: "v2 truncated in TLVs", in: v2(0x21, 0x11, v2Addrs(src4, dst4), tlv(0xE0, big))[:500], wantErr: io.ErrUnexpectedEOF},
		{name: "v2 length beyond the stream", in: v2(0x20, 0x00, nil, make([]byte, 10))[:18], wantErr: io.ErrUnexpectedEOF},
	}
	readers := []struct {
		name string
		r    func([]byte) io.Reader
	}{
		{"whole", func(b []byte) io.Reader { return bytes.NewReader(b) }},
		{"byte by byte", func(b []byte) io.Reader { return iotest.OneByteReader(bytes.NewReader(b)) }},
		{"in pieces of 7", func(b []byte) io.Reader { return &pieces{b: b, n: 7} }},
		{"with data and EOF together", func(b []byte) io.Reader { return iotest.DataErrReader(bytes.NewReader(b)) }},
	}
	for _, tt := range tests {
		for _, rd := range readers {
			t.Run(tt.name+"/"+rd.name, func(t *testing.T) {
				h, rest, err := readAll(t, rd.r(tt.in))
				if tt.wantErr != nil {
					if !errors.Is(err, tt.wantErr) || !errors.Is(err, ErrMalformedHeader) {
						t.Fatalf("err = %v, want %v (a malformed header)", err, tt.wantErr)
					}
					if !strings.Contains(err.Error(), tt.errHas) {
						t.Fatalf("err = %q, want it to say %q", err, tt.errHas)
					}
					return
				}
				if err != nil {
					t.Fatalf("err = %v", err)
				}
				if h != tt.want {
					t.Errorf("header = %+v, want %+v", h, tt.want)
				}
				if string(rest) != tt.rest {
					t.Errorf("rest = %q, want %q", rest, tt.rest)
				}
			})
		}
	}
}

// pieces reads n bytes at a time.
type pieces struct {
	b []byte
	n int
}

func (p *pieces) Read(b []byte) (int, error) {
	if len(p.b) == 0 {
		return 0, io.EOF
	}
	n := copy(b[:min(len(b), p.n)], p.b)
	p.b = p.b[n:]
	return n, nil
}

func TestReadHeaderRoundTrip(t *testing.T) {
	for _, h := range []header{
		{version: 1, src: src4, dst: dst4},
		{version: 1, src: src6, dst: dst6},
		{version: 1, local: true},
		{version: 2, src: src4, dst: dst4},
		{version: 2, src: src6, dst: dst6},
		{version: 2, local: true},
	} {
		got, rest, err := readAll(t, bytes.NewReader(encode(h)))
		if err != nil || got != h || len(rest) != 0 {
			t.Errorf("%+v: read back %+v, rest %q, err %v", h, got, rest, err)
		}
	}
}

// TestReadHeaderStopsAtHeader checks that a header is read without waiting
// for more than it: the data after it may not have been sent yet.
func TestReadHeaderStopsAtHeader(t *testing.T) {
	for _, in := range [][]byte{
		[]byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\r\n"),
		v2(0x21, 0x11, v2Addrs(src4, dst4), tlv(0xE0, bytes.Repeat([]byte{1}, 600))),
	} {
		// A reader that fails the test if read past its data.
		r := io.MultiReader(iotest.OneByteReader(bytes.NewReader(in)), readerFunc(func([]byte) (int, error) {
			t.Fatalf("%q: read past the header", in[:6])
			return 0, nil
		}))
		if _, _, err := readHeader(r); err != nil {
			t.Fatal(err)
		}
	}
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }
