// SPDX-License-Identifier: Apache-2.0

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

// ErrNotReloadable is returned by Reload for a change that needs a
// restart.
var ErrNotReloadable = errors.New("needs a restart")

// Reload applies to the running server the settings of cfg that can
// change without dropping a device session or an XMPP connection:
//
//   - TLSCert and TLSKey are read again; new handshakes, on the HTTPS and
//     the XMPP listener, get the new certificate, and connections already
//     open keep theirs. Certificates from ACME renew themselves.
//   - ConnsPerIP and SessionsPerIP: a client over a lowered cap keeps
//     what it holds, and is refused more until it is under the cap.
//   - The rate limits (DeviceRateLimit, TopicRateLimit, ReconnectLimit,
//     CheckInLimit, UpstreamRateLimit, AuthFailureLimit,
//     EnrollFailureLimit): a changed one starts counting anew on this
//     node; on a cluster the counts of those shared by the nodes stay.
//
// The other fields of cfg are ignored. When the certificate cannot be
// read, or cfg would turn TLS from files on or off, nothing changes and
// the error says why.
func (s *Server) Reload(cfg Config) error {
	switch {
	case (cfg.TLSCert == "") != (s.cert == nil) || (cfg.TLSCert == "") != (cfg.TLSKey == ""):
		return fmt.Errorf("reload: turning TLS from files on or off %w", ErrNotReloadable)
	case s.cert != nil:
		if err := s.cert.load(cfg.TLSCert, cfg.TLSKey); err != nil {
			return fmt.Errorf("reload: %w", err)
		}
	}
	cfg.Now = s.now // the clock is the server's
	cfg.setDefaults()
	if err := s.setLimits(cfg); err != nil {
		return fmt.Errorf("reload: %w", err)
	}
	s.conns.SetLimit(cfg.ConnsPerIP)
	s.xmppConns.SetLimit(cfg.ConnsPerIP)
	s.sessions.SetLimit(cfg.SessionsPerIP)
	return nil
}
