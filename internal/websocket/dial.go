// SPDX-License-Identifier: Apache-2.0

package websocket

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// ErrBadHandshake is returned when the server's answer to the opening
// handshake is not a valid switch to the WebSocket protocol.
var ErrBadHandshake = errors.New("websocket: bad handshake")

// acceptGUID is the key suffix of RFC 6455 section 1.3.
const acceptGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// maxHeaderBytes bounds the server's handshake answer: a server that
// sends more is not a WebSocket server worth waiting for.
const maxHeaderBytes = 16 << 10

// Dialer opens client connections.
type Dialer struct {
	// NetDialContext opens the TCP connection; nil means a net.Dialer's.
	NetDialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// TLSClientConfig is used for wss:// URLs; nil means the zero
	// config. When it names no ServerName, the URL's host is used.
	TLSClientConfig *tls.Config
	// HandshakeTimeout bounds the TCP, TLS and WebSocket handshakes
	// together; zero means no bound beyond ctx.
	HandshakeTimeout time.Duration
	// Subprotocols are offered in Sec-WebSocket-Protocol, in order.
	Subprotocols []string
	// Proxy, when set, gives the HTTP proxy to reach a URL through, or
	// nil to connect directly: the connection to the proxy is then a
	// tunnel to the server (HTTP CONNECT), with Basic credentials when
	// the proxy's URL has a user. HandshakeTimeout bounds the exchange
	// with the proxy too.
	Proxy func(*url.URL) *url.URL
}

// Response is the server's answer to the opening handshake, returned with
// ErrBadHandshake so that the caller can say what the server answered.
type Response struct {
	// Status is the status line's code and text, such as "403 Forbidden".
	Status     string
	StatusCode int
	// Header holds the answer's header fields, names in canonical form
	// (Sec-Websocket-Protocol); a repeated field keeps its last value.
	Header map[string]string
}

// DialContext connects to urlStr (ws:// or wss://). requestHeader is
// accepted for gorilla/websocket's signature and must be nil. On a
// failed handshake the server's answer comes back with the error.
func (d *Dialer) DialContext(ctx context.Context, urlStr string, requestHeader map[string][]string) (*Conn, *Response, error) {
	if requestHeader != nil {
		return nil, nil, errors.New("websocket: request headers are not supported")
	}
	u, err := url.Parse(urlStr)
	if err != nil {
		return nil, nil, fmt.Errorf("websocket: parse URL: %w", err)
	}
	var secure bool
	switch u.Scheme {
	case "ws":
	case "wss":
		secure = true
	default:
		return nil, nil, fmt.Errorf("websocket: bad scheme %q in %s: want ws or wss", u.Scheme, urlStr)
	}
	if u.User != nil {
		return nil, nil, errors.New("websocket: user information in the URL is not supported")
	}
	addr := u.Host
	if u.Port() == "" {
		port := "80"
		if secure {
			port = "443"
		}
		addr = net.JoinHostPort(u.Hostname(), port)
	}
	if d.HandshakeTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, d.HandshakeTimeout)
		defer cancel()
	}
	netDial := d.NetDialContext
	if netDial == nil {
		netDial = (&net.Dialer{}).DialContext
	}
	var proxy *url.URL
	if d.Proxy != nil {
		proxy = d.Proxy(u)
	}
	nc, err := netDial(ctx, "tcp", dialAddr(addr, proxy))
	if err != nil {
		if proxy != nil {
			err = fmt.Errorf("websocket: dial proxy %s: %w", proxy.Redacted(), err)
		}
		return nil, nil, err
	}
	// The handshake's reads and writes end with ctx: a deadline for its
	// deadline, a closed connection for its cancellation.
	if deadline, ok := ctx.Deadline(); ok {
		nc.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	conn, resp, err := d.handshake(ctx, nc, u, secure, proxy, addr)
	if !stop() || err != nil {
		nc.Close()
		if err == nil || ctx.Err() != nil {
			err = fmt.Errorf("websocket: handshake: %w", context.Cause(ctx))
		}
		return nil, resp, err
	}
	nc.SetDeadline(time.Time{})
	return conn, resp, nil
}

