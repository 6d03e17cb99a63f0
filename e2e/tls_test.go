// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"tether/internal/testpki"
	"tether/internal/testwait"
)

// tlsServer is a tether-server serving HTTPS and WSS with a certificate
// from a private CA, with extra flags, and a client that trusts that CA.
func tlsServer(t *testing.T, extra ...string) (srv *server, caFile string) {
	srv, caFile = newTLSServer(t, extra...)
	srv.start()
	return srv, caFile
}

// newTLSServer is tlsServer not yet started.
func newTLSServer(t *testing.T, extra ...string) (srv *server, caFile string) {
	pki, err := testpki.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv = newServer(t, append([]string{"--tls-cert", pki.Cert, "--tls-key", pki.Key}, extra...)...)
	srv.scheme = "https"
	srv.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}}}
	return srv, pki.CA
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
	testwait.For(t, "tetherd to report a certificate error", 30*time.Second, func() error {
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
