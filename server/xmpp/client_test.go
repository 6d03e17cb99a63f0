// SPDX-License-Identifier: Apache-2.0

package xmpp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"tether/internal/logtest"
	"tether/internal/testpki"
)

// Credentials the test servers take.
const (
	testUser     = "123456789012"
	testPassword = "AIzaSy-s3cret-server-key"
	tempFailUser = "999"
)

// recorder is the Handler of one test connection.
type recorder struct {
	conn     *Conn
	messages chan []byte
	closed   chan error
	closes   atomic.Int32
}

// panicPayload makes the handler panic, as a buggy one would.
const panicPayload = "panic!"

// Message records p; it drops what a test sends beyond the buffer, so
// that a fuzzed client cannot block its connection.
func (r *recorder) Message(p []byte) {
	if string(p) == panicPayload {
		panic("handler bug")
	}
	select {
	case r.messages <- p:
	default:
	}
}

func (r *recorder) Closed(err error) {
	r.closes.Add(1)
	r.closed <- err
}

func (r *recorder) nextMessage(t testing.TB) []byte {
	t.Helper()
	select {
	case p := <-r.messages:
		return p
	case <-time.After(5 * time.Second):
		t.Fatal("no message reached the handler")
		return nil
	}
}

func (r *recorder) waitClosed(t testing.TB) error {
	t.Helper()
	select {
	case err := <-r.closed:
		return err
	case <-time.After(10 * time.Second):
		t.Fatal("Handler.Closed was not called")
		return nil
	}
}

type authCall struct{ user, domain, password string }

// harness is a Server on loopback, over TLS unless plain.
type harness struct {
	t       testing.TB
	srv     *Server
	addr    string
	client  *tls.Config // nil: plain TCP
	logs    *logtest.Buffer
	opened  chan *recorder
	auths   chan authCall
	cancel  context.CancelFunc
	served  chan error
	refuse  atomic.Bool // Open returns nil
	stopped bool
	panics  bool // a test makes a connection panic on purpose
}

type harnessOption func(*Config)

func plainTCP(c *Config) { c.TLS = nil }

// startServer serves on 127.0.0.1 until the test ends; mods change the
// Config. Every log line must leave the password out.
func startServer(t testing.TB, mods ...harnessOption) *harness {
	t.Helper()
	pki, err := testpki.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(pki.Cert, pki.Key)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{
		t:      t,
		client: &tls.Config{RootCAs: pki.Pool, ServerName: "127.0.0.1"},
		logs:   &logtest.Buffer{},
		opened: make(chan *recorder, 64),
		auths:  make(chan authCall, 64),
		served: make(chan error, 1),
	}
	cfg := Config{
		TLS:     &tls.Config{Certificates: []tls.Certificate{cert}},
		Domains: []string{"gcm.googleapis.com", "fcm.googleapis.com", "push.example.com"},
		Authenticate: func(ctx context.Context, _ net.Addr, user, domain, password string) error {
			select {
			case h.auths <- authCall{user, domain, password}:
			default:
			}
			switch {
			case user == tempFailUser:
				return errors.New("store unavailable")
			case user == testUser && password == testPassword:
				return nil
			}
			return fmt.Errorf("checking %s: %w", user, ErrNotAuthorized)
		},
		Open: func(c *Conn) Handler {
			if h.refuse.Load() {
				return nil
			}
			r := &recorder{conn: c, messages: make(chan []byte, 256), closed: make(chan error, 4)}
			h.opened <- r
			return r
		},
		Logger:        slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
		CloseTimeout:  500 * time.Millisecond,
		MaxStanzaSize: 4096,
	}
	for _, m := range mods {
		m(&cfg)
	}
	if cfg.TLS == nil {
		h.client = nil
	}
	h.srv, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	h.addr = ln.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	h.cancel = cancel
	go func() { h.served <- h.srv.Serve(ctx, ln) }()
	t.Cleanup(func() {
		h.stop()
		h.checkLogs()
	})
	return h
}

