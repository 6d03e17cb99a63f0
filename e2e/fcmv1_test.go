// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// debianPython is Debian's python, which has python3-google-auth and
// python3-requests; another python3 earlier on PATH may lack them.
const debianPython = "/usr/bin/python3"

// googleAuthAnswer is what google-auth-send.py prints.
type googleAuthAnswer struct {
	Status int `json:"status"`
	Body   struct {
		Name  string `json:"name"`
		Error struct {
			Code    int    `json:"code"`
			Status  string `json:"status"`
			Message string `json:"message"`
			Details []struct {
				Type      string `json:"@type"`
				ErrorCode string `json:"errorCode"`
			} `json:"details"`
		} `json:"error"`
	} `json:"body"`
}

// googleAuthSend sends message through the FCM v1 API with Google's auth
// library for Python, reading the service-account file account.
func googleAuthSend(t *testing.T, account, origin string, message any) googleAuthAnswer {
	t.Helper()
	dir, err := filepath.Abs("acceptance")
	if err != nil {
		t.Fatal(err)
	}
	if err := exec.Command(debianPython, "-c", "import google.auth, requests").Run(); err != nil {
		t.Fatalf("%s lacks google-auth or requests: make test's set-up installs python3-google-auth and python3-requests (.ci/run): %v", debianPython, err)
	}
	m, _ := json.Marshal(message)
	cmd := exec.CommandContext(withTimeout(t, time.Minute), debianPython, filepath.Join(dir, "google-auth-send.py"), account, origin, string(m))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("google-auth send: %v: %s", err, exitStderr(err))
	}
	var a googleAuthAnswer
	if err := json.Unmarshal(out, &a); err != nil {
		t.Fatalf("google-auth-send.py printed %q: %v", out, err)
	}
	return a
}

// TestGoogleAuthLibraryWorksUnchanged sends through the FCM HTTP v1 API
// with Google's auth library, as app servers written since FCM v1 do:
// the service-account file from `tether-server sender service-account`
// is all it is given, and a real agent's app receives the message.
func TestGoogleAuthLibraryWorksUnchanged(t *testing.T) {
	f := &fleet{hook: startWebhook(t)}
	f.srv = newServer(t)
	origin := "http://" + f.srv.addr
	f.srv.args = []string{"--public-url", origin}
	f.srv.start()
	f.sender, f.key = f.srv.addSender("thermo-backend", f.hook.url())
	f.agent = startAgent(t, f.srv.url())
	f.token = f.agent.register(app, f.sender)
	msgs, _ := f.agent.listen(app)

	account := filepath.Join(t.TempDir(), "service-account.json")
	if out, err := exec.Command(filepath.Join(binDir, "tether-server"), "sender", "service-account",
		"--data", f.srv.data, "--id", f.sender, "--public-url", origin, "--out", account).Output(); err != nil {
		t.Fatalf("sender service-account: %v: %s%s", err, out, exitStderr(err))
	}
	if fi, err := os.Stat(account); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("service-account file: %v, %v; want mode 0600", fi, err)
	}
	key, err := os.ReadFile(account)
	if err != nil {
		t.Fatal(err)
	}
	var file struct {
		PrivateKey string `json:"private_key"`
	}
	if err := json.Unmarshal(key, &file); err != nil || !strings.Contains(file.PrivateKey, "PRIVATE KEY") {
		t.Fatalf("service-account file %v", err)
	}

	a := googleAuthSend(t, account, origin, map[string]any{
		"token": f.token, "data": map[string]string{"setpoint": "19.5"},
		"android": map[string]any{"collapse_key": "setpoint", "priority": "HIGH", "ttl": "600s"},
	})
	if a.Status != 200 || !strings.HasPrefix(a.Body.Name, "projects/"+f.sender+"/messages/") {
		t.Fatalf("google-auth send answered %+v", a)
	}
	d := next(t, msgs)
	if "projects/"+f.sender+"/messages/"+d.MessageID != a.Body.Name || d.CollapseKey != "setpoint" || d.Data["setpoint"] != "19.5" || d.From != f.sender {
		t.Fatalf("delivered %+v after google-auth's send %q", d, a.Body.Name)
	}

	// FCM's error form, as the library hands it over.
	a = googleAuthSend(t, account, origin, map[string]any{"token": "no-such-token"})
	if a.Status != 400 || a.Body.Error.Status != "INVALID_ARGUMENT" || len(a.Body.Error.Details) != 1 || a.Body.Error.Details[0].ErrorCode != "INVALID_ARGUMENT" {
		t.Fatalf("send to an unknown token answered %+v", a)
	}
	checkNoSecretsLogged(t, f.key, f.token, strings.Split(strings.TrimSpace(file.PrivateKey), "\n")[1])
}
