// SPDX-License-Identifier: Apache-2.0

package xmpp

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
)

// Namespaces of RFC 6120, XEP-0199 and CCS.
const (
	nsStreams = "http://etherx.jabber.org/streams"
	nsClient  = "jabber:client"
	nsSASL    = "urn:ietf:params:xml:ns:xmpp-sasl"
	nsBind    = "urn:ietf:params:xml:ns:xmpp-bind"
	nsSession = "urn:ietf:params:xml:ns:xmpp-session"
	nsPing    = "urn:xmpp:ping"
	nsGCM     = "google:mobile:data"
)

// maxAuthFailures is how many failed SASL attempts end the stream (RFC
// 6120 6.4.5 asks for 2 to 5 retries).
const maxAuthFailures = 3

var (
	// errStreamEnd: the client sent </stream:stream>.
	errStreamEnd = errors.New("xmpp: the client ended the stream")
	// errClientError: the client sent a stream error.
	errClientError = errors.New("xmpp: the client sent a stream error")
	// errCloseTimeout: the client did not end its side in time after we
	// ended ours.
	errCloseTimeout = errors.New("xmpp: the client did not end the stream in time")
	errTooBig       = errors.New("xmpp: stanza too big")
)

// stream is the reader side of a connection: everything the client sends,
// on the connection's reader goroutine, which owns all of stream's fields.
type stream struct {
	ctx context.Context
	c   *Conn
	cfg *Config
	log *slog.Logger

	in      *limitedReader
	dec     *xml.Decoder
	readErr error // why the connection could not be read, which the decoder may have turned into a syntax error

	handshakeBy time.Time
	domain      string // the stream's, from its header
	headerSent  bool   // for the current stream: a stream error must follow a header
	bound       bool
	pingSent    time.Time // zero when no ping is unanswered
	pings       uint64
	handler     Handler
}

func newStream(ctx context.Context, c *Conn, handshakeBy time.Time) *stream {
	st := &stream{ctx: ctx, c: c, cfg: &c.srv.cfg, log: c.log, handshakeBy: handshakeBy, domain: c.srv.cfg.Domains[0]}
	st.in = &limitedReader{r: bufio.NewReader(netReader{st}), max: st.cfg.MaxStanzaSize}
	st.dec = xml.NewDecoder(st.in)
	return st
}

// runSafely runs the stream until it ends and says why. A panic, from
// this package or from a handler, ends only this connection.
func (st *stream) runSafely() (err error) {
	defer func() {
		if r := recover(); r != nil {
			st.log.Error("xmpp: reader panicked", "panic", r, "stack", string(debug.Stack()))
			err = &streamError{cond: "internal-server-error", text: "internal error", cause: fmt.Errorf("panic: %v", r)}
		}
	}()
	return st.run()
}

func (st *stream) run() error {
	if err := st.open(featuresSASL); err != nil {
		return err
	}
	if err := st.authenticate(); err != nil {
		return err
	}
	// The client restarts the stream (RFC 6120 6.4.6): a new document on
	// the same bytes. The old decoder read nothing past </auth>.
	st.dec = xml.NewDecoder(st.in)
	if err := st.open(featuresBind); err != nil {
		return err
	}
	if err := st.bind(); err != nil {
		return err
	}
	return st.serve()
}

// open reads a stream header and answers it with ours and features.
func (st *stream) open(features string) error {
	st.headerSent = false
	st.in.reset()
	for {
		tok, err := st.token()
		if err != nil {
			return err
		}
		switch t := tok.(type) {
		case xml.CharData:
			if !isSpace(t) {
				return &streamError{cond: "bad-format", text: "text before the stream header"}
			}
		case xml.StartElement:
			if err := st.checkHeader(t); err != nil {
				return err
			}
			st.headerSent = true
			st.c.queue(frame{b: []byte(streamHeader(rand.Text(), st.domain) + features)})
			return nil
		default:
			if p, ok := tok.(xml.ProcInst); !ok || p.Target != "xml" {
				return forbidden(tok)
			}
		}
	}
}

func (st *stream) checkHeader(t xml.StartElement) error {
	if t.Name.Local != "stream" {
		return &streamError{cond: "bad-format", text: "expected a stream header, got <" + t.Name.Local + ">"}
	}
	if t.Name.Space != nsStreams {
		return &streamError{cond: "invalid-namespace", text: "the stream element must be in " + nsStreams}
	}
	var to, version string
	for _, a := range t.Attr {
		switch {
		case a.Name.Space == "" && a.Name.Local == "xmlns":
			if a.Value != nsClient {
				return &streamError{cond: "invalid-namespace", text: "the content namespace must be " + nsClient}
			}
		case a.Name.Space == "" && a.Name.Local == "to":
			to = a.Value
		case a.Name.Space == "" && a.Name.Local == "version":
			version = a.Value
		}
	}
	if to != "" {
		d, ok := st.c.srv.domain(to)
		if !ok {
			return &streamError{cond: "host-unknown", text: "this server does not serve " + to}
		}
		st.domain = d
	}
	if major, _, ok := strings.Cut(version, "."); !ok || major != "1" {
		return &streamError{cond: "unsupported-version", text: "XMPP 1.0 streams only (version=\"1.0\")"}
	}
	return nil
}

