// SPDX-License-Identifier: Apache-2.0

package clientip

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"tether/internal/logtest"
	"tether/internal/testpki"
)

// hang is how long a test waits for what must happen before it calls it a
// hang. It is no measure of speed.
const hang = 10 * time.Second

var (
	loopback  = netip.MustParsePrefix("127.0.0.0/8")
	proxyOnly = netip.MustParsePrefix("127.0.0.2/32") // the "proxy"; 127.0.0.1 is a client
)

// listen opens a Listener on 127.0.0.1:0; the test closes it.
func listen(t *testing.T, cfg Config) *Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := NewListener(ln, cfg)
	t.Cleanup(func() { l.Close() })
	return l
}

// acceptor accepts from l in its own goroutine until l closes; the test's
// cleanup closes every connection it accepted and waits for it.
func acceptor(t *testing.T, l net.Listener) <-chan net.Conn {
	t.Helper()
	ch := make(chan net.Conn)
	stop, done := make(chan struct{}), make(chan struct{})
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		defer close(done)
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			select {
			case ch <- c:
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		l.Close()
		<-done
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return ch
}

// next is the next accepted connection.
func next(t *testing.T, ch <-chan net.Conn) net.Conn {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(hang):
		t.Fatal("no connection accepted")
		return nil
	}
}

// dial connects to l from the local address from, 127.0.0.1 or 127.0.0.2.
func dial(t *testing.T, l net.Listener, from string) net.Conn {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}, Timeout: hang}
	c, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// writeInPieces writes the first 100 bytes of b n bytes at a time with a
// pause between, so that the reader gets them in several TCP segments,
// then the rest.
func writeInPieces(t testing.TB, c net.Conn, b []byte, n int) {
	t.Helper()
	for sent := 0; len(b) > 0; {
		k := len(b)
		if sent < 100 {
			k = min(n, k)
		}
		if _, err := c.Write(b[:k]); err != nil {
			t.Error(err)
			return
		}
		b, sent = b[k:], sent+k
		time.Sleep(time.Millisecond)
	}
}

// await runs f and fails the test if it does not return in time.
func await[T any](t *testing.T, what string, f func() T) T {
	t.Helper()
	ch := make(chan T, 1)
	go func() { ch <- f() }()
	select {
	case v := <-ch:
		return v
	case <-time.After(hang):
		t.Fatalf("%s: hangs", what)
		var zero T
		return zero
	}
}

// echoHandler answers with the request's RemoteAddr and its client.
func echoHandler(trusted []netip.Prefix) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s %s", r.RemoteAddr, FromRequest(r, trusted))
	})
}

