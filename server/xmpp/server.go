// SPDX-License-Identifier: Apache-2.0

package xmpp

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Config configures a Server.
type Config struct {
	// TLS, when set, wraps every accepted connection in TLS at once (direct
	// TLS, as CCS on port 5235). Nil serves plain TCP, for a
	// TLS-terminating proxy in front; clients that connect over plain TCP
	// themselves see it as insecure, and @xmpp/client and slixmpp then
	// refuse SASL PLAIN unless told otherwise.
	TLS *tls.Config

	// Domains are accepted after the "@" of the SASL PLAIN user, e.g.
	// "gcm.googleapis.com", "fcm.googleapis.com" and a site's own. The
	// stream header's "to" must be one of them too; the first is the
	// server's name when a client leaves "to" out. Required; compared
	// without regard to case.
	Domains []string

	// Authenticate checks SASL PLAIN credentials: user is the part before
	// the "@" (the sender ID), domain one of Domains. It returns
	// ErrNotAuthorized (possibly wrapped) for wrong credentials, which the
	// client may retry; any other error is a temporary failure. ctx ends
	// with the handshake. Required.
	// remote is the client's address, for limits on failed attempts.
	Authenticate func(ctx context.Context, remote net.Addr, user, domain, password string) error

	// Open is called once a stream is authenticated and its resource
	// bound; it returns the Handler for that connection's stanzas. A nil
	// Handler refuses the connection: the stream ends with a
	// resource-constraint stream error (e.g. too many connections for the
	// sender). Required.
	Open func(c *Conn) Handler

	// Logger gets connection events; nil means slog.Default(). Passwords
	// and payloads are never logged.
	Logger *slog.Logger

	// HandshakeTimeout bounds everything from the accepted connection to
	// a bound resource, TLS included, so that clients that connect and
	// stall do not hold connections. Default 30s.
	HandshakeTimeout time.Duration

	// IdleTimeout is how long a bound stream may go without any data from
	// the client before the server pings it (XEP-0199); any data, whitespace
	// included, counts. Default 60s: a busy stream never sees a ping, a
	// quiet one costs a few dozen bytes a minute, it keeps NAT and load
	// balancer mappings alive, and with PingTimeout a dead app server is
	// noticed within 90s, so what was sent to it is not held for long.
	IdleTimeout time.Duration

	// PingTimeout is how long the client has to send anything after a
	// ping before the stream is closed with a connection-timeout stream
	// error. Default 30s, room for a loaded app server's pauses.
	PingTimeout time.Duration

	// WriteTimeout bounds every write to a client. Default 10s.
	WriteTimeout time.Duration

	// CloseTimeout is how long the server keeps reading, after it ended a
	// stream, for the client to end its side. Default 5s.
	CloseTimeout time.Duration

	// MaxStanzaSize bounds one stanza, and the stream header, in bytes;
	// a larger one ends the stream with a policy-violation stream error.
	// Default 64 KiB.
	MaxStanzaSize int

	// SendQueue is how many payloads Conn.Send queues before it blocks.
	// Default 100, CCS's limit of unanswered messages per connection, so a
	// caller that keeps that limit never blocks.
	SendQueue int
}

// Defaults for Config's zero fields.
const (
	DefaultHandshakeTimeout = 30 * time.Second
	DefaultIdleTimeout      = 60 * time.Second
	DefaultPingTimeout      = 30 * time.Second
	DefaultWriteTimeout     = 10 * time.Second
	DefaultCloseTimeout     = 5 * time.Second
	DefaultMaxStanzaSize    = 64 << 10
	DefaultSendQueue        = 100
)

// What Config.Authenticate returns for wrong credentials (not-authorized),
// and for wrong credentials from a client that should slow down
// (temporary-auth-failure). The caller logs them: an attacker's attempts
// come by the thousand, and it knows how to log them quietly.
var (
	ErrNotAuthorized = errors.New("xmpp: not authorized")
	ErrTryLater      = errors.New("xmpp: too many failures; try later")
)

// Server accepts XMPP client streams. Its zero value is not usable; make it
// with New.
type Server struct {
	cfg Config
	log *slog.Logger
}

// New checks cfg and fills in its defaults.
func New(cfg Config) (*Server, error) {
	if len(cfg.Domains) == 0 {
		return nil, errors.New("xmpp: Config.Domains is empty")
	}
	domains := make([]string, len(cfg.Domains))
	for i, d := range cfg.Domains {
		d = strings.ToLower(strings.TrimSpace(d))
		if d == "" || strings.ContainsAny(d, "@/ ") {
			return nil, fmt.Errorf("xmpp: Config.Domains[%d] %q is not a domain", i, cfg.Domains[i])
		}
		domains[i] = d
	}
	cfg.Domains = domains
	if cfg.Authenticate == nil {
		return nil, errors.New("xmpp: Config.Authenticate is nil")
	}
	if cfg.Open == nil {
		return nil, errors.New("xmpp: Config.Open is nil")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	for _, d := range []struct {
		v   *time.Duration
		def time.Duration
	}{
		{&cfg.HandshakeTimeout, DefaultHandshakeTimeout},
		{&cfg.IdleTimeout, DefaultIdleTimeout},
		{&cfg.PingTimeout, DefaultPingTimeout},
		{&cfg.WriteTimeout, DefaultWriteTimeout},
		{&cfg.CloseTimeout, DefaultCloseTimeout},
	} {
		if *d.v <= 0 {
			*d.v = d.def
		}
	}
	if cfg.MaxStanzaSize <= 0 {
		cfg.MaxStanzaSize = DefaultMaxStanzaSize
	}
	if cfg.SendQueue <= 0 {
		cfg.SendQueue = DefaultSendQueue
	}
	return &Server{cfg: cfg, log: cfg.Logger}, nil
}

// Serve accepts connections on ln until ctx is done (it then returns nil)
// or ln fails. It closes ln, and before it returns every connection it
// accepted has ended: open streams get a system-shutdown stream error, so
// callers drain first (Conn.Send a control message, Conn.Close) for a
// gentle stop. That takes at most about WriteTimeout + CloseTimeout.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	ctx, cancel := context.WithCancelCause(ctx)
	var conns sync.WaitGroup
	defer conns.Wait()
	defer cancel(errors.New("xmpp: listener failed"))
	stop := context.AfterFunc(ctx, func() { ln.Close() })
	defer stop()

	var backoff time.Duration
	for {
		nc, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if !isResourceShortage(err) {
				return fmt.Errorf("xmpp: accept on %s: %w", ln.Addr(), err)
			}
			// Out of file descriptors: the listener is fine, connections
			// will end and free some.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("xmpp: accept failed, retrying", "err", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-ctx.Done():
				return nil
			}
			continue
		}
		backoff = 0
		conns.Go(func() { s.serveConn(ctx, nc) })
	}
}

func isResourceShortage(err error) bool {
	return errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) || errors.Is(err, syscall.ENOBUFS) || errors.Is(err, syscall.ENOMEM)
}