// domain is the configured form of d, if the server serves it.
func (s *Server) domain(d string) (string, bool) {
	d = strings.TrimSuffix(strings.ToLower(d), ".")
	for _, ours := range s.cfg.Domains {
		if d == ours {
			return ours, true
		}
	}
	return "", false
}

// authenticate runs SASL PLAIN until it succeeds or fails too often.
func (st *stream) authenticate() error {
	for failures := 0; ; {
		el, err := st.nextElement()
		if err != nil {
			return err
		}
		var cond string
		switch {
		case el.is(nsSASL, "auth"):
			cond, err = st.auth(el)
			if err != nil {
				return err
			}
			if cond == "" {
				st.c.queue(frame{b: []byte(saslSuccess)})
				return nil
			}
		case el.is(nsSASL, "response"):
			cond = "malformed-request" // no challenge was sent
		case el.is(nsSASL, "abort"):
			cond = "aborted"
		default:
			return st.unexpected(el, "not-authorized", "authenticate first")
		}
		st.c.queue(frame{b: []byte(saslFailure(cond))})
		if failures++; failures >= maxAuthFailures {
			return &streamError{cond: "not-authorized", text: strconv.Itoa(failures) + " failed authentication attempts"}
		}
	}
}

// auth handles one <auth/>; it returns the SASL failure condition, or ""
// on success.
func (st *stream) auth(el *element) (string, error) {
	if el.attr("mechanism") != "PLAIN" {
		return "invalid-mechanism", nil
	}
	data := strings.TrimSpace(string(el.text))
	if data == "" {
		// No initial response: an empty challenge asks for it (RFC 6120
		// 6.4.2).
		st.c.queue(frame{b: []byte(saslChallenge)})
		resp, err := st.nextElement()
		if err != nil {
			return "", err
		}
		switch {
		case resp.is(nsSASL, "response"):
			data = strings.TrimSpace(string(resp.text))
		case resp.is(nsSASL, "abort"):
			return "aborted", nil
		default:
			return "", st.unexpected(resp, "not-authorized", "authenticate first")
		}
	}
	p, err := parsePlain(data)
	if err != nil {
		st.log.Debug("xmpp: malformed SASL PLAIN", "err", err)
		return "malformed-request", nil
	}
	user, domain := p.authcid, st.domain
	if at := strings.LastIndexByte(p.authcid, '@'); at >= 0 {
		user = p.authcid[:at]
		var ok bool
		if domain, ok = st.c.srv.domain(p.authcid[at+1:]); !ok {
			st.log.Debug("xmpp: authentication for an unknown domain", "user", user)
			return "not-authorized", nil
		}
	}
	if user == "" {
		return "malformed-request", nil
	}
	if p.authzid != "" && p.authzid != p.authcid && !strings.EqualFold(p.authzid, user+"@"+domain) {
		st.log.Debug("xmpp: authentication with another authorization identity", "user", user, "domain", domain)
		return "invalid-authzid", nil
	}
	ctx, cancel := context.WithDeadline(st.ctx, st.handshakeBy)
	defer cancel()
	switch err := st.cfg.Authenticate(ctx, st.c.RemoteAddr(), user, domain, p.password); {
	case err == nil:
		st.c.user, st.c.domain = user, domain
		return "", nil
	case errors.Is(err, ErrNotAuthorized):
		st.log.Debug("xmpp: authentication failed", "user", user, "domain", domain)
		return "not-authorized", nil
	case errors.Is(err, ErrTryLater):
		st.log.Debug("xmpp: authentication failed, slowed", "user", user, "domain", domain)
		return "temporary-auth-failure", nil
	default:
		st.log.Warn("xmpp: authentication could not be checked", "user", user, "domain", domain, "err", err)
		return "temporary-auth-failure", nil
	}
}

