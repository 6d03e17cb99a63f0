// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tether/internal/testpki"
	"tether/internal/testwait"
)

// Enrollment with the real binaries: keys of one device or a batch, client
// certificates, revocation, and a device that comes back after a factory
// reset.

// enrollKeyFile makes an enrollment key for uses devices on the stopped
// or running server, in a file of mode 0600.
func (s *server) enrollKeyFile(uses int) (id, file string) {
	s.t.Helper()
	var k struct{ ID, Key string }
	s.admin(&k, "enroll", "create", "--uses", fmt.Sprint(uses))
	file = filepath.Join(s.t.TempDir(), k.ID)
	if err := os.WriteFile(file, []byte(k.Key+"\n"), 0o600); err != nil {
		s.t.Fatal(err)
	}
	return k.ID, file
}

// deviceRun runs a device command of tether-server on the server's data.
func (s *server) deviceRun(verb, id string) {
	s.t.Helper()
	args := []string{"device", verb, "--id", id, "--data", s.data}
	if out, err := exec.Command(filepath.Join(binDir, "tether-server"), args...).CombinedOutput(); err != nil {
		s.t.Fatalf("tether-server %s: %v %s", strings.Join(args, " "), err, out)
	}
}

// expectNotRegistered sends to token and checks that the answer is
// NotRegistered.
func (s *server) expectNotRegistered(key, token string) {
	s.t.Helper()
	resp, err := s.send(key, map[string]any{"to": token})
	if err != nil {
		s.t.Fatal(err)
	}
	if len(resp.Results) != 1 || resp.Results[0].Error != "NotRegistered" {
		s.t.Errorf("send to a revoked or removed device's token: %+v, want NotRegistered", resp.Results)
	}
}

// waitLog waits for text in the agent's log.
func (a *agent) waitLog(text string) {
	a.t.Helper()
	testwait.For(a.t, fmt.Sprintf("tetherd to log %q", text), 30*time.Second, func() error {
		if strings.Contains(a.p.log(), text) {
			return nil
		}
		return fmt.Errorf("not yet")
	})
}

// TestEnrollmentKeysOfTheirOwn: a server that enrolls with keys of its
// own alone. A single-use key enrolls one device and refuses the next; a
// batch key enrolls its count; a revoked device stays out, its tokens
// answer NotRegistered; a removed one enrolls again with its key and its
// apps get their new tokens.
func TestEnrollmentKeysOfTheirOwn(t *testing.T) {
	hook := startWebhook(t)
	srv := newServer(t)
	srv.keysOnly = true
	sender, key := srv.addSender("backend", hook.url())
	oneID, one := srv.enrollKeyFile(1)
	_, batch := srv.enrollKeyFile(2)
	srv.start()

	a := startAgent(t, srv.url(), "--enroll-key-file", one, "--max-backoff", "2s")
	aToken := a.register(app, sender)
	devices := srv.devices()
	if len(devices) != 1 || devices[0]["enrolled_by"] != "key:"+oneID {
		t.Fatalf("devices after the first check-in: %v", devices)
	}

	spent := newAgent(t, srv.url(), "--enroll-key-file", one, "--max-backoff", "2s")
	spent.launch()
	spent.waitLog("the server refused the check-in")
	// Its refusals, one every --max-backoff, would use up the address's
	// budget of failed credentials (--enroll-failure-limit) that the
	// re-enrollment below needs: all these agents share 127.0.0.1.
	spent.p.stop()

	b := startAgent(t, srv.url(), "--enroll-key-file", batch, "--max-backoff", "2s")
	bToken := b.register(app, sender)
	if n := len(srv.devices()); n != 2 {
		t.Errorf("%d devices, want the two with usable keys", n)
	}

	// Revoked: the live session ends, and the agent stays out although it
	// holds a key.
	srv.deviceRun("revoke", deviceID(t, a))
	a.waitLog("the server revoked this device")
	a.p.stop()
	srv.expectNotRegistered(key, aToken)
	if n := len(srv.devices()); n != 2 {
		t.Errorf("%d devices after a revocation, want 2: the revoked device enrolled again", n)
	}

	// Removed: the server has lost the device; the agent enrolls again
	// with the batch key's second use, and its app learns its new token.
	msgs, _ := b.listen(app)
	oldB := deviceID(t, b)
	srv.deviceRun("remove", oldB)
	refresh := nextEvent(t, msgs, "token_refreshed")
	if refresh.Token == "" || refresh.Token == bToken {
		t.Fatalf("token refresh %+v after the device was removed", refresh)
	}
	srv.expectNotRegistered(key, bToken)
	if id := deviceID(t, b); id == oldB || id == "" {
		t.Errorf("device ID after enrolling again: %q (was %s)", id, oldB)
	}
	id := srv.mustSend(key, map[string]any{"to": refresh.Token, "data": map[string]string{"k": "v"}})
	if got := next(t, msgs); got.MessageID != id {
		t.Errorf("delivered %s to the new token, want %s", got.MessageID, id)
	}
}

