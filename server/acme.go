// SPDX-License-Identifier: Apache-2.0

package server

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/crypto/acme"
	"golang.org/x/crypto/acme/autocert"
)

// ACMEConfig has the server obtain its certificate from an ACME CA
// (RFC 8555), and renew it before it ends, instead of reading TLSCert and
// TLSKey. The CA's TLS-ALPN-01 challenge is answered on the listener
// itself, so the CA must reach it on port 443 at each of the names.
type ACMEConfig struct {
	// Domains are the names the certificate is for; each must have a
	// dot. A handshake for another name gets no certificate.
	Domains []string
	// CacheDir keeps the ACME account key and the certificates with
	// their keys (mode 0600), so that a restart does not ask the CA
	// again; default "acme" in the data directory.
	CacheDir string
	// Email is the contact the CA is given for the account, optional.
	Email string
	// DirectoryURL is the CA's ACME directory; default Let's Encrypt's.
	DirectoryURL string
}

// CheckACMEDomains reports a name that a certificate cannot be asked
// for: autocert asks only for names with a dot.
func CheckACMEDomains(names []string) error {
	if len(names) == 0 {
		return errors.New("ACME needs at least one domain")
	}
	for _, d := range names {
		if !strings.Contains(strings.Trim(d, "."), ".") || strings.ContainsAny(d, ":/ ") {
			return fmt.Errorf("ACME domain %q: want a name with a dot and no port, such as push.example.com", d)
		}
	}
	return nil
}

// acmeTLS is the listeners' TLS configuration with certificates from
// cfg.ACME.
func acmeTLS(cfg Config) (*tls.Config, error) {
	a := cfg.ACME
	if err := CheckACMEDomains(a.Domains); err != nil {
		return nil, err
	}
	dir := a.CacheDir
	if dir == "" {
		dir = filepath.Join(cfg.DataDir, "acme")
	}
	url := a.DirectoryURL
	if url == "" {
		url = acme.LetsEncryptURL
	}
	m := &autocert.Manager{
		Prompt:     autocert.AcceptTOS,
		Cache:      autocert.DirCache(dir),
		HostPolicy: autocert.HostWhitelist(a.Domains...),
		Email:      a.Email,
		Client:     &acme.Client{DirectoryURL: url},
	}
	log := cfg.Logger.With("part", "acme")
	return &tls.Config{
		GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
			cert, err := m.GetCertificate(hello)
			if err != nil {
				// A name of ours that gets no certificate is the
				// operator's to know; others are scanners and strays.
				level := slog.LevelDebug
				if slices.Contains(a.Domains, hello.ServerName) {
					level = slog.LevelWarn
				}
				log.Log(hello.Context(), level, "no certificate from ACME", "server_name", hello.ServerName, "err", err)
			}
			return cert, err
		},
		// No h2: device sessions are WebSocket over HTTP/1.1.
		NextProtos: []string{"http/1.1", acme.ALPNProto},
		MinVersion: tls.VersionTLS12,
	}, nil
}