// stop ends Serve and waits for it.
func (h *harness) stop() {
	h.t.Helper()
	if h.stopped {
		return
	}
	h.stopped = true
	h.cancel()
	select {
	case err := <-h.served:
		if err != nil {
			h.t.Errorf("Serve: %v", err)
		}
	case <-time.After(15 * time.Second):
		h.t.Error("Serve did not return after its context ended")
	}
}

func (h *harness) checkLogs() {
	h.t.Helper()
	logs := h.logs.String()
	for _, secret := range []string{testPassword, "wrong-" + testPassword, base64.StdEncoding.EncodeToString([]byte("\x00" + testUser + "@gcm.googleapis.com\x00" + testPassword))} {
		if strings.Contains(logs, secret) {
			h.t.Errorf("the log has a password:\n%s", logs)
		}
	}
	if strings.Contains(logs, "panicked") && !h.panics {
		h.t.Errorf("a connection panicked:\n%s", logs)
	}
}

func (h *harness) nextOpened() *recorder {
	h.t.Helper()
	select {
	case r := <-h.opened:
		return r
	case <-time.After(5 * time.Second):
		h.t.Fatal("Open was not called")
		return nil
	}
}

// client is a raw XMPP client: it writes what a test says and parses
// what the server answers.
type client struct {
	t    testing.TB
	conn net.Conn
	in   *bufio.Reader
	dec  *xml.Decoder
	raw  bytes.Buffer // everything read, for failure messages
}

func (h *harness) dial() *client { return h.dialFor(h.t) }

// dialFor connects a client that reports to t.
func (h *harness) dialFor(t testing.TB) *client {
	t.Helper()
	var (
		conn net.Conn
		err  error
	)
	d := &net.Dialer{Timeout: 5 * time.Second}
	if h.client != nil {
		conn, err = tls.DialWithDialer(d, "tcp", h.addr, h.client)
	} else {
		conn, err = d.Dial("tcp", h.addr)
	}
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	c := &client{t: t, conn: conn}
	c.in = bufio.NewReader(io.TeeReader(conn, &c.raw))
	c.restart()
	t.Cleanup(func() { conn.Close() })
	return c
}

// restart starts parsing a new stream from the server.
func (c *client) restart() { c.dec = xml.NewDecoder(c.in) }

func (c *client) send(s string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("writing %q: %v", s, err)
	}
}

func (c *client) token() (xml.Token, error) {
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c.dec.Token()
}

// header reads the server's stream header.
func (c *client) header() xml.StartElement {
	c.t.Helper()
	for {
		tok, err := c.token()
		if err != nil {
			c.t.Fatalf("reading the stream header: %v; read so far: %s", err, c.raw.String())
		}
		if s, ok := tok.(xml.StartElement); ok {
			if s.Name.Space != nsStreams || s.Name.Local != "stream" {
				c.t.Fatalf("got <%s> in %s for the stream header", s.Name.Local, s.Name.Space)
			}
			return s
		}
	}
}

// next reads the next top-level element; nil when the server ended the
// stream, an error when the connection ended before.
func (c *client) next() (*element, error) {
	for {
		tok, err := c.token()
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			return readElement(c.token, t)
		case xml.EndElement:
			return nil, nil
		}
	}
}

func (c *client) mustNext() *element {
	c.t.Helper()
	el, err := c.next()
	if err != nil || el == nil {
		c.t.Fatalf("expected an element, got %v, %v; read so far: %s", el, err, c.raw.String())
	}
	return el
}

// expect reads the next element and checks its name.
func (c *client) expect(space, local string) *element {
	c.t.Helper()
	el := c.mustNext()
	if !el.is(space, local) {
		c.t.Fatalf("got <%s xmlns=%q>, want <%s xmlns=%q>; read so far: %s", el.name.Local, el.name.Space, local, space, c.raw.String())
	}
	return el
}

