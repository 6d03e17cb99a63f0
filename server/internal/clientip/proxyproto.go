// SPDX-License-Identifier: Apache-2.0

package clientip

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// The PROXY protocol, as HAProxy's proxy-protocol.txt specifies it.
const (
	v1Prefix = "PROXY "
	// v1MaxLen is the longest version 1 header, CRLF included.
	v1MaxLen = 107
	// v2Sig opens every version 2 header.
	v2Sig = "\r\n\r\n\x00\r\nQUIT\n"
	// v2FixedLen is the signature, the version and command, the family and
	// protocol, and the length of what follows.
	v2FixedLen = 16
	// headerBuf holds a v1 header or a v2 header's fixed part and its
	// largest address block (AF_UNIX, 216 bytes), and what comes with them.
	headerBuf = 256
)

// ErrMalformedHeader is the error, wrapped, of a connection from a trusted
// peer whose bytes begin a PROXY protocol signature but do not go on as
// the protocol says.
var ErrMalformedHeader = errors.New("malformed PROXY protocol header")

// ErrHeaderTimeout is the error, wrapped, of a connection from a trusted
// peer that began a PROXY protocol header and did not finish it within
// Config.HeaderTimeout.
var ErrHeaderTimeout = errors.New("PROXY protocol header not finished in time")

// header is what a PROXY protocol header says.
type header struct {
	version int  // 1 or 2; 0 when the stream does not begin with a header
	local   bool // LOCAL, UNKNOWN or a family other than TCP over IP: keep the peer's address
	src     netip.AddrPort
	dst     netip.AddrPort
}

// client is the address the header names as the client's, if it names one.
func (h header) client() (netip.AddrPort, bool) {
	return h.src, h.version != 0 && !h.local
}

// headerReader reads a header from r into buf, which has room for
// headerBuf bytes: what a read brings beyond the header stays in buf, for
// the reader of the stream.
type headerReader struct {
	r   io.Reader
	buf []byte
	got int // bytes read so far, for errors
}

// more reads at least one byte into buf.
func (hr *headerReader) more() error {
	if len(hr.buf) == cap(hr.buf) {
		// Callers never ask for more than the buffer holds.
		return errors.New("clientip: internal error: header buffer full")
	}
	for range 100 {
		n, err := hr.r.Read(hr.buf[len(hr.buf):cap(hr.buf)])
		hr.buf = hr.buf[:len(hr.buf)+n]
		hr.got += n
		if n > 0 {
			// An error that came with bytes comes again on the next read.
			return nil
		}
		if err != nil {
			return err
		}
	}
	return io.ErrNoProgress
}

// fill reads until buf holds at least n bytes.
func (hr *headerReader) fill(n int) error {
	for len(hr.buf) < n {
		if err := hr.more(); err != nil {
			return err
		}
	}
	return nil
}

// fail turns a read error inside a header into the connection's error.
func (hr *headerReader) fail(version int, err error) error {
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w: v%d, %d bytes read: %w", ErrHeaderTimeout, version, hr.got, err)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("%w: v%d, truncated after %d bytes: %w", ErrMalformedHeader, version, hr.got, io.ErrUnexpectedEOF)
	}
	return fmt.Errorf("v%d, %d bytes read: %w", version, hr.got, err)
}

// readHeader reads a PROXY protocol header, version 1 or 2, from the start
// of r. rest is what it read past the header: the start of the stream the
// header introduces. When the stream does not begin with a PROXY
// signature, the header is zero and rest holds every byte read, untouched;
// a stream that ends or fails before its first byte is such a stream, with
// no bytes.
func readHeader(r io.Reader) (h header, rest []byte, err error) {
	hr := headerReader{r: r, buf: make([]byte, 0, headerBuf)}
	for {
		switch signature(hr.buf) {
		case 1:
			return hr.v1()
		case 2:
			return hr.v2()
		case -1:
			return header{}, hr.buf, nil
		}
		if err := hr.more(); err != nil {
			if len(hr.buf) == 0 {
				return header{}, nil, nil
			}
			v := 1
			if hr.buf[0] == v2Sig[0] {
				v = 2
			}
			return header{}, nil, hr.fail(v, err)
		}
	}
}

// signature tells what b begins: 1 or 2 for that version's signature, -1
// for anything else, 0 when b is too short to tell.
func signature(b []byte) int {
	if len(b) == 0 {
		return 0
	}
	for v, sig := range []string{1: v1Prefix, 2: v2Sig} {
		if v == 0 {
			continue
		}
		n := min(len(b), len(sig))
		if string(b[:n]) == sig[:n] {
			if n == len(sig) {
				return v
			}
			return 0
		}
	}
	return -1
}

// errV1TooLong is the error of a version 1 header without CRLF in its
// first v1MaxLen bytes.
var errV1TooLong = fmt.Errorf("%w: v1 line without CRLF in its first %d bytes", ErrMalformedHeader, v1MaxLen)

