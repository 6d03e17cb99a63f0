// SPDX-License-Identifier: Apache-2.0

package main

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log"
	"net"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/letsencrypt/pebble/v2/ca"
	"github.com/letsencrypt/pebble/v2/db"
	"github.com/letsencrypt/pebble/v2/va"
	"github.com/letsencrypt/pebble/v2/wfe"
)

// pebble is Let's Encrypt's test ACME server, run in this process.
type pebble struct {
	srv *httptest.Server
	// directory is its ACME directory URL.
	directory string
	// httpsCA is the file of the CA of its HTTPS certificate, for the
	// server's ACME client to trust (SSL_CERT_FILE).
	httpsCA string
	// roots verify the certificates it issues.
	roots *x509.CertPool
}

// startPebble starts pebble with every challenge taken as answered
// (PEBBLE_VA_ALWAYS_VALID), so that no name needs to resolve, and with no
// random delays or nonce refusals.
func startPebble(t *testing.T) *pebble {
	t.Setenv("PEBBLE_VA_ALWAYS_VALID", "1")
	t.Setenv("PEBBLE_VA_NOSLEEP", "1")
	t.Setenv("PEBBLE_WFE_NONCEREJECT", "0")
	logger := log.New(io.Discard, "", 0)
	store := db.NewMemoryStore()
	authority := ca.New(logger, store, "", "ecdsa", 0, 1, map[string]ca.Profile{"default": {Description: "default"}})
	validator := va.New(logger, 5002, 5001, false, "", store)
	front := wfe.New(logger, store, validator, authority, []string{"pebble.letsencrypt.org"}, false, false, 3, 5)
	srv := httptest.NewTLSServer(front.Handler())
	t.Cleanup(srv.Close)
	p := &pebble{srv: srv, directory: srv.URL + wfe.DirectoryPath, httpsCA: filepath.Join(t.TempDir(), "pebble-https.pem"), roots: x509.NewCertPool()}
	if err := os.WriteFile(p.httpsCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw}), 0o600); err != nil {
		t.Fatal(err)
	}
	if !p.roots.AppendCertsFromPEM(authority.GetRootCert(0).PEM()) {
		t.Fatal("pebble's root is no PEM certificate")
	}
	return p
}

// TestACMECertificate runs tether-server with --acme-domain against
// pebble: a TLS client naming the domain gets a certificate pebble issued
// for it, obtained by the server at that first handshake, and after a
// restart the server serves it from its cache with the CA gone.
func TestACMECertificate(t *testing.T) {
	p := startPebble(t)
	const domain = "tether.test" // autocert asks only for names with a dot
	data := filepath.Join(t.TempDir(), "data")
	args := []string{"serve", "--data", data, "--listen", "127.0.0.1:0", "--open-enrollment", "--shutdown-spread", "0",
		"--acme-domain", domain, "--acme-email", "ops@tether.test", "--acme-directory", p.directory}
	start := func() (*serverProcess, string) {
		return startServerEnv(t, []string{"SSL_CERT_FILE=" + p.httpsCA}, args...)
	}
	dial := func(addr, name string) (*x509.Certificate, error) {
		conn, err := tls.DialWithDialer(&netDialer, "tcp", addr, &tls.Config{ServerName: name, RootCAs: p.roots})
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0], nil
	}

	srv, addr := start()
	leaf, err := dial(addr, domain)
	if err != nil {
		t.Fatalf("TLS to %s: %v", domain, err)
	}
	if !slices.Contains(leaf.DNSNames, domain) {
		t.Errorf("certificate for %v, want %s", leaf.DNSNames, domain)
	}
	if _, err := dial(addr, "other.test"); err == nil {
		t.Error("a name not in --acme-domain got a certificate")
	}
	srv.stop(t)

	// The account key and the certificate's key are kept private.
	entries, err := os.ReadDir(filepath.Join(data, "acme"))
	if err != nil || len(entries) == 0 {
		t.Fatalf("ACME cache: %v, %d entries", err, len(entries))
	}
	for _, e := range entries {
		if fi, err := e.Info(); err != nil || fi.Mode().Perm()&0o077 != 0 {
			t.Errorf("%s: mode %v, %v; want the owner's alone", e.Name(), fi.Mode(), err)
		}
	}

	p.srv.Close()
	srv, addr = start()
	again, err := dial(addr, domain)
	if err != nil || !again.Equal(leaf) {
		t.Errorf("after a restart with the CA gone: %v; want the cached certificate", err)
	}
	srv.stop(t)
}

var netDialer = net.Dialer{Timeout: time.Minute}