// open sends a stream header to domain and returns the features.
func (c *client) open(domain string) *element {
	c.t.Helper()
	c.send(`<?xml version='1.0'?><stream:stream to='` + domain + `' version='1.0' xml:lang='en' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>`)
	c.header()
	return c.expect(nsStreams, "features")
}

func plainAuth(authzid, authcid, password string) string {
	return `<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">` +
		base64.StdEncoding.EncodeToString([]byte(authzid+"\x00"+authcid+"\x00"+password)) + `</auth>`
}

// authenticate runs SASL PLAIN and the restart; it returns the features
// after it.
func (c *client) authenticate(authcid, password string) *element {
	c.t.Helper()
	c.send(plainAuth("", authcid, password))
	c.expect(nsSASL, "success")
	c.restart()
	return c.open("gcm.googleapis.com")
}

// bind binds resource ("" for one the server picks) and returns the JID.
func (c *client) bind(resource string) string {
	c.t.Helper()
	req := `<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/>`
	if resource != "" {
		req = `<bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"><resource>` + resource + `</resource></bind>`
	}
	c.send(`<iq type="set" id="bind_1">` + req + `</iq>`)
	res := c.expect(nsClient, "iq")
	if res.attr("type") != "result" || res.attr("id") != "bind_1" {
		c.t.Fatalf("bind answered with type %q id %q", res.attr("type"), res.attr("id"))
	}
	jid := res.child(nsBind, "bind")
	if jid == nil || jid.child(nsBind, "jid") == nil {
		c.t.Fatal("bind result without a jid")
	}
	return string(jid.child(nsBind, "jid").text)
}

// login connects a bound client as testUser and returns it with its
// handler.
func (h *harness) login() (*client, *recorder) {
	h.t.Helper()
	c := h.loginFor(h.t)
	return c, h.nextOpened()
}

// loginFor connects a bound client that reports to t.
func (h *harness) loginFor(t testing.TB) *client {
	t.Helper()
	c := h.dialFor(t)
	c.open("gcm.googleapis.com")
	c.authenticate(testUser+"@gcm.googleapis.com", testPassword)
	c.bind("tether")
	return c
}

// expectStreamError reads up to a stream error with cond, then the end of
// the stream and of the connection.
func (c *client) expectStreamError(cond string) {
	c.t.Helper()
	for {
		el := c.mustNext()
		if !el.is(nsStreams, "error") {
			continue
		}
		if ch := el.firstChild(); ch == nil || !ch.is(nsStreamErrs, cond) {
			c.t.Fatalf("stream error %s, want %s; read: %s", describe(el), cond, c.raw.String())
		}
		break
	}
	c.expectEnd()
}

// expectEnd reads the end of the stream, then of the connection.
func (c *client) expectEnd() {
	c.t.Helper()
	if el, err := c.next(); el != nil || err != nil {
		c.t.Fatalf("expected the end of the stream, got %s, %v", describe(el), err)
	}
	c.expectEOF()
}

// expectEOF reads until the server closes the connection, then closes
// the client's side, as clients do.
func (c *client) expectEOF() {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.Copy(io.Discard, c.in); err != nil {
		c.t.Fatalf("the server did not close the connection: %v", err)
	}
	c.conn.Close()
}

func describe(e *element) string {
	if e == nil {
		return "nothing"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "<%s xmlns=%q", e.name.Local, e.name.Space)
	for _, a := range e.attrs {
		if a.Name.Local == "xmlns" || a.Name.Space == "xmlns" {
			continue
		}
		fmt.Fprintf(&b, " %s=%q", a.Name.Local, a.Value)
	}
	b.WriteString(">")
	for _, ch := range e.children {
		b.WriteString(describe(ch))
	}
	b.Write(e.text)
	return b.String() + "</" + e.name.Local + ">"
}
