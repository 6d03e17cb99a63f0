package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"sync/atomic"
)

// certificate is the server's TLS certificate from files. A reload swaps
// it whole, so that each handshake gets either the old one or the new
// one, and connections already open keep theirs.
type certificate struct {
	cur atomic.Pointer[tls.Certificate]
}

func loadCertificate(certFile, keyFile string) (*certificate, error) {
	c := &certificate{}
	if err := c.load(certFile, keyFile); err != nil {
		return nil, err
	}
	return c, nil
}

// load reads the pair; on an error the certificate in use stays.
func (c *certificate) load(certFile, keyFile string) error {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("load TLS certificate: %w", err)
	}
	c.cur.Store(&pair)
	return nil
}

func (c *certificate) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return c.cur.Load(), nil
}

// Reloadable are the settings that a running server takes without a
// restart, and so without dropping a device session (Reload).
type Reloadable struct {
	// TLSCert and TLSKey are read again; new handshakes get the new
	// certificate, on the HTTPS and the XMPP listener.
	TLSCert, TLSKey string
	// ConnsPerIP and SessionsPerIP are Config's. A client over a lowered
	// cap keeps what it holds, and is refused more until it is under it.
	ConnsPerIP, SessionsPerIP int
}

// ErrNotReloadable is returned by Reload for a change that needs a
// restart.
var ErrNotReloadable = errors.New("needs a restart")

// Reload applies r to the running server. The certificate is read first:
// when it cannot be, or when r would turn TLS from files on or off,
// nothing changes and the error says why. Certificates from ACME renew
// themselves and need no reload.
func (s *Server) Reload(r Reloadable) error {
	switch {
	case (r.TLSCert == "") != (s.cert == nil) || (r.TLSCert == "") != (r.TLSKey == ""):
		return fmt.Errorf("reload: turning TLS from files on or off %w", ErrNotReloadable)
	case s.cert != nil:
		if err := s.cert.load(r.TLSCert, r.TLSKey); err != nil {
			return fmt.Errorf("reload: %w", err)
		}
	}
	limits := Config{ConnsPerIP: r.ConnsPerIP, SessionsPerIP: r.SessionsPerIP}
	limits.setDefaults()
	s.conns.SetLimit(limits.ConnsPerIP)
	s.xmppConns.SetLimit(limits.ConnsPerIP)
	s.sessions.SetLimit(limits.SessionsPerIP)
	return nil
}
