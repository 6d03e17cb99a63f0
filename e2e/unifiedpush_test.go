// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"tether/internal/busclient"
	"tether/internal/dbustest"
	"tether/internal/testwait"
)

// upDistributorName is the distributor's name on the session bus.
const upDistributorName = "org.unifiedpush.Distributor.tether"

// upSetup is a UnifiedPush device: tether-server with TLS and a public
// URL, tetherd, and a session bus on which the distributor and the
// connectors are started by D-Bus activation from their service files.
type upSetup struct {
	t      *testing.T
	srv    *server
	caFile string
	agent  *agent
	bus    string
	// distLog is the distributor's stderr, whichever run of it.
	distLog string
	// acceptance is the directory of the client libraries and scripts.
	acceptance string
	// vapid is the app server's VAPID key pair and subject, as web-push
	// takes them.
	vapid map[string]string
}

func startUnifiedPush(t *testing.T) *upSetup {
	t.Helper()
	acceptance, err := filepath.Abs("acceptance")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(acceptance, "node_modules", "web-push")); err != nil {
		t.Fatalf("web-push is not installed in %s: make test installs it (npm ci there): %v", acceptance, err)
	}
	srv, caFile := newTLSServer(t)
	srv.args = append(srv.args, "--public-url", "https://"+srv.addr)
	srv.start()
	a := startAgent(t, "https://"+srv.addr, "--ca-file", caFile)

	// The distributor's service file is the shipped one, running the
	// tetherctl under test against this agent, with its log kept.
	shipped, err := os.ReadFile("../packaging/dbus/org.unifiedpush.Distributor.tether.service")
	if err != nil {
		t.Fatal(err)
	}
	const execLine = "\nExec=/usr/bin/tetherctl up-distributor\n"
	if !bytes.Contains(shipped, []byte(execLine)) {
		t.Fatalf("the shipped service file has no %q", strings.TrimSpace(execLine))
	}
	dir := t.TempDir()
	u := &upSetup{t: t, srv: srv, caFile: caFile, agent: a, distLog: filepath.Join(dir, "distributor.log"), acceptance: acceptance}
	services := filepath.Join(dir, "services")
	if err := os.Mkdir(services, 0o755); err != nil {
		t.Fatal(err)
	}
	execWith := fmt.Sprintf("\nExec=/bin/sh -c \"exec %s --socket %s up-distributor --state %s 2>>%s\"\n",
		filepath.Join(binDir, "tetherctl"), a.sock, filepath.Join(dir, "state", "unifiedpush.json"), u.distLog)
	writeFile(t, filepath.Join(services, upDistributorName+".service"), bytes.Replace(shipped, []byte(execLine), []byte(execWith), 1))
	for _, c := range upConnectors {
		service := fmt.Sprintf("[D-BUS Service]\nName=%s\nExec=%s %s serve --name %s --dir %s\n",
			c.name, pythonWithDBus, filepath.Join(acceptance, "up-connector.py"), c.name, u.connectorDir(c))
		writeFile(t, filepath.Join(services, c.name+".service"), []byte(service))
	}
	u.bus = dbustest.StartWith(t, dbustest.Options{ServiceDirs: []string{services}}).Address
	t.Cleanup(func() {
		log, _ := os.ReadFile(u.distLog)
		for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
			if bytes.Contains(log, []byte(bad)) {
				t.Errorf("the distributor printed %q:\n%s", bad, log)
			}
		}
		if bytes.Contains(log, []byte("/up/")) {
			t.Errorf("the distributor logged an endpoint:\n%s", log)
		}
		if t.Failed() {
			t.Logf("distributor log:\n%s", log)
		}
	})

	out := u.node("keys")
	if err := json.Unmarshal(out, &u.vapid); err != nil || u.vapid["publicKey"] == "" {
		t.Fatalf("web-push generateVAPIDKeys: %s: %v", out, err)
	}
	u.vapid["subject"] = "mailto:push@example.com"
	return u
}

