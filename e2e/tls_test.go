package e2e

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// testPKI writes a private CA and a server certificate for 127.0.0.1 signed
// by it, and returns the three file paths.
func testPKI(t *testing.T) (caFile, certFile, keyFile string) {
	t.Helper()
	dir := t.TempDir()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Tether test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "127.0.0.1"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return write("ca.pem", "CERTIFICATE", caDER), write("server.pem", "CERTIFICATE", srvDER), write("server.key", "EC PRIVATE KEY", keyDER)
}

// tlsServer is a tether-server serving HTTPS and WSS with a certificate
// from a private CA, and a client that trusts that CA.
func tlsServer(t *testing.T) (srv *server, caFile string) {
	caFile, certFile, keyFile := testPKI(t)
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	srv = newServer(t, "--tls-cert", certFile, "--tls-key", keyFile)
	srv.scheme = "https"
	srv.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	srv.start()
	return srv, caFile
}

func TestTLSEndToEnd(t *testing.T) {
	srv, caFile := tlsServer(t)
	sender, key := srv.addSender("tls", "")
	// https:// means the same as wss:// to the agent.
	a := startAgent(t, "https://"+srv.addr, "--ca-file", caFile)
	token := a.register(app, sender)
	msgs, _ := a.listen(app)

	body, _ := json.Marshal(map[string]any{"to": token, "data": map[string]string{"over": "tls"}})
	status, out, err := srv.postTo("/fcm/send", key, "application/json", body)
	if err != nil || status != http.StatusOK {
		t.Fatalf("send over HTTPS: %d %s %v", status, out, err)
	}
	var r sendResponse
	if err := json.Unmarshal(out, &r); err != nil || r.Success != 1 {
		t.Fatalf("send over HTTPS answered %s: %v", out, err)
	}
	if d := next(t, msgs); d.MessageID != r.Results[0].MessageID || d.Data["over"] != "tls" {
		t.Fatalf("delivered %+v, want %s", d, r.Results[0].MessageID)
	}
}

func TestTLSRefusesUnknownCA(t *testing.T) {
	srv, _ := tlsServer(t)
	a := newAgent(t, "wss://"+srv.addr)
	a.launch()
	waitFor(t, "tetherd to report a certificate error", 30*time.Second, func() error {
		if strings.Contains(a.p.log(), "certificate") {
			return nil
		}
		return errors.New("no certificate error logged yet")
	})
	out, err := a.ctl("status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Connected bool `json:"connected"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Connected {
		t.Fatalf("status %s: an agent must not connect to a server whose CA it does not trust", out)
	}
}