// deviceID is the agent's device ID, from tetherctl status.
func deviceID(t *testing.T, a *agent) string {
	t.Helper()
	var id string
	testwait.For(t, "a device ID", 30*time.Second, func() error {
		out, err := a.ctl("status", "--json")
		if err != nil {
			return err
		}
		var st struct {
			DeviceID string `json:"device_id"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil || st.DeviceID == "" {
			return fmt.Errorf("no device_id in %s: %v", out, err)
		}
		id = st.DeviceID
		return nil
	})
	return id
}

// TestClientCertificates: a device with a certificate from the device CA
// enrolls with no key, bound to it; after a factory reset it comes back
// with the same certificate and replaces its old record, and the app
// server's old token leads to the new one; revoked, its certificate is
// refused from then on.
func TestClientCertificates(t *testing.T) {
	pki, err := testpki.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, "--tls-cert", pki.Cert, "--tls-key", pki.Key, "--device-ca", pki.CA)
	srv.scheme = "https"
	srv.client = &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}}}
	srv.start()
	sender, key := srv.addSender("backend", "")
	cert, certKey, err := pki.Client("thermostat-0042", "thermostat")
	if err != nil {
		t.Fatal(err)
	}
	agentArgs := []string{"--ca-file", pki.CA, "--cert", cert, "--key", certKey, "--max-backoff", "2s"}
	a := startAgent(t, "wss://"+srv.addr, agentArgs...)
	oldToken := a.register(app, sender)
	oldID := deviceID(t, a)
	devices := srv.devices()
	if len(devices) != 1 || devices[0]["cert_id"] != "cn:thermostat-0042" || devices[0]["enrolled_by"] != "cert" {
		t.Fatalf("devices: %v", devices)
	}

	// A factory reset: the agent's data is gone, the certificate stays.
	a.p.stop()
	if err := os.RemoveAll(a.data); err != nil {
		t.Fatal(err)
	}
	a.start()
	id := deviceID(t, a)
	if devices = srv.devices(); id == oldID || len(devices) != 1 || devices[0]["id"] != id {
		t.Fatalf("devices after the factory reset: %v; want the new one, %s, alone (it was %s)", devices, id, oldID)
	}
	newToken := a.register(app, sender)
	msgs, _ := a.listen(app)
	resp, err := srv.send(key, map[string]any{"to": oldToken, "data": map[string]string{"k": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	if r := resp.Results[0]; r.RegistrationID != newToken || r.MessageID == "" {
		t.Errorf("send to the old token after the reset: %+v; want it delivered with the new token as canonical ID", r)
	}
	if got := next(t, msgs); got.MessageID != resp.Results[0].MessageID {
		t.Errorf("delivered %s", got.MessageID)
	}

	// Revoked, then removed: the certificate is refused from then on.
	srv.deviceRun("revoke", id)
	a.waitLog("the server revoked this device")
	srv.deviceRun("remove", id)
	srv.expectNotRegistered(key, newToken)
	a.p.stop()
	os.RemoveAll(a.data)
	a.launch()
	a.waitLog("the server revoked this device")
	if n := len(srv.devices()); n != 0 {
		t.Errorf("%d devices after a revoked certificate checked in", n)
	}
}