func writeFile(t *testing.T, path string, b []byte) {
	t.Helper()
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// upConnector is a connector app: its bus name and the UnifiedPush
// interface version it registers through.
type upConnector struct {
	name    string
	version int
	token   string
}

var upConnectors = []upConnector{
	{name: "org.example.PushTwo", version: 2, token: "5c0c6f5e-7f0e-4b53-9d3c-3a1f6f0d2a01"},
	{name: "org.example.PushOne", version: 1, token: "a4d8e2b1-0c55-4a0e-8f0e-97c1b7e3f402"},
}

func (u *upSetup) connectorDir(c upConnector) string {
	return filepath.Join(filepath.Dir(u.distLog), "connector-"+c.name)
}

// python runs the connector script in one of its modes on the bus.
func (u *upSetup) python(args ...string) []byte {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pythonWithDBus, append([]string{filepath.Join(u.acceptance, "up-connector.py")}, append(args, "--bus", u.bus)...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		u.t.Fatalf("up-connector.py %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out
}

// node runs web-push-send.js, trusting the test CA.
func (u *upSetup) node(args ...string) []byte {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "node", append([]string{filepath.Join(u.acceptance, "web-push-send.js")}, args...)...)
	cmd.Dir = u.acceptance
	cmd.Env = append(os.Environ(), "NODE_EXTRA_CA_CERTS="+u.caFile)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		u.t.Fatalf("web-push-send.js %s: %v\n%s", args[0], err, stderr.String())
	}
	return out
}

// subscription is what a connector hands its app server.
type subscription struct {
	Endpoint string `json:"endpoint"`
	P256dh   string `json:"p256dh"`
	Auth     string `json:"auth"`
}

// register registers the connector through the distributor, which the
// bus starts when it is not running.
func (u *upSetup) register(c upConnector) subscription {
	u.t.Helper()
	args := []string{"register", "--name", c.name, "--token", c.token, "--dir", u.connectorDir(c), "--version", fmt.Sprint(c.version)}
	if c.version == 2 {
		args = append(args, "--vapid", u.vapid["publicKey"])
	}
	out := u.python(args...)
	var s subscription
	if err := json.Unmarshal(out, &s); err != nil {
		u.t.Fatalf("up-connector.py register printed %q: %v", out, err)
	}
	if want := "https://" + u.srv.addr + "/up/"; !strings.HasPrefix(s.Endpoint, want) {
		u.t.Fatalf("endpoint %q, want one under %s", s.Endpoint, want)
	}
	return s
}

// push sends plaintext with web-push and returns the push service's
// status.
func (u *upSetup) push(s subscription, plaintext string) int {
	u.t.Helper()
	sub, _ := json.Marshal(map[string]any{"endpoint": s.Endpoint, "keys": map[string]string{"p256dh": s.P256dh, "auth": s.Auth}})
	vapid, _ := json.Marshal(u.vapid)
	out := u.node("send", string(sub), string(vapid), plaintext)
	var r struct {
		StatusCode int    `json:"statusCode"`
		Error      string `json:"error"`
		Body       string `json:"body"`
	}
	if err := json.Unmarshal(out, &r); err != nil {
		u.t.Fatalf("web-push-send.js printed %q: %v", out, err)
	}
	return r.StatusCode
}

// records reads one of a connector's JSON-lines records.
func (u *upSetup) records(c upConnector, file string) []map[string]any {
	f, err := os.Open(filepath.Join(u.connectorDir(c), file))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		u.t.Fatal(err)
	}
	defer f.Close()
	var out []map[string]any
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err == nil {
			out = append(out, m)
		}
	}
	return out
}

// waitDecrypted waits for the connector to have decrypted plaintext.
func (u *upSetup) waitDecrypted(c upConnector, plaintext string) {
	u.t.Helper()
	testwait.For(u.t, c.name+" to decrypt the message", 90*time.Second, func() error {
		msgs := u.records(c, "messages.jsonl")
		for _, m := range msgs {
			if m["plaintext"] == plaintext && m["token"] == c.token {
				return nil
			}
		}
		return fmt.Errorf("%d messages so far: %v", len(msgs), msgs)
	})
}

