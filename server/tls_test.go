// SPDX-License-Identifier: Apache-2.0

package server

import (
	"crypto/tls"
	"crypto/x509"
	"net/http"
	"testing"

	"github.com/gorilla/websocket"

	"tether/internal/testpki"
	"tether/wire"
)

// selfSigned writes a server certificate for 127.0.0.1 signed by a test CA.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	pki, err := testpki.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	return pki.Cert, pki.Key, pki.Pool
}

func TestTLSServesHTTPSAndWSS(t *testing.T) {
	certFile, keyFile, pool := selfSigned(t)
	ts := startServer(t, func(c *Config) { c.TLSCert, c.TLSKey = certFile, keyFile })
	tlsConfig := &tls.Config{RootCAs: pool}

	client := &http.Client{Transport: &http.Transport{TLSClientConfig: tlsConfig}}
	resp, err := client.Get("https://" + ts.Addr().String() + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Errorf("https healthz: %d", resp.StatusCode)
	}

	dialer := websocket.Dialer{TLSClientConfig: tlsConfig, Subprotocols: []string{wire.Subprotocol}}
	conn, _, err := dialer.Dial("wss://"+ts.Addr().String()+wire.Path, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := &device{t: t, conn: conn}
	defer conn.Close()
	d.send("", wire.Hello{Version: wire.Version, EnrollKey: testEnrollKey})
	var w wire.Welcome
	d.expect(wire.TypeWelcome, "", &w)
	if w.DeviceSecret == "" {
		t.Errorf("check-in over WSS: %+v", w)
	}
}

func TestNewRejectsHalfTLS(t *testing.T) {
	certFile, _, _ := selfSigned(t)
	if _, err := New(Config{DataDir: t.TempDir(), TLSCert: certFile}); err == nil {
		t.Error("certificate without key accepted")
	}
	if _, err := New(Config{DataDir: t.TempDir(), TLSCert: certFile, TLSKey: certFile}); err == nil {
		t.Error("certificate as its own key accepted")
	}
}