// v1 reads the rest of a version 1 header, a line of at most 107 bytes.
func (hr *headerReader) v1() (header, []byte, error) {
	for {
		if i := bytes.IndexByte(hr.buf, '\n'); i >= 0 {
			if i+1 > v1MaxLen {
				return header{}, nil, errV1TooLong
			}
			if hr.buf[i-1] != '\r' {
				return header{}, nil, fmt.Errorf("%w: v1 line ends in LF without CR", ErrMalformedHeader)
			}
			h, err := parseV1(string(hr.buf[len(v1Prefix) : i-1]))
			if err != nil {
				return header{}, nil, err
			}
			return h, hr.buf[i+1:], nil
		}
		if len(hr.buf) >= v1MaxLen {
			return header{}, nil, errV1TooLong
		}
		if err := hr.more(); err != nil {
			return header{}, nil, hr.fail(1, err)
		}
	}
}

// parseV1 parses a version 1 line after "PROXY " and before CRLF.
func parseV1(line string) (header, error) {
	proto, rest, _ := strings.Cut(line, " ")
	switch proto {
	case "UNKNOWN":
		// Whatever follows is to be ignored.
		return header{version: 1, local: true}, nil
	case "TCP4", "TCP6":
	default:
		return header{}, fmt.Errorf("%w: v1 protocol %q is not TCP4, TCP6 or UNKNOWN", ErrMalformedHeader, proto)
	}
	f := strings.Split(rest, " ")
	if len(f) != 4 {
		return header{}, fmt.Errorf("%w: v1 %s line %q does not have four fields after the protocol", ErrMalformedHeader, proto, line)
	}
	family := "IPv4"
	if proto == "TCP6" {
		family = "IPv6"
	}
	var addr [2]netip.Addr
	var port [2]uint16
	for i, what := range []string{"source", "destination"} {
		ip, err := netip.ParseAddr(f[i])
		if err != nil || ip.Zone() != "" || (proto == "TCP4") != ip.Is4() {
			return header{}, fmt.Errorf("%w: v1 %s address %q is not an %s address", ErrMalformedHeader, what, f[i], family)
		}
		p, err := parsePort(f[2+i])
		if err != nil {
			return header{}, fmt.Errorf("%w: v1 %s port %q is not a port number", ErrMalformedHeader, what, f[2+i])
		}
		addr[i], port[i] = ip.Unmap(), p
	}
	return header{
		version: 1,
		src:     netip.AddrPortFrom(addr[0], port[0]),
		dst:     netip.AddrPortFrom(addr[1], port[1]),
	}, nil
}

// parsePort parses a decimal port, digits only.
func parsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || strings.Trim(s, "0123456789") != "" {
		return 0, strconv.ErrSyntax
	}
	n, err := strconv.ParseUint(s, 10, 16)
	return uint16(n), err
}

// v2 reads the rest of a version 2 header.
func (hr *headerReader) v2() (header, []byte, error) {
	if err := hr.fill(v2FixedLen); err != nil {
		return header{}, nil, hr.fail(2, err)
	}
	verCmd, famProto := hr.buf[12], hr.buf[13]
	length := int(binary.BigEndian.Uint16(hr.buf[14:16]))
	if v := verCmd >> 4; v != 2 {
		return header{}, nil, fmt.Errorf("%w: v2 signature with version %d", ErrMalformedHeader, v)
	}
	const (
		cmdLocal = 0
		cmdProxy = 1
	)
	cmd := verCmd & 0xf
	if cmd != cmdLocal && cmd != cmdProxy {
		return header{}, nil, fmt.Errorf("%w: v2 command %#x is neither LOCAL nor PROXY", ErrMalformedHeader, cmd)
	}
	fam, proto := famProto>>4, famProto&0xf
	if fam > 3 || proto > 2 {
		return header{}, nil, fmt.Errorf("%w: v2 address family and protocol %#02x", ErrMalformedHeader, famProto)
	}
	h := header{version: 2, local: true}
	if cmd == cmdProxy {
		// UNSPEC, INET, INET6, UNIX: the length of the address block.
		need := [4]int{0, 12, 36, 216}[fam]
		if length < need {
			return header{}, nil, fmt.Errorf("%w: v2 address block of %d bytes, %d needed for family %d", ErrMalformedHeader, length, need, fam)
		}
		if err := hr.fill(v2FixedLen + need); err != nil {
			return header{}, nil, hr.fail(2, err)
		}
		const stream = 1
		a := hr.buf[v2FixedLen:]
		switch {
		case fam == 1 && proto == stream:
			h.local = false
			h.src = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[0:4])), binary.BigEndian.Uint16(a[8:10]))
			h.dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(a[4:8])), binary.BigEndian.Uint16(a[10:12]))
		case fam == 2 && proto == stream:
			h.local = false
			h.src = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[0:16])).Unmap(), binary.BigEndian.Uint16(a[32:34]))
			h.dst = netip.AddrPortFrom(netip.AddrFrom16([16]byte(a[16:32])).Unmap(), binary.BigEndian.Uint16(a[34:36]))
		}
	}
	// Skip the rest of the header: the addresses not used and the TLVs.
	end := v2FixedLen + length
	if len(hr.buf) >= end {
		return h, hr.buf[end:], nil
	}
	skip := end - len(hr.buf)
	for {
		hr.buf = hr.buf[:0]
		if err := hr.more(); err != nil {
			return header{}, nil, hr.fail(2, err)
		}
		if len(hr.buf) >= skip {
			return h, hr.buf[skip:], nil
		}
		skip -= len(hr.buf)
	}
}
