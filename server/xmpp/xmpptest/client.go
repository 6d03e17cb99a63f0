// SPDX-License-Identifier: Apache-2.0

// Package xmpptest is a minimal CCS app server client for tests: it
// connects to an XMPP endpoint, authenticates with SASL PLAIN, binds a
// resource and then sends and receives the JSON of
// <gcm xmlns="google:mobile:data"> message stanzas. It is for tests of
// Tether's own endpoint, not a general XMPP client: it ignores every other
// stanza and answers the server's pings.
package xmpptest

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"
)

// Config says where and as whom to connect.
type Config struct {
	Addr string
	// TLS, when set, dials direct TLS; nil dials plain TCP.
	TLS *tls.Config
	// Domain is the stream's domain; default gcm.googleapis.com.
	Domain   string
	User     string // the sender ID
	Password string // the server key
	// Timeout bounds the handshake and each Send; default 10 s.
	Timeout time.Duration
	// Preamble, when set, is written first on the TCP connection: a
	// PROXY protocol header, as a load balancer in front sends.
	Preamble []byte
	// DialContext, when set, opens the connection instead of a TCP dial:
	// to a server on in-memory pipes, for one.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
}

// ErrAuth is returned by Dial when the server refuses the credentials;
// the error text names the SASL condition.
var ErrAuth = errors.New("xmpptest: authentication refused")

// Client is one bound connection. Stanzas from the server arrive on
// Stanzas in order; the channel is closed when the connection ends.
type Client struct {
	conn    net.Conn
	timeout time.Duration
	stanzas chan []byte
	wmu     sync.Mutex
	done    chan struct{}
	err     error // why reading ended, once done is closed
	nextID  int
}

// Dial connects, authenticates and binds a resource.
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if cfg.Domain == "" {
		cfg.Domain = "gcm.googleapis.com"
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 10 * time.Second
	}
	dial := cfg.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	conn, err := dial(ctx, "tcp", cfg.Addr)
	if err != nil {
		return nil, err
	}
	// Not even an empty write without a preamble: on a pipe it would wait
	// for the server to read.
	if len(cfg.Preamble) > 0 {
		if _, err := conn.Write(cfg.Preamble); err != nil {
			conn.Close()
			return nil, err
		}
	}
	if cfg.TLS != nil {
		conn = tls.Client(conn, cfg.TLS)
	}
	conn.SetDeadline(time.Now().Add(cfg.Timeout))
	c := &Client{conn: conn, timeout: cfg.Timeout, stanzas: make(chan []byte, 1000), done: make(chan struct{})}
	dec, err := c.handshake(cfg)
	if err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	go c.readLoop(dec)
	return c, nil
}

func (c *Client) handshake(cfg Config) (*xml.Decoder, error) {
	open := func() (*xml.Decoder, error) {
		c.write(fmt.Sprintf(`<?xml version='1.0'?><stream:stream to=%q version="1.0" xmlns="jabber:client" xmlns:stream="http://etherx.jabber.org/streams">`, cfg.Domain))
		dec := xml.NewDecoder(c.conn)
		for {
			tok, err := dec.Token()
			if err != nil {
				return nil, fmt.Errorf("read stream header: %w", err)
			}
			if se, ok := tok.(xml.StartElement); ok && se.Name.Local == "stream" {
				return dec, nil
			}
		}
	}
	dec, err := open()
	if err != nil {
		return nil, err
	}
	if _, err := next(dec); err != nil { // features
		return nil, err
	}
	creds := base64.StdEncoding.EncodeToString([]byte("\x00" + cfg.User + "@" + cfg.Domain + "\x00" + cfg.Password))
	c.write(`<auth xmlns="urn:ietf:params:xml:ns:xmpp-sasl" mechanism="PLAIN">` + creds + `</auth>`)
	answer, err := next(dec)
	if err != nil {
		return nil, err
	}
	if answer.XMLName.Local != "success" {
		return nil, fmt.Errorf("%w: %s", ErrAuth, answer.Inner)
	}
	if dec, err = open(); err != nil {
		return nil, err
	}
	if _, err := next(dec); err != nil {
		return nil, err
	}
	c.write(`<iq type="set" id="bind1"><bind xmlns="urn:ietf:params:xml:ns:xmpp-bind"/></iq>`)
	if bound, err := next(dec); err != nil {
		return nil, err
	} else if bound.Type != "result" {
		return nil, fmt.Errorf("bind: %s", bound.Inner)
	}
	return dec, nil
}

// element is any top-level element, kept raw.
type element struct {
	XMLName xml.Name
	Type    string `xml:"type,attr"`
	ID      string `xml:"id,attr"`
	Inner   string `xml:",innerxml"`
	GCM     *struct {
		Text string `xml:",chardata"`
	} `xml:"google:mobile:data gcm"`
	Ping *struct{} `xml:"urn:xmpp:ping ping"`
}

func next(dec *xml.Decoder) (*element, error) {
	for {
		tok, err := dec.Token()
		if err != nil {
			return nil, err
		}
		switch t := tok.(type) {
		case xml.StartElement:
			var e element
			if err := dec.DecodeElement(&e, &t); err != nil {
				return nil, err
			}
			return &e, nil
		case xml.EndElement:
			return nil, io.EOF // the server ended the stream
		}
	}
}

func (c *Client) readLoop(dec *xml.Decoder) {
	defer close(c.done)
	defer close(c.stanzas)
	for {
		e, err := next(dec)
		if err != nil {
			c.err = err
			return
		}
		switch {
		case e.XMLName.Local == "message" && e.GCM != nil:
			c.stanzas <- []byte(e.GCM.Text)
		case e.XMLName.Local == "iq" && e.Type == "get" && e.Ping != nil:
			c.write(fmt.Sprintf(`<iq type="result" id=%q/>`, e.ID))
		case e.XMLName.Local == "error":
			c.err = fmt.Errorf("stream error: %s", e.Inner)
			return
		}
	}
}

func (c *Client) write(s string) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.conn.SetWriteDeadline(time.Now().Add(c.timeout))
	_, err := io.WriteString(c.conn, s)
	return err
}

// Send sends one gcm stanza with payload as its JSON.
func (c *Client) Send(payload []byte) error {
	var b strings.Builder
	xml.EscapeText(&b, payload)
	c.wmu.Lock()
	c.nextID++
	id := c.nextID
	c.wmu.Unlock()
	return c.write(fmt.Sprintf(`<message id="t%d"><gcm xmlns="google:mobile:data">%s</gcm></message>`, id, b.String()))
}

// Stanzas delivers the JSON of each gcm stanza from the server.
func (c *Client) Stanzas() <-chan []byte { return c.stanzas }

// Done is closed once the connection has ended; Err says why.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err is why the connection ended, after Done.
func (c *Client) Err() error { return c.err }

// Close ends the stream and the connection.
func (c *Client) Close() error {
	c.write(`</stream:stream>`)
	return c.conn.Close()
}

// Abort drops the connection without ending the stream, as a crash would.
func (c *Client) Abort() error { return c.conn.Close() }
