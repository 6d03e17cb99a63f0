// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"tether/store"
)

// TestNoSecretInAnyLog runs every path that handles a secret, with debug
// logs on both binaries and tetherctl, and then greps every log and every
// output for each secret: the enrollment key, the device secret (read from
// the agent's store once it has stopped), server keys before and after a
// rotation, registration tokens before and after a rotation, the SASL
// password on the XMPP endpoint and a webhook URL with a token in its
// query. It also checks that the files holding secrets are 0600.
func TestNoSecretInAnyLog(t *testing.T) {
	const enrollKey = "enroll-7c1f4e0a9b2d-5a6b7c8d9e"
	keyFile := filepath.Join(t.TempDir(), "enroll-key")
	if err := os.WriteFile(keyFile, []byte(enrollKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	xmppAddr := freeAddr(t)
	srv, caFile := tlsServer(t, "--enroll-key-file", keyFile, "--xmpp-listen", xmppAddr)
	hook := startWebhook(t)
	hookURL := hook.url() + "?token=webhook-secret-5e2a"
	sender, key := srv.addSender("secrets", hookURL)

	a := startAgent(t, "https://"+srv.addr, "--ca-file", caFile, "--enroll-key-file", keyFile)
	token := a.register(app, sender)
	msgs, _ := a.listen(app)

	// Downstream over HTTP, upstream to the webhook.
	body, _ := json.Marshal(map[string]any{"to": token, "data": map[string]string{"k": "v"}})
	if status, out, err := srv.postTo("/gcm/send", key, "application/json", body); err != nil || status != 200 {
		t.Fatalf("send: %d %s %v", status, out, err)
	}
	next(t, msgs)
	if _, err := a.ctl("send", "--app", app, "--to", sender, "--wait", "k=v"); err != nil {
		t.Fatal(err)
	}
	hook.next(t)

	// A wrong key, then a rotated one.
	if status, _, _ := srv.postTo("/gcm/send", "wrong-key-3b9d", "application/json", body); status != 401 {
		t.Errorf("a wrong key answered %d", status)
	}
	out, err := exec.Command(filepath.Join(binDir, "tether-server"), "sender", "rotate-key", "--data", srv.data, "--id", sender, "--grace", "1h", "--json").Output()
	if err != nil {
		t.Fatalf("rotate-key: %v: %s", err, exitStderr(err))
	}
	var rotated struct {
		ServerKey string `json:"server_key"`
	}
	if err := json.Unmarshal(out, &rotated); err != nil || rotated.ServerKey == "" {
		t.Fatalf("rotate-key printed %q", out)
	}

	// A token rotation reaches the agent.
	cmd := exec.Command(filepath.Join(binDir, "tether-server"), "token", "rotate", "--data", srv.data, "--token", "-", "--json")
	cmd.Stdin = strings.NewReader(token + "\n")
	out, err = cmd.Output()
	if err != nil {
		t.Fatalf("token rotate: %v: %s", err, exitStderr(err))
	}
	var newToken struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(out, &newToken); err != nil || newToken.Token == "" {
		t.Fatalf("token rotate printed %q", out)
	}
	nextEvent(t, msgs, "token_refreshed")

	// The XMPP endpoint, with the new key.
	x := startXMPPAppServer(t, "xmpps://"+xmppAddr, caFile, sender, rotated.ServerKey)
	x.next("online", func(ev map[string]any) bool { return ev["event"] == "online" })
	x.command(map[string]any{"op": "send", "message": map[string]any{"to": newToken.Token, "message_id": "m-1", "data": map[string]string{"k": "v"}}})
	x.stanza("ack", "m-1")
	x.command(map[string]any{"op": "stop"})

	a.p.stop()
	srv.p.stop()
	st, err := store.Open(filepath.Join(a.data, "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	creds, err := st.Credentials()
	st.Close()
	if err != nil || creds.Secret == "" {
		t.Fatalf("the agent's credentials: %+v %v", creds, err)
	}

	secrets := map[string]string{
		"enrollment key": enrollKey, "device secret": creds.Secret, "server key": key, "rotated server key": rotated.ServerKey,
		"wrong server key": "wrong-key-3b9d", "token": token, "rotated token": newToken.Token, "webhook query": "webhook-secret-5e2a",
	}
	logs := 0
	root := filepath.Dir(t.TempDir())
	filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".log") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		logs++
		for what, s := range secrets {
			if strings.Contains(string(b), s) {
				t.Errorf("%s holds the %s", filepath.Base(path), what)
			}
		}
		return nil
	})
	if logs < 3 {
		t.Fatalf("found %d logs under %s: the test read nothing", logs, root)
	}
	for _, f := range []string{filepath.Join(a.data, "agent.db"), filepath.Join(srv.data, "server.db"), filepath.Join(srv.data, "admin.sock")} {
		if fi, err := os.Stat(f); err != nil {
			if !os.IsNotExist(err) || !strings.HasSuffix(f, ".sock") {
				t.Error(err)
			}
		} else if fi.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %v, want 0600", filepath.Base(f), fi.Mode().Perm())
		}
	}
}
