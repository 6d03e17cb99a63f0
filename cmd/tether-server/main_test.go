// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	natsgo "github.com/nats-io/nats.go"

	"tether/internal/natstest"
	"tether/server/natsstore"
	"tether/server/store"
	"tether/wire"
)

// TestMain lets the test binary act as tether-server, so that tests can
// run the real command as a separate process.
func TestMain(m *testing.M) {
	if os.Getenv("TETHER_SERVER_TEST_MAIN") == "1" {
		main()
	}
	os.Exit(m.Run())
}

func command(args ...string) *exec.Cmd {
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "TETHER_SERVER_TEST_MAIN=1")
	return cmd
}

// startCommand starts the command as a process, killed when the test
// ends if it still runs, and returns it with its stderr.
func startCommand(t *testing.T, args ...string) (*exec.Cmd, io.Reader) {
	t.Helper()
	cmd := command(args...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	return cmd, stderr
}

// runCmd runs the command in this process.
func runCmd(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errOut bytes.Buffer
	code = run(context.Background(), args, &out, &errOut)
	return code, out.String(), errOut.String()
}

func TestUsage(t *testing.T) {
	dir := t.TempDir()
	for _, args := range [][]string{
		{},
		{"frobnicate"},
		{"sender"},
		{"sender", "add", "--data", dir},
		{"sender", "add", "--name", "x"},
		{"sender", "remove", "--data", dir},
		{"sender", "list", "--data", dir, "extra"},
		{"sender", "list", "--bogus"},
		{"serve"},
		{"serve", "--data", dir, "--log-level", "loud"},
		{"serve", "--data", dir, "--tls-cert", "c.pem"},
		{"serve", "--data", dir, "--enroll-key", "a", "--enroll-key-file", "f"},
		{"serve", "--data", dir, "--device-rate-limit", "-1"},
		{"serve", "--data", dir, "--topic-rate-limit", "often"},
		{"serve", "--data", dir, "--max-store-size", "-5"},
		{"serve", "--data", dir, "--battery-max-delay", "0"},
		{"serve", "--data", dir, "--battery-max-delay", "25h"},
		{"serve", "--data", dir, "--store-retry-after", "-1s"},
		{"serve", "--data", dir, "--store-retry-after", "soon"},
		{"serve", "--data", dir, "--shutdown-spread", "-1s"},
		{"serve", "--data", dir, "--reconnect-limit", "-1"},
		{"serve", "--data", dir, "--checkin-limit", "-1"},
		{"serve", "--data", dir, "--conns-per-ip", "-1"},
		{"serve", "--data", dir, "--sessions-per-ip", "-1"},
		{"serve", "--data", dir, "--trusted-proxy", "10.0.0.0/33"},
		{"serve", "--data", dir, "--trusted-proxy", "proxy.example"},
		{"serve", "--data", dir, "--enroll-failure-limit", "-2"},
		{"serve", "--data", dir, "--max-heartbeat", "10s"},
		{"serve", "--data", dir, "--max-heartbeat", "25h"},
		{"serve", "--data", dir, "--device-expiry", "-1h"},
		{"serve", "--data", dir, "--device-ca", "ca.pem"},
		{"serve", "--data", dir, "--acme-domain", "push.example.com", "--tls-cert", "c.pem", "--tls-key", "k.pem"},
		{"serve", "--data", dir, "--acme-email", "ops@example.com"},
		{"serve", "--data", dir, "--acme-domain", "localhost"},
		{"serve", "--data", dir, "--acme-domain", "push.example.com:443"},
		{"serve", "--data", dir, "--log-format", "xml"},
		{"serve", "--data", dir, "--config", filepath.Join(dir, "none.toml")},
		{"config"},
		{"enroll"},
		{"enroll", "create"},
		{"enroll", "create", "--data", dir, "--uses", "0"},
		{"enroll", "create", "--data", dir, "--expires", "-1h"},
		{"enroll", "revoke", "--data", dir},
		{"device", "show", "--data", dir},
		{"device", "revoke", "--data", dir},
		{"device", "remove", "--id", "x"},
		{"device", "list", "--data", dir, "--nats", "nats://127.0.0.1:1"},
		{"serve", "--data", dir, "--upstream-rate-limit", "-1"},
		{"token"},
		{"token", "rotate", "--data", dir},
		{"token", "rotate", "--token", "t"},
		{"token", "rotate", "--data", dir, "--token", "t", "--grace", "soon"},
		{"token", "rotate", "--data", dir, "--nats", "nats://127.0.0.1:1", "--token", "t"},
		{"sender", "list", "--nats", "nats://127.0.0.1:1", "--data", dir},
		{"serve", "--data", dir, "--public-url", "ftp://a.example"},
		{"serve", "--data", dir, "--shards", "4"},
		{"serve", "--data", dir, "--nats", "nats://127.0.0.1:1", "--max-store-size", "1000"},
		{"serve", "--data", dir, "--nats", "nats://127.0.0.1:1", "--public-url", "ftp://a.example"},
		{"serve", "--data", dir, "--nats", "nats://127.0.0.1:1", "--shards", "300"},
		{"migrate", "--data", dir},
		{"migrate", "--nats", "nats://127.0.0.1:1"},
	} {
		if code, _, stderr := runCmd(t, args...); code != 2 || stderr == "" {
			t.Errorf("%q: exit %d, stderr %q; want 2 with a message", args, code, stderr)
		}
	}
	if code, stdout, _ := runCmd(t, "help"); code != 0 || !strings.Contains(stdout, "sender add") {
		t.Errorf("help: %d %q", code, stdout)
	}
}

// targets are the two places admin commands work without a running
// server: a data directory, and a cluster's NATS servers.
func targets(t *testing.T) []struct {
	name string
	args func() []string
} {
	nats := natstest.Start(t, natstest.Config{Servers: 1})
	return []struct {
		name string
		args func() []string
	}{
		{"data", func() []string { return []string{"--data", filepath.Join(t.TempDir(), "data")} }},
		{"nats", func() []string {
			return []string{"--nats", nats.URL(), "--nats-prefix", fmt.Sprintf("cmd%d", prefixes.Add(1))}
		}},
	}
}

var prefixes atomic.Int64

func TestSenderCommandsWithoutServer(t *testing.T) {
	for _, tgt := range targets(t) {
		t.Run(tgt.name, func(t *testing.T) { testSenderCommands(t, tgt.args()) })
	}
}

// testSenderCommands manages senders where at says, with no server
// running there.
func testSenderCommands(t *testing.T, at []string) {
	cmd := func(args ...string) (int, string, string) {
		t.Helper()
		return runCmd(t, append(args, at...)...)
	}
	if at[0] == "--data" {
		if code, _, stderr := cmd("sender", "list"); code != 1 || !strings.HasPrefix(stderr, "tether-server: ") {
			t.Errorf("list without a store: %d %q", code, stderr)
		}
	}
	code, stdout, stderr := cmd("sender", "add", "--name", "thermo", "--webhook", "https://b.example/up", "--json")
	if code != 0 {
		t.Fatalf("add: %d %s", code, stderr)
	}
	var snd map[string]string
	if err := json.Unmarshal([]byte(stdout), &snd); err != nil {
		t.Fatalf("add --json printed %q: %v", stdout, err)
	}
	if len(snd) != 3 || !regexp.MustCompile(`^[1-9]\d{11}$`).MatchString(snd["sender_id"]) || len(snd["server_key"]) < 40 || !strings.HasPrefix(snd["webhook_secret"], "whsec_") {
		t.Fatalf("add --json printed %v", snd)
	}
	code, stdout, _ = cmd("sender", "add", "--name", "plain")
	if code != 0 || !regexp.MustCompile(`(?m)^sender_id +\d{12}\nserver_key +\S{40,}$`).MatchString(stdout) {
		t.Errorf("add: %d %q", code, stdout)
	}

	code, stdout, _ = cmd("sender", "list", "--json")
	var list []map[string]any
	if err := json.Unmarshal([]byte(stdout), &list); code != 0 || err != nil || len(list) != 2 {
		t.Fatalf("list --json: %d %q %v", code, stdout, err)
	}
	code, stdout, _ = cmd("sender", "list")
	if code != 0 || !strings.Contains(stdout, snd["sender_id"]) || !strings.Contains(stdout, "https://b.example/up") || strings.Contains(stdout, snd["server_key"]) {
		t.Errorf("list: %d %q", code, stdout)
	}
	code, stdout, _ = cmd("sender", "rotate-key", "--id", snd["sender_id"], "--grace", "1h", "--json")
	var rotated map[string]any
	if err := json.Unmarshal([]byte(stdout), &rotated); code != 0 || err != nil || rotated["server_key"] == snd["server_key"] || rotated["old_key_until"] == nil {
		t.Errorf("rotate-key --json: %d %q %v", code, stdout, err)
	}
	testWebhookCommands(t, cmd, snd["sender_id"], snd["webhook_secret"])
	testServiceAccountCommands(t, cmd, snd["sender_id"])
	if code, _, _ := cmd("sender", "remove", "--id", snd["sender_id"]); code != 0 {
		t.Errorf("remove: %d", code)
	}
	if code, _, stderr := cmd("sender", "remove", "--id", snd["sender_id"]); code != 1 || !strings.Contains(stderr, "no such sender") {
		t.Errorf("second remove: %d %q", code, stderr)
	}
	if code, _, stderr := cmd("sender", "add", "--name", "x", "--webhook", "not a url"); code != 1 || stderr == "" {
		t.Errorf("bad webhook: %d %q", code, stderr)
	}
}

// TestServeProcess runs tether-server serve as a real process, manages
// senders through its admin socket and stops it with SIGTERM.
func TestServeProcess(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	keyFile := filepath.Join(t.TempDir(), "enroll")
	if err := os.WriteFile(keyFile, []byte("enrol-key-of-the-serve-process-test\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, stderr := startCommand(t, "serve", "--listen", "127.0.0.1:0", "--data", dir, "--enroll-key-file", keyFile, "--log-level", "debug",
		"--battery-max-delay", "5m", "--store-retry-after", "1m", "--shutdown-spread", "0", "--reconnect-limit", "0")
	lines := bufio.NewScanner(stderr)
	addr := ""
	for addr == "" && lines.Scan() {
		if m := regexp.MustCompile(`msg=listening addr=(\S+)`).FindStringSubmatch(lines.Text()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		t.Fatal("no listening line")
	}
	logs := make(chan string, 1)
	go func() {
		rest, _ := io.ReadAll(stderr)
		logs <- string(rest)
	}()

	resp, err := http.Get("http://" + addr + "/healthz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("healthz %d", resp.StatusCode)
	}

	out, err := command("sender", "add", "--data", dir, "--name", "live", "--json").Output()
	if err != nil {
		t.Fatalf("sender add while serving: %v", err)
	}
	var snd struct {
		SenderID  string `json:"sender_id"`
		ServerKey string `json:"server_key"`
	}
	if err := json.Unmarshal(out, &snd); err != nil || snd.ServerKey == "" {
		t.Fatalf("sender add printed %q: %v", out, err)
	}
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/gcm/send", strings.NewReader(`{"to": "nobody"}`))
	req.Header.Set("Authorization", "key="+snd.ServerKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), "InvalidRegistration") {
		t.Errorf("send with the new key: %d %s", resp.StatusCode, body)
	}
	if out, err := command("sender", "list", "--data", dir).Output(); err != nil || !strings.Contains(string(out), snd.SenderID) {
		t.Errorf("sender list while serving: %v %q", err, out)
	}
	if err := command("sender", "remove", "--data", dir, "--id", snd.SenderID).Run(); err != nil {
		t.Errorf("sender remove while serving: %v", err)
	}

	// A second server on the same directory fails at once.
	second := command("serve", "--listen", "127.0.0.1:0", "--data", dir)
	var secondErr bytes.Buffer
	second.Stderr = &secondErr
	if err := second.Run(); second.ProcessState.ExitCode() != 1 || !strings.Contains(secondErr.String(), "in use") {
		t.Errorf("second server: %v %q", err, secondErr.String())
	}

	// A device session, told on shutdown to come back at once
	// (--shutdown-spread 0).
	dialer := websocket.Dialer{Subprotocols: []string{wire.Subprotocol}, HandshakeTimeout: 5 * time.Second}
	conn, _, err := dialer.Dial("ws://"+addr+wire.Path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	hello, _ := wire.Encode("", wire.Hello{Version: 1, EnrollKey: "enrol-key-of-the-serve-process-test", Mode: wire.ModeBattery})
	conn.WriteMessage(websocket.TextMessage, hello)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, data, err := conn.ReadMessage(); err != nil || !strings.Contains(string(data), `"welcome"`) {
		t.Fatalf("hello answered %q, %v", data, err)
	}

	// Devices are managed while the server runs: a revoked device's live
	// session ends at once.
	doomed, _, err := dialer.Dial("ws://"+addr+wire.Path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer doomed.Close()
	hello, _ = wire.Encode("", wire.Hello{Version: 1, EnrollKey: "enrol-key-of-the-serve-process-test", Agent: "doomed/1"})
	doomed.WriteMessage(websocket.TextMessage, hello)
	doomed.SetReadDeadline(time.Now().Add(10 * time.Second))
	var w wire.Welcome
	if _, data, err := doomed.ReadMessage(); err != nil || json.Unmarshal(data, &struct {
		Body *wire.Welcome `json:"body"`
	}{&w}) != nil || w.DeviceID == "" {
		t.Fatalf("hello answered %q, %v", data, err)
	}
	out, err = command("device", "list", "--data", dir, "--json").Output()
	if err != nil || !strings.Contains(string(out), `"agent":"doomed/1"`) || !strings.Contains(string(out), `"power_mode":"battery"`) {
		t.Errorf("device list while serving: %v %s", err, out)
	}
	if out, err := command("device", "revoke", "--data", dir, "--id", w.DeviceID).CombinedOutput(); err != nil {
		t.Fatalf("device revoke while serving: %v %s", err, out)
	}
	if _, data, err := doomed.ReadMessage(); err != nil || !strings.Contains(string(data), wire.CodeRevoked) {
		t.Errorf("revoked session read %q, %v; want a revoked error", data, err)
	}
	if _, _, err := doomed.ReadMessage(); !websocket.IsCloseError(err, websocket.ClosePolicyViolation) {
		t.Errorf("revoked session ended with %v, want close 1008", err)
	}

	srv.Process.Signal(syscall.SIGTERM)
	_, data, err := conn.ReadMessage()
	var g wire.GoAway
	if f, ferr := wire.Decode(data); err != nil || ferr != nil || f.Decode(&g) != nil || g.RetryAfter != 0 {
		t.Errorf("on shutdown the device read %q, %v; want a goaway with retry_after 0", data, err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve exited with %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop on SIGTERM")
	}
	rest := <-logs
	if strings.Contains(rest, snd.ServerKey) || strings.Contains(rest, "enrol-key-of-the-serve-process-test") {
		t.Error("a secret is in the server's log")
	}
	if _, err := os.Stat(filepath.Join(dir, "admin.sock")); !os.IsNotExist(err) {
		t.Errorf("admin socket left behind: %v", err)
	}
}

func TestTokenRotateCommand(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if code, _, stderr := runCmd(t, "sender", "add", "--data", dir, "--name", "x"); code != 0 {
		t.Fatalf("sender add: %s", stderr)
	}
	st, err := store.Open(filepath.Join(dir, "server.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	senders, err := st.Senders(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	reg, err := st.Register(context.Background(), "device-1", "com.example.app", senders[0].ID, "", time.Now())
	st.Close()
	if err != nil {
		t.Fatal(err)
	}

	code, stdout, stderr := runCmd(t, "token", "rotate", "--data", dir, "--token", reg.Token, "--grace", "2h", "--json")
	var rotated struct {
		Token      string    `json:"token"`
		GraceUntil time.Time `json:"grace_until"`
	}
	if err := json.Unmarshal([]byte(stdout), &rotated); code != 0 || err != nil || rotated.Token == "" || rotated.Token == reg.Token {
		t.Fatalf("token rotate --json: %d %q %q %v", code, stdout, stderr, err)
	}
	if left := time.Until(rotated.GraceUntil); left < 119*time.Minute || left > 2*time.Hour {
		t.Errorf("grace until %v, want in 2 h", rotated.GraceUntil)
	}
	if !strings.Contains(stderr, "when it next connects") {
		t.Errorf("without a server, stderr %q does not say when the device learns it", stderr)
	}
	if code, _, stderr := runCmd(t, "token", "rotate", "--data", dir, "--token", reg.Token); code != 1 || !strings.Contains(stderr, "no active registration") {
		t.Errorf("rotating the old token again: %d %q", code, stderr)
	}

	// The token from standard input, so that it stays out of ps.
	cmd := command("token", "rotate", "--data", dir, "--token", "-")
	cmd.Stdin = strings.NewReader(rotated.Token + "\n")
	out, err := cmd.Output()
	if err != nil || !regexp.MustCompile(`(?m)^token +\S{64}\ngrace_until +\d{4}-`).Match(out) {
		t.Errorf("token rotate --token -: %v %q", err, out)
	}
}

// TestTokenRotateOnCluster: a token rotated in a cluster's state, with no
// node running, answers as on a data directory and says the device is told
// at once by whichever node holds its session.
func TestTokenRotateOnCluster(t *testing.T) {
	nats := natstest.Start(t, natstest.Config{Servers: 1})
	prefix := fmt.Sprintf("cmd%d", prefixes.Add(1))
	at := []string{"--nats", nats.URL(), "--nats-prefix", prefix}
	if code, _, stderr := runCmd(t, append([]string{"sender", "add", "--name", "x"}, at...)...); code != 0 {
		t.Fatalf("sender add: %s", stderr)
	}
	nc, err := natsgo.Connect(nats.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	st, err := natsstore.Open(context.Background(), natsstore.Config{Conn: nc, Prefix: prefix})
	if err != nil {
		t.Fatal(err)
	}
	senders, err := st.Senders(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	dev, err := st.AddDevice(context.Background(), store.Device{SecretHash: []byte("secret hash"), Created: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := st.Register(context.Background(), dev.ID, "com.example.app", senders[0].ID, "", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	code, stdout, stderr := runCmd(t, append([]string{"token", "rotate", "--token", reg.Token, "--json"}, at...)...)
	var rotated struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal([]byte(stdout), &rotated); code != 0 || err != nil || rotated.Token == "" || rotated.Token == reg.Token {
		t.Fatalf("token rotate --json: %d %q %q %v", code, stdout, stderr, err)
	}
	if strings.Contains(stderr, "when it next connects") {
		t.Errorf("on a cluster, stderr %q says the device learns it later", stderr)
	}
	if code, _, stderr := runCmd(t, append([]string{"xmpp", "drain"}, at...)...); code != 2 || stderr == "" {
		t.Errorf("xmpp drain on a cluster: %d %q; want a usage error", code, stderr)
	}
}