// serveHTTP serves h on ln with a real http.Server until the test ends.
func serveHTTP(t *testing.T, ln net.Listener, h http.Handler) {
	t.Helper()
	srv := &http.Server{Handler: h, ReadHeaderTimeout: hang, ErrorLog: log.New(io.Discard, "", 0)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
}

// get sends a GET over c, which may be TLS, and returns the body.
func get(t *testing.T, c net.Conn, xff string) (int, string) {
	t.Helper()
	req := "GET / HTTP/1.1\r\nHost: tether\r\nConnection: close\r\n"
	if xff != "" {
		req += "X-Forwarded-For: " + xff + "\r\n"
	}
	if _, err := io.WriteString(c, req+"\r\n"); err != nil {
		t.Fatal(err)
	}
	return readResponse(t, c)
}

func readResponse(t *testing.T, c net.Conn) (int, string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(hang))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("reading the response: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// headers are the PROXY headers the listener tests send, with the client
// each names; "" for none, when RemoteAddr is the peer's.
var headers = []struct {
	name   string
	header []byte
	remote string // RemoteAddr
	client string // FromRequest
}{
	{"none", nil, "", ""},
	{"v1 TCP4", []byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\r\n"), "192.0.2.7:51000", "192.0.2.7"},
	{"v1 TCP6", []byte("PROXY TCP6 2001:db8::7 2001:db8:1::1 51000 443\r\n"), "[2001:db8::7]:51000", "2001:db8::7"},
	{"v1 UNKNOWN", []byte("PROXY UNKNOWN\r\n"), "", ""},
	{"v2 TCP4", v2(0x21, 0x11, v2Addrs(src4, dst4), nil), "192.0.2.7:51000", "192.0.2.7"},
	{"v2 TCP6 with TLVs", v2(0x21, 0x21, v2Addrs(src6, dst6), append(tlv(0x01, []byte("http/1.1")), tlv(0xE0, bytes.Repeat([]byte{7}, 700))...)), "[2001:db8::7]:51000", "2001:db8::7"},
	{"v2 LOCAL", v2(0x20, 0x00, nil, nil), "", ""},
}

// TestListenerHTTP serves HTTP with net/http on a Listener: each kind of
// header, sent at once and in pieces, from a trusted peer.
func TestListenerHTTP(t *testing.T) {
	trusted := []netip.Prefix{loopback}
	l := listen(t, Config{Trusted: trusted})
	serveHTTP(t, l, echoHandler(trusted))
	for _, h := range headers {
		for _, piece := range []int{1 << 20, 1, 5, 13} {
			t.Run(fmt.Sprintf("%s/pieces of %d", h.name, piece), func(t *testing.T) {
				c := dial(t, l, "127.0.0.1")
				req := append(append([]byte(nil), h.header...), "GET / HTTP/1.1\r\nHost: tether\r\nX-Forwarded-For: 198.51.100.9\r\nConnection: close\r\n\r\n"...)
				writeInPieces(t, c, req, piece)
				code, body := readResponse(t, c)
				want := h.remote + " " + h.client
				if h.remote == "" {
					// The proxy's own connection: X-Forwarded-For names the client.
					want = c.LocalAddr().String() + " 198.51.100.9"
				}
				if code != 200 || body != want {
					t.Errorf("got %d %q, want 200 %q", code, body, want)
				}
			})
		}
	}
}

// TestListenerTLS serves HTTPS with the Listener under crypto/tls, as
// tether-server does with --tls-cert and a TCP passthrough load balancer.
func TestListenerTLS(t *testing.T) {
	pki, err := testpki.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(pki.Cert, pki.Key)
	if err != nil {
		t.Fatal(err)
	}
	trusted := []netip.Prefix{proxyOnly}
	l := listen(t, Config{Trusted: trusted})
	serveHTTP(t, tls.NewListener(l, &tls.Config{Certificates: []tls.Certificate{cert}}), echoHandler(trusted))
	clientTLS := &tls.Config{RootCAs: pki.Pool, ServerName: "127.0.0.1"}

	for _, h := range headers {
		t.Run(h.name, func(t *testing.T) {
			raw := dial(t, l, "127.0.0.2")
			writeInPieces(t, raw, h.header, 3)
			c := tls.Client(raw, clientTLS)
			code, body := get(t, c, "")
			want := h.remote + " " + h.client
			if h.remote == "" {
				want = raw.LocalAddr().String() + " 127.0.0.2"
			}
			if code != 200 || body != want {
				t.Errorf("got %d %q, want 200 %q", code, body, want)
			}
		})
	}

	t.Run("untrusted peer's header", func(t *testing.T) {
		raw := dial(t, l, "127.0.0.1")
		if _, err := raw.Write(headers[1].header); err != nil {
			t.Fatal(err)
		}
		c := tls.Client(raw, clientTLS)
		c.SetDeadline(time.Now().Add(hang))
		if err := c.Handshake(); err == nil {
			t.Fatal("TLS handshake after a PROXY header from an untrusted peer succeeded")
		}
	})
	t.Run("no header from an untrusted peer", func(t *testing.T) {
		c := tls.Client(dial(t, l, "127.0.0.1"), clientTLS)
		code, body := get(t, c, "198.51.100.9")
		if want := c.LocalAddr().String() + " 127.0.0.1"; code != 200 || body != want {
			t.Errorf("got %d %q, want 200 %q", code, body, want)
		}
	})
}

// TestListenerTLSConnLoop uses the Listener as package xmpp does: a
// goroutine of its own per connection that reads RemoteAddr, then shakes
// hands over TLS.
func TestListenerTLSConnLoop(t *testing.T) {
	pki, err := testpki.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(pki.Cert, pki.Key)
	if err != nil {
		t.Fatal(err)
	}
	l := listen(t, Config{Trusted: []netip.Prefix{loopback}})
	var wg sync.WaitGroup
	t.Cleanup(func() {
		l.Close()
		wg.Wait()
	})
	wg.Go(func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			wg.Go(func() {
				defer nc.Close()
				remote := nc.RemoteAddr().String()
				tc := tls.Server(nc, &tls.Config{Certificates: []tls.Certificate{cert}})
				tc.SetDeadline(time.Now().Add(hang))
				line, err := bufio.NewReader(tc).ReadString('\n')
				if err != nil {
					return
				}
				fmt.Fprintf(tc, "%s %s", remote, line)
			})
		}
	})
	// Many at once, each its own client.
	var cwg sync.WaitGroup
	for i := range 20 {
		cwg.Go(func() {
			raw, err := net.DialTimeout("tcp", l.Addr().String(), hang)
			if err != nil {
				t.Error(err)
				return
			}
			defer raw.Close()
			client := fmt.Sprintf("192.0.2.%d:%d", i+1, 40000+i)
			if i%2 == 0 {
				ap := netip.MustParseAddrPort(client)
				raw.Write(v2(0x21, 0x11, v2Addrs(ap, dst4), nil))
			} else {
				fmt.Fprintf(raw, "PROXY TCP4 %s 198.51.100.1 %d 443\r\n", strings.Split(client, ":")[0], 40000+i)
			}
			c := tls.Client(raw, &tls.Config{RootCAs: pki.Pool, ServerName: "127.0.0.1"})
			c.SetDeadline(time.Now().Add(hang))
			fmt.Fprintf(c, "hello %d\n", i)
			got, err := io.ReadAll(c)
			if want := fmt.Sprintf("%s hello %d\n", client, i); string(got) != want {
				t.Errorf("got %q (%v), want %q", got, err, want)
			}
		})
	}
	cwg.Wait()
}

// TestListenerUntrusted: a header from an untrusted peer is data.
func TestListenerUntrusted(t *testing.T) {
	l := listen(t, Config{Trusted: []netip.Prefix{proxyOnly}})
	ch := acceptor(t, l)
	for _, h := range headers[1:] {
		c := dial(t, l, "127.0.0.1")
		sent := append(append([]byte(nil), h.header...), "hello"...)
		c.Write(sent)
		c.(*net.TCPConn).CloseWrite()
		s := next(t, ch)
		if _, ok := s.(*Conn); ok {
			t.Errorf("%s: an untrusted peer's connection is wrapped", h.name)
		}
		if got, want := s.RemoteAddr().String(), c.LocalAddr().String(); got != want {
			t.Errorf("%s: RemoteAddr = %s, want the peer %s", h.name, got, want)
		}
		s.SetReadDeadline(time.Now().Add(hang))
		if got, err := io.ReadAll(s); err != nil || !bytes.Equal(got, sent) {
			t.Errorf("%s: read %q, %v; want what was sent, %q", h.name, got, err, sent)
		}
	}
}

// TestListenerPassThrough: a trusted peer without a header has its bytes
// read untouched, however close they come to a signature.
func TestListenerPassThrough(t *testing.T) {
	l := listen(t, Config{Trusted: []netip.Prefix{loopback}})
	ch := acceptor(t, l)
	for _, sent := range [][]byte{
		[]byte("PROXIMITY"),
		[]byte("\r\n\r\n\x00\r\nQUIX"),
		[]byte("PUT"),
		{0x16, 0x03, 0x01, 0x02, 0x00},
		bytes.Repeat([]byte("x"), 100_000),
	} {
		c := dial(t, l, "127.0.0.1")
		go func() {
			c.Write(sent)
			c.(*net.TCPConn).CloseWrite()
		}()
		s := next(t, ch)
		s.SetReadDeadline(time.Now().Add(hang))
		got, err := io.ReadAll(s)
		if err != nil || !bytes.Equal(got, sent) {
			t.Errorf("%.12q: read %.12q (%d bytes), %v", sent, got, len(got), err)
		}
		if got, want := s.RemoteAddr().String(), c.LocalAddr().String(); got != want {
			t.Errorf("%.12q: RemoteAddr = %s, want %s", sent, got, want)
		}
	}
}

// TestListenerBadHeader: a malformed header closes its connection with an
// error that says what is wrong; the listener goes on.
func TestListenerBadHeader(t *testing.T) {
	var logs logtest.Buffer
	l := listen(t, Config{
		Trusted: []netip.Prefix{loopback},
		Logger:  slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	ch := acceptor(t, l)
	for _, tt := range []struct {
		header []byte
		says   string
	}{
		{[]byte("PROXY TCP4 192.0.2.7 nope 51000 443\r\n"), `destination address "nope"`},
		{[]byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000 443" + strings.Repeat(" ", 70) + "\r\n"), "without CRLF"},
		{v2(0x21, 0x51, v2Addrs(src4, dst4), nil), "family"},
		{v2(0x21, 0x21, v2Addrs(src4, dst4), nil), "36 needed"},
	} {
		c := dial(t, l, "127.0.0.1")
		c.Write(append(tt.header, "GET / HTTP/1.1\r\n\r\n"...))
		s := next(t, ch)
		_, err := s.Read(make([]byte, 10))
		if !errors.Is(err, ErrMalformedHeader) || !strings.Contains(err.Error(), tt.says) {
			t.Errorf("Read: %v, want a malformed header that says %q", err, tt.says)
		}
		if _, err2 := s.Read(make([]byte, 10)); err2 != err {
			t.Errorf("second Read: %v, want the same error", err2)
		}
		if _, werr := s.Write([]byte("x")); werr != err {
			t.Errorf("Write: %v, want the header's error", werr)
		}
		if got := s.RemoteAddr().String(); got != c.LocalAddr().String() {
			t.Errorf("RemoteAddr after a bad header = %s, want the peer's", got)
		}
		// The peer sees its connection closed.
		c.SetReadDeadline(time.Now().Add(hang))
		if n, err := c.Read(make([]byte, 1)); n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("peer's read after a bad header: %d, %v; want the connection closed", n, err)
		}
	}
	if !strings.Contains(logs.String(), "level=DEBUG") || !strings.Contains(logs.String(), "malformed PROXY protocol header") {
		t.Errorf("log:\n%s\nwant the refusals at debug level", logs.String())
	}

	// Still accepting.
	c := dial(t, l, "127.0.0.1")
	c.Write(headers[1].header)
	if got := next(t, ch).RemoteAddr().String(); got != "192.0.2.7:51000" {
		t.Errorf("RemoteAddr after bad headers = %s", got)
	}
}

// TestListenerHTTPBadHeader: net/http closes the connection of a bad
// header without an answer, and serves the next.
func TestListenerHTTPBadHeader(t *testing.T) {
	trusted := []netip.Prefix{loopback}
	l := listen(t, Config{Trusted: trusted})
	serveHTTP(t, l, echoHandler(trusted))
	c := dial(t, l, "127.0.0.1")
	c.Write([]byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000 99999\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	c.SetReadDeadline(time.Now().Add(hang))
	if got, err := io.ReadAll(c); len(got) != 0 || err != nil {
		t.Errorf("after a bad header: read %q, %v; want the connection closed without an answer", got, err)
	}
	c = dial(t, l, "127.0.0.1")
	c.Write(headers[4].header)
	if code, body := get(t, c, ""); code != 200 || body != "192.0.2.7:51000 192.0.2.7" {
		t.Errorf("next connection: %d %q", code, body)
	}
}

// TestListenerHeaderTimeout: a header begun and not finished fails its
// connection after HeaderTimeout.
func TestListenerHeaderTimeout(t *testing.T) {
	l := listen(t, Config{Trusted: []netip.Prefix{loopback}, HeaderTimeout: 100 * time.Millisecond})
	ch := acceptor(t, l)
	for _, part := range [][]byte{
		[]byte("PRO"),
		[]byte("PROXY TCP4 192.0.2.7 198"),
		[]byte(v2Sig[:5]),
		v2(0x21, 0x11, v2Addrs(src4, dst4), nil)[:20],
		v2(0x21, 0x11, v2Addrs(src4, dst4), tlv(0xE0, make([]byte, 1000)))[:600],
	} {
		c := dial(t, l, "127.0.0.1")
		c.Write(part)
		s := next(t, ch)
		err := await(t, "Read of a stalled header", func() error {
			_, err := s.Read(make([]byte, 1))
			return err
		})
		if !errors.Is(err, ErrHeaderTimeout) {
			t.Errorf("%q: Read: %v, want ErrHeaderTimeout", part, err)
		}
		if got := s.RemoteAddr().String(); got != c.LocalAddr().String() {
			t.Errorf("RemoteAddr = %s, want the peer's", got)
		}
	}
}

// TestListenerSilentPeer: a trusted peer that sends nothing within
// HeaderTimeout has no header; what it sends later is read as it is, and
// the header's deadline does not linger.
func TestListenerSilentPeer(t *testing.T) {
	l := listen(t, Config{Trusted: []netip.Prefix{loopback}, HeaderTimeout: 50 * time.Millisecond})
	ch := acceptor(t, l)
	c := dial(t, l, "127.0.0.1")
	s := next(t, ch)
	if got := await(t, "RemoteAddr", s.RemoteAddr).String(); got != c.LocalAddr().String() {
		t.Errorf("RemoteAddr = %s, want the peer's", got)
	}
	// The header deadline has passed by now: were it still set, Read
	// would fail at once.
	c.Write([]byte("PROXY TCP4 192.0.2.7 198.51.100.1 51000 443\r\n"))
	buf := make([]byte, 10)
	err := await(t, "Read", func() error { _, err := io.ReadFull(s, buf); return err })
	if err != nil || string(buf) != "PROXY TCP4" {
		t.Errorf("late bytes: read %q, %v; want them as data", buf, err)
	}
}

// TestListenerDeadlines: the header's deadline gives way to the caller's,
// before and after the header.
func TestListenerDeadlines(t *testing.T) {
	l := listen(t, Config{Trusted: []netip.Prefix{loopback}, HeaderTimeout: 50 * time.Millisecond})
	ch := acceptor(t, l)

	t.Run("lifted after the header", func(t *testing.T) {
		c := dial(t, l, "127.0.0.1")
		c.Write(headers[1].header)
		s := next(t, ch)
		if got := s.RemoteAddr().String(); got != "192.0.2.7:51000" {
			t.Fatalf("RemoteAddr = %s", got)
		}
		time.Sleep(150 * time.Millisecond) // past the header's deadline
		c.Write([]byte("late"))
		buf := make([]byte, 4)
		if err := await(t, "Read", func() error { _, err := io.ReadFull(s, buf); return err }); err != nil || string(buf) != "late" {
			t.Errorf("read %q, %v", buf, err)
		}
	})

	t.Run("caller's earlier deadline", func(t *testing.T) {
		l := listen(t, Config{Trusted: []netip.Prefix{loopback}, HeaderTimeout: time.Hour})
		ch := acceptor(t, l)
		c := dial(t, l, "127.0.0.1")
		s := next(t, ch)
		s.SetReadDeadline(time.Now().Add(30 * time.Millisecond))
		err := await(t, "Read", func() error { _, err := s.Read(make([]byte, 1)); return err })
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read: %v, want the caller's deadline", err)
		}
		// Lifting it lets the connection go on.
		s.SetDeadline(time.Time{})
		c.Write([]byte("x"))
		buf := make([]byte, 1)
		if err := await(t, "Read", func() error { _, err := s.Read(buf); return err }); err != nil || buf[0] != 'x' {
			t.Errorf("after lifting the deadline: %q, %v", buf, err)
		}
	})

	t.Run("caller's deadline during the header", func(t *testing.T) {
		l := listen(t, Config{Trusted: []netip.Prefix{loopback}, HeaderTimeout: time.Hour})
		ch := acceptor(t, l)
		c := dial(t, l, "127.0.0.1")
		c.Write([]byte("PROXY TCP4"))
		s := next(t, ch)
		res := make(chan error, 1)
		go func() { _, err := s.Read(make([]byte, 1)); res <- err }()
		time.Sleep(20 * time.Millisecond)
		s.SetReadDeadline(time.Now()) // as a server shutting down does
		select {
		case err := <-res:
			if !errors.Is(err, ErrHeaderTimeout) {
				t.Errorf("Read: %v, want ErrHeaderTimeout", err)
			}
		case <-time.After(hang):
			t.Fatal("a deadline set during the header does not stop its read")
		}
	})
}

// TestListenerAcceptDoesNotWait: a silent trusted peer holds up neither
// Accept nor an http.Server's other connections, and Close ends its wait.
func TestListenerAcceptDoesNotWait(t *testing.T) {
	trusted := []netip.Prefix{loopback}
	l := listen(t, Config{Trusted: trusted, HeaderTimeout: time.Hour})
	ch := acceptor(t, l)
	dial(t, l, "127.0.0.1") // silent
	silent := next(t, ch)
	got := make(chan net.Addr, 1)
	go func() { got <- silent.RemoteAddr() }()

	c := dial(t, l, "127.0.0.1")
	c.Write(headers[4].header)
	if a := next(t, ch).RemoteAddr().String(); a != "192.0.2.7:51000" {
		t.Errorf("RemoteAddr = %s", a)
	}
	silent.Close()
	select {
	case a := <-got:
		if a == nil {
			t.Error("RemoteAddr after Close is nil")
		}
	case <-time.After(hang):
		t.Fatal("Close does not end a wait for the header")
	}
}

// TestListenerHTTPServerDoesNotWait: silent trusted peers do not hold up
// an http.Server's answer to another connection.
func TestListenerHTTPServerDoesNotWait(t *testing.T) {
	trusted := []netip.Prefix{loopback}
	l := listen(t, Config{Trusted: trusted, HeaderTimeout: time.Hour})
	serveHTTP(t, l, echoHandler(trusted))
	for range 3 {
		dial(t, l, "127.0.0.1") // silent trusted peers
	}
	c := dial(t, l, "127.0.0.1")
	c.Write(headers[1].header)
	// get fails the test if no answer comes.
	if code, body := get(t, c, ""); code != 200 || body != "192.0.2.7:51000 192.0.2.7" {
		t.Errorf("got %d %q", code, body)
	}
}

// TestListenerConns caps connections per client: an untrusted peer by its
// own address, a proxied one by the client its header names.
func TestListenerConns(t *testing.T) {
	conns := NewCounter(2)
	var mu sync.Mutex
	var refused []netip.Addr
	l := listen(t, Config{Trusted: []netip.Prefix{proxyOnly}, Conns: conns, Refused: func(a netip.Addr, err error) {
		if errors.Is(err, ErrTooManyConns) {
			mu.Lock()
			refused = append(refused, a)
			mu.Unlock()
		}
	}})
	ch := acceptor(t, l)

	t.Run("untrusted peer", func(t *testing.T) {
		dial(t, l, "127.0.0.1")
		a := next(t, ch)
		dial(t, l, "127.0.0.1")
		next(t, ch)
		over := dial(t, l, "127.0.0.1")
		over.SetReadDeadline(time.Now().Add(hang))
		if n, err := over.Read(make([]byte, 1)); n != 0 || errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("third connection: read %d, %v; want it closed", n, err)
		}
		a.Close()
		fourth := dial(t, l, "127.0.0.1")
		s := next(t, ch)
		if s.RemoteAddr().String() != fourth.LocalAddr().String() {
			t.Errorf("accepted %s, want %s", s.RemoteAddr(), fourth.LocalAddr())
		}
		if n := conns.Count(netip.MustParseAddr("127.0.0.1")); n != 2 {
			t.Errorf("Count = %d, want 2", n)
		}
		// A connection released (a WebSocket session now) stays open and
		// makes room for another; released twice, or closed after, it
		// gives back nothing more.
		s.(*Conn).Release()
		s.(*Conn).Release()
		dial(t, l, "127.0.0.1")
		next(t, ch)
		s.Close()
		if n := conns.Count(netip.MustParseAddr("127.0.0.1")); n != 2 {
			t.Errorf("Count after a release = %d, want 2", n)
		}
	})

	t.Run("proxied client", func(t *testing.T) {
		var held []net.Conn
		for range 2 {
			c := dial(t, l, "127.0.0.2")
			c.Write(headers[1].header)
			s := next(t, ch)
			if got := s.RemoteAddr().String(); got != "192.0.2.7:51000" {
				t.Fatalf("RemoteAddr = %s", got)
			}
			held = append(held, s)
		}
		c := dial(t, l, "127.0.0.2")
		c.Write(append(headers[1].header, "hello"...))
		s := next(t, ch)
		if _, err := s.Read(make([]byte, 5)); !errors.Is(err, ErrTooManyConns) {
			t.Errorf("third from 192.0.2.7: %v, want ErrTooManyConns", err)
		}
		// Another client through the same proxy, and the proxy's own
		// connections, are not held back.
		c = dial(t, l, "127.0.0.2")
		c.Write(headers[2].header)
		if got := next(t, ch).RemoteAddr().String(); got != "[2001:db8::7]:51000" {
			t.Errorf("RemoteAddr = %s", got)
		}
		for range 3 {
			c := dial(t, l, "127.0.0.2")
			c.Write([]byte("GET"))
			s := next(t, ch)
			if _, err := s.Read(make([]byte, 3)); err != nil {
				t.Errorf("the proxy's own connection: %v", err)
			}
		}
		if n := conns.Count(netip.MustParseAddr("127.0.0.2")); n != 0 {
			t.Errorf("the proxy holds %d places, want none", n)
		}
		for _, s := range held {
			s.Close()
			s.Close()
		}
		if n := conns.Count(netip.MustParseAddr("192.0.2.7")); n != 0 {
			t.Errorf("Count after Close = %d, want 0", n)
		}
		mu.Lock()
		defer mu.Unlock()
		if !slices.Equal(refused, []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.MustParseAddr("192.0.2.7")}) {
			t.Errorf("Refused was told of %v, want 127.0.0.1 then 192.0.2.7", refused)
		}
	})
}
