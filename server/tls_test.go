package server

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"tether/wire"
)

// selfSigned writes a certificate for 127.0.0.1 and its key as PEM files.
func selfSigned(t *testing.T) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "tether test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
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
	d.send("", wire.Hello{Version: wire.Version})
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