// TestUnifiedPushWebPush is the acceptance test with unmodified clients:
// npm's web-push encrypts with RFC 8291 and signs with VAPID, posting to
// the endpoint that the distributor handed a Python connector (dbus-python,
// following the UnifiedPush D-Bus specification); the connector, started by
// D-Bus activation, decrypts the bytes to what was sent. Through
// Distributor2 and Connector2 with a VAPID key, and through Distributor1 and
// Connector1; across restarts of tetherd and of the distributor; and until
// the connector unregisters.
func TestUnifiedPushWebPush(t *testing.T) {
	u := startUnifiedPush(t)
	subs := map[string]subscription{}
	for _, c := range upConnectors {
		subs[c.name] = u.register(c)
	}
	// The largest body Web Push allows is 4096 bytes of ciphertext:
	// 3993 bytes of plaintext in one aes128gcm record, here with the
	// connector's name after it (the same length for both).
	big := strings.Repeat("z", 3993-len(" to "+upConnectors[0].name))
	tests := []struct {
		name      string
		plaintext string
		restart   func()
	}{
		{name: "first", plaintext: "hello from web-push ✓"},
		{name: "4096 bytes", plaintext: big},
		{name: "after tetherd restarted", plaintext: "tetherd came back", restart: func() {
			u.agent.p.stop()
			u.agent.start()
		}},
		{name: "after the distributor restarted", plaintext: "the distributor came back", restart: u.restartDistributor},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.restart != nil {
				tt.restart()
			}
			for _, c := range upConnectors {
				if status := u.push(subs[c.name], tt.plaintext+" to "+c.name); status != 201 {
					t.Fatalf("push to %s: status %d, want 201", c.name, status)
				}
				u.waitDecrypted(c, tt.plaintext+" to "+c.name)
			}
		})
	}

	if status := u.push(subs[upConnectors[0].name], big+"z to "+upConnectors[0].name); status != 413 {
		t.Errorf("a push of 4097 bytes: status %d, want 413", status)
	}

	for _, c := range upConnectors {
		u.python("unregister", "--name", c.name, "--token", c.token, "--version", fmt.Sprint(c.version))
		testwait.For(t, c.name+" to be told it is unregistered", 60*time.Second, func() error {
			for _, r := range u.records(c, "unregistered.jsonl") {
				if r["token"] == c.token {
					return nil
				}
			}
			return errors.New("not yet")
		})
		if status := u.push(subs[c.name], "gone"); status != 404 && status != 410 {
			t.Errorf("push to %s after it unregistered: status %d, want 404 or 410", c.name, status)
		}
	}
}

// restartDistributor stops the running distributor and has the bus start
// it again, which hands every connector its endpoint again.
func (u *upSetup) restartDistributor() {
	u.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	conn, err := busclient.Dial(ctx, u.bus)
	if err != nil {
		u.t.Fatal(err)
	}
	defer conn.Close()
	const dbusName, dbusPath = "org.freedesktop.DBus", busclient.ObjectPath("/org/freedesktop/DBus")
	body, err := conn.Call(ctx, dbusName, dbusPath, dbusName, "GetConnectionUnixProcessID", upDistributorName)
	if err != nil {
		u.t.Fatalf("the distributor's process: %v", err)
	}
	endpoints := map[string]int{}
	for _, c := range upConnectors {
		endpoints[c.name] = len(u.records(c, "endpoints.jsonl"))
	}
	if err := syscall.Kill(int(body[0].(uint32)), syscall.SIGTERM); err != nil {
		u.t.Fatal(err)
	}
	testwait.For(u.t, "the distributor to leave the bus", 30*time.Second, func() error {
		body, err := conn.Call(ctx, dbusName, dbusPath, dbusName, "NameHasOwner", upDistributorName)
		if err != nil {
			return err
		}
		if body[0] == true {
			return errors.New("still there")
		}
		return nil
	})
	if _, err := conn.Call(ctx, dbusName, dbusPath, dbusName, "StartServiceByName", upDistributorName, uint32(0)); err != nil {
		u.t.Fatalf("start the distributor again: %v", err)
	}
	for _, c := range upConnectors {
		testwait.For(u.t, c.name+" to be handed its endpoint again", 60*time.Second, func() error {
			if n := len(u.records(c, "endpoints.jsonl")); n <= endpoints[c.name] {
				return fmt.Errorf("%d endpoints, as before", n)
			}
			return nil
		})
	}
}