// bind waits for the resource binding, then opens the Conn.
func (st *stream) bind() error {
	for {
		el, err := st.nextElement()
		if err != nil {
			return err
		}
		if !el.is(nsClient, "iq") || el.attr("type") != "set" {
			return st.unexpected(el, "not-authorized", "bind a resource first")
		}
		id, req := el.attr("id"), el.firstChild()
		switch {
		case req != nil && req.is(nsSession, "session"):
			st.c.queue(frame{b: []byte(iqResult(id, ""))})
			continue
		case req == nil || !req.is(nsBind, "bind"):
			return st.unexpected(el, "not-authorized", "bind a resource first")
		}
		resource := ""
		if r := req.child(nsBind, "resource"); r != nil {
			resource = strings.TrimSpace(string(r.text))
		}
		if !validResource(resource) {
			st.c.queue(frame{b: []byte(iqError(id, "modify", "bad-request"))})
			continue
		}
		if resource == "" {
			resource = rand.Text()
		}
		st.c.resource = resource
		st.log = st.log.With("jid", st.c.JID())
		h := st.cfg.Open(st.c)
		if h == nil {
			return &streamError{cond: "resource-constraint", text: "the server does not take this connection now"}
		}
		st.handler, st.bound = h, true
		st.log.Debug("xmpp: stream bound")
		jid := "<jid>" + escapeString(st.c.JID()) + "</jid>"
		st.c.queue(frame{b: []byte(iqResult(id, `<bind xmlns="`+nsBind+`">`+jid+`</bind>`)), startOut: true})
		return nil
	}
}