// handshake runs the tunnel through proxy to addr (when there is a
// proxy), TLS (for wss) and the opening handshake on nc.
func (d *Dialer) handshake(ctx context.Context, nc net.Conn, u *url.URL, secure bool, proxy *url.URL, addr string) (*Conn, *Response, error) {
	if proxy != nil {
		if err := tunnel(nc, proxy, addr); err != nil {
			return nil, nil, err
		}
	}
	if secure {
		cfg := &tls.Config{}
		if d.TLSClientConfig != nil {
			cfg = d.TLSClientConfig.Clone()
		}
		if cfg.ServerName == "" {
			cfg.ServerName = u.Hostname()
		}
		tc := tls.Client(nc, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return nil, nil, err
		}
		nc = tc
	}
	var nonce [16]byte
	rand.Read(nonce[:])
	key := base64.StdEncoding.EncodeToString(nonce[:])
	var req strings.Builder
	req.WriteString("GET " + u.RequestURI() + " HTTP/1.1\r\nHost: " + u.Host +
		"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: " + key +
		"\r\nSec-WebSocket-Version: 13\r\n")
	if len(d.Subprotocols) > 0 {
		req.WriteString("Sec-WebSocket-Protocol: " + strings.Join(d.Subprotocols, ", ") + "\r\n")
	}
	req.WriteString("\r\n")
	if _, err := nc.Write([]byte(req.String())); err != nil {
		return nil, nil, err
	}
	br := bufio.NewReaderSize(nc, readBufferSize)
	resp, err := readResponse(br)
	if err != nil {
		return nil, nil, err
	}
	if err := checkResponse(resp, key, d.Subprotocols); err != nil {
		return nil, resp, err
	}
	return newConn(nc, br, resp.Header["Sec-Websocket-Protocol"]), resp, nil
}

// readResponse reads an HTTP/1.1 status line and header fields. It
// reads nothing past the blank line: the frames that follow stay in r.
func readResponse(r *bufio.Reader) (*Response, error) {
	budget := maxHeaderBytes
	line := func() (string, error) {
		var b []byte
		for {
			chunk, err := r.ReadSlice('\n')
			if budget -= len(chunk); budget < 0 {
				return "", fmt.Errorf("%w: the answer's header is over %d bytes", ErrBadHandshake, maxHeaderBytes)
			}
			b = append(b, chunk...)
			if err == nil {
				return strings.TrimRight(string(b), "\r\n"), nil
			}
			if err != bufio.ErrBufferFull {
				return "", err
			}
		}
	}
	status, err := line()
	if err != nil {
		return nil, err
	}
	proto, rest, _ := strings.Cut(status, " ")
	codeText, _, _ := strings.Cut(rest, " ")
	code, err := strconv.Atoi(codeText)
	if !strings.HasPrefix(proto, "HTTP/1.") || err != nil || len(codeText) != 3 {
		return nil, fmt.Errorf("%w: malformed status line %q", ErrBadHandshake, status)
	}
	resp := &Response{Status: rest, StatusCode: code, Header: map[string]string{}}
	for {
		l, err := line()
		if err != nil {
			return nil, err
		}
		if l == "" {
			return resp, nil
		}
		name, value, ok := strings.Cut(l, ":")
		if !ok || name == "" || strings.ContainsAny(name, " \t") {
			return nil, fmt.Errorf("%w: malformed header line %q", ErrBadHandshake, l)
		}
		resp.Header[canonical(name)] = strings.TrimSpace(value)
	}
}

// canonical writes a header name as net/http does: each word capitalized.
func canonical(name string) string {
	b := []byte(strings.ToLower(name))
	upper := true
	for i, c := range b {
		if upper && 'a' <= c && c <= 'z' {
			b[i] = c - 'a' + 'A'
		}
		upper = c == '-'
	}
	return string(b)
}

// checkResponse checks that resp switches to the WebSocket protocol for
// the key sent, with one of the subprotocols offered (or none).
func checkResponse(resp *Response, key string, offered []string) error {
	h := resp.Header
	if resp.StatusCode != 101 ||
		!strings.EqualFold(h["Upgrade"], "websocket") ||
		!hasToken(h["Connection"], "upgrade") {
		return fmt.Errorf("%w: the server answered %s", ErrBadHandshake, resp.Status)
	}
	sum := sha1.Sum([]byte(key + acceptGUID))
	if h["Sec-Websocket-Accept"] != base64.StdEncoding.EncodeToString(sum[:]) {
		return fmt.Errorf("%w: wrong Sec-WebSocket-Accept", ErrBadHandshake)
	}
	if p, ok := h["Sec-Websocket-Protocol"]; ok && !slices.Contains(offered, p) {
		return fmt.Errorf("%w: the server chose subprotocol %q, which was not offered", ErrBadHandshake, p)
	}
	if ext := h["Sec-Websocket-Extensions"]; ext != "" {
		return fmt.Errorf("%w: the server chose extensions %q, which were not offered", ErrBadHandshake, ext)
	}
	return nil
}

// hasToken reports whether the comma-separated list holds token, in any
// case.
func hasToken(list, token string) bool {
	for t := range strings.SplitSeq(list, ",") {
		if strings.EqualFold(strings.TrimSpace(t), token) {
			return true
		}
	}
	return false
}