// validResource accepts what RFC 7622 allows, roughly: at most 1023 bytes,
// no control characters (the decoder already refused invalid UTF-8).
func validResource(r string) bool {
	if len(r) > 1023 {
		return false
	}
	for _, c := range r {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// serve reads stanzas from the bound stream until it ends.
func (st *stream) serve() error {
	for {
		el, err := st.nextElement()
		if err != nil {
			return err
		}
		switch {
		case el.is(nsClient, "message"):
			st.message(el)
		case el.is(nsClient, "iq"):
			st.iq(el)
		case el.is(nsClient, "presence"):
		default:
			return st.unexpected(el, "unsupported-stanza-type", "")
		}
	}
}

func (st *stream) message(el *element) {
	if el.attr("type") == "error" {
		st.log.Debug("xmpp: ignored a message error from the client")
		return
	}
	var gcm *element
	n := 0
	for _, ch := range el.children {
		if ch.is(nsGCM, "gcm") {
			gcm = ch
			n++
		}
	}
	switch {
	case n == 0:
		st.log.Debug("xmpp: ignored a message without a gcm element")
	case n > 1 || len(gcm.children) > 0:
		st.log.Debug("xmpp: refused a message with more than JSON text in gcm")
		st.c.queue(frame{b: []byte(messageError(el.attr("id"), "modify", "bad-request",
			"one <gcm xmlns=\""+nsGCM+"\"> with JSON text only"))})
	default:
		if gcm.text == nil {
			gcm.text = []byte{}
		}
		st.handler.Message(gcm.text)
	}
}

func (st *stream) iq(el *element) {
	id, req := el.attr("id"), el.firstChild()
	switch typ := el.attr("type"); {
	case typ == "result" || typ == "error":
		// An answer to our ping, or to nothing: either way the client is
		// there, which reading it has already noted.
	case typ == "get" && req != nil && req.is(nsPing, "ping"),
		typ == "set" && req != nil && req.is(nsSession, "session"):
		st.c.queue(frame{b: []byte(iqResult(id, ""))})
	case typ == "get" || typ == "set":
		st.c.queue(frame{b: []byte(iqError(id, "cancel", "service-unavailable"))})
	default:
		st.c.queue(frame{b: []byte(iqError(id, "modify", "bad-request"))})
	}
}

// unexpected is the stream error for el where it does not belong: the
// client's own stream error ends the stream, a stanza gets cond, anything
// else unsupported-stanza-type.
func (st *stream) unexpected(el *element, cond, text string) error {
	switch {
	case el.is(nsStreams, "error"):
		cond := "no condition"
		if ch := el.firstChild(); ch != nil {
			cond = ch.name.Local
		}
		return fmt.Errorf("%w: %s", errClientError, cond)
	case el.is(nsClient, "message"), el.is(nsClient, "iq"), el.is(nsClient, "presence"):
		return &streamError{cond: cond, text: text}
	case el.is("urn:ietf:params:xml:ns:xmpp-tls", "starttls"):
		return &streamError{cond: "unsupported-stanza-type", text: "STARTTLS is not offered: use TLS from the start of the connection"}
	default:
		return &streamError{cond: "unsupported-stanza-type", text: "unexpected <" + el.name.Local + "> in " + el.name.Space}
	}
}

// nextElement reads the next top-level element of the stream, skipping
// whitespace keepalives; errStreamEnd when the client ended the stream.
func (st *stream) nextElement() (*element, error) {
	for {
		st.in.reset()
		tok, err := st.token()
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			return readElement(st.token, t)
		case xml.EndElement:
			return nil, errStreamEnd
		case xml.CharData:
			if !isSpace(t) {
				return nil, &streamError{cond: "bad-format", text: "text outside a stanza"}
			}
		default:
			return nil, forbidden(tok)
		}
	}
}

// readElement reads the rest of the element start opens from next. The
// tree is no bigger than the XML it comes from.
func readElement(next func() (xml.Token, error), start xml.StartElement) (*element, error) {
	root := &element{name: start.Name, attrs: start.Attr}
	open := []*element{root}
	for len(open) > 0 {
		tok, err := next()
		if err != nil {
			return nil, err
		}
		top := open[len(open)-1]
		switch t := tok.(type) {
		case xml.StartElement:
			e := &element{name: t.Name, attrs: t.Attr}
			top.children = append(top.children, e)
			open = append(open, e)
		case xml.EndElement:
			open = open[:len(open)-1]
		case xml.CharData:
			top.text = append(top.text, t...)
		default:
			return nil, forbidden(tok)
		}
	}
	return root, nil
}

// token is the decoder's next token, its errors made stream errors.
func (st *stream) token() (xml.Token, error) {
	tok, err := st.dec.Token()
	if err == nil {
		return tok, nil
	}
	if st.readErr != nil {
		return nil, st.readErr
	}
	if errors.Is(err, errTooBig) {
		return nil, &streamError{cond: "policy-violation", text: "stanza larger than " + strconv.Itoa(st.cfg.MaxStanzaSize) + " bytes", cause: err}
	}
	return nil, &streamError{cond: "not-well-formed", text: err.Error(), cause: err, quoted: true}
}

// forbidden is the stream error for a token RFC 6120 11.1 does not allow
// in a stream: a comment, a processing instruction, a DTD.
func forbidden(tok xml.Token) error {
	what := "directive"
	switch tok.(type) {
	case xml.Comment:
		what = "comment"
	case xml.ProcInst:
		what = "processing instruction"
	}
	return &streamError{cond: "restricted-xml", text: "XMPP does not allow a " + what}
}

func isSpace(b []byte) bool {
	for _, c := range b {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}

// netReader reads from the connection under the deadline of the phase the
// stream is in: the handshake's until bound, then the idle timeout, which
// sends a ping, then the ping timeout. A timeout never reaches the
// decoder, which could not go on after one.
type netReader struct{ st *stream }

func (r netReader) Read(p []byte) (int, error) {
	st := r.st
	for {
		n, err := st.readOnce(p)
		if n > 0 {
			st.pingSent = time.Time{}
			return n, nil
		}
		if err != nil {
			st.readErr = err
			return 0, err
		}
	}
}

func (st *stream) readOnce(p []byte) (int, error) {
	var deadline time.Time
	switch {
	case !st.bound:
		deadline = st.handshakeBy
	case st.pingSent.IsZero():
		deadline = time.Now().Add(st.cfg.IdleTimeout)
	default:
		deadline = st.pingSent.Add(st.cfg.PingTimeout)
	}
	if err := st.c.setReadDeadline(deadline); err != nil {
		return 0, err
	}
	n, err := st.c.nc.Read(p)
	if n > 0 || err == nil {
		return n, nil
	}
	if !errors.Is(err, os.ErrDeadlineExceeded) {
		return 0, fmt.Errorf("xmpp: reading from the client: %w", err)
	}
	stop, closeBy := st.c.readState()
	now := time.Now()
	switch {
	case stop != nil:
		return 0, stop
	case !closeBy.IsZero():
		if !now.Before(closeBy) {
			return 0, errCloseTimeout
		}
	case !st.bound:
		if !now.Before(st.handshakeBy) {
			return 0, &streamError{cond: "connection-timeout", text: "stream negotiation took longer than " + st.cfg.HandshakeTimeout.String()}
		}
	case st.pingSent.IsZero():
		st.pings++
		st.pingSent = now
		st.c.queue(frame{b: []byte(pingRequest("ping"+strconv.FormatUint(st.pings, 10), st.domain))})
	case !now.Before(deadline):
		return 0, &streamError{cond: "connection-timeout", text: "no answer to a ping within " + st.cfg.PingTimeout.String()}
	}
	return 0, nil
}

// limitedReader bounds what the decoder reads between two resets to max
// bytes. It is an io.ByteReader, so the decoder reads through it byte by
// byte and never past the end of a token: after a stream restart a new
// decoder starts exactly where the old one stopped.
type limitedReader struct {
	r      *bufio.Reader
	n, max int
}

func (l *limitedReader) reset() { l.n = 0 }

func (l *limitedReader) ReadByte() (byte, error) {
	if l.n >= l.max {
		return 0, errTooBig
	}
	l.n++
	return l.r.ReadByte()
}

func (l *limitedReader) Read(p []byte) (int, error) {
	if l.n >= l.max {
		return 0, errTooBig
	}
	p = p[:min(len(p), l.max-l.n)]
	n, err := l.r.Read(p)
	l.n += n
	return n, err
}

var _ io.ByteReader = (*limitedReader)(nil)
