// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"tether/agent"
	"tether/internal/testpki"
	"tether/ipc"
	"tether/wire"
)

const (
	waitLimit    = 15 * time.Second
	deviceSecret = "device-secret-that-must-not-be-logged"
)

// TestMain lets the test binary act as tetherd, so that the tests below
// run it as a real process.
func TestMain(m *testing.M) {
	if os.Getenv("TETHERD_TEST_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func noEnv(string) string { return "" }

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no server", []string{}, "no server"},
		{"no server with run", []string{"run"}, "no server"},
		{"unknown flag", []string{"--server", "ws://h", "--bogus"}, "not defined"},
		{"bad scheme", []string{"--server", "ftp://h"}, "scheme"},
		{"bad socket mode", []string{"--server", "ws://h", "--socket-mode", "rwx"}, "octal"},
		{"bad heartbeat", []string{"--server", "ws://h", "--heartbeat", "10ms"}, "at least 1s"},
		{"bad log level", []string{"--server", "ws://h", "--log-level", "loud"}, "log-level"},
		{"bad dbus", []string{"--server", "ws://h", "--dbus", "maybe"}, "bus address"},
		{"bad app", []string{"--server", "ws://h", "--app", "com.example"}, "APP=USER"},
		{"pin without TLS", []string{"--server", "ws://h", "--server-pin", "sha256//" + strings.Repeat("A", 43) + "="}, "wss://"},
		{"stray argument", []string{"run", "--server", "ws://h", "extra"}, "unexpected argument"},
		{"enroll key twice", []string{"--server", "ws://h", "--enroll-key", "k", "--enroll-key-file", "f"}, "not both"},
		{"config without check", []string{"config"}, "config check"},
		{"install with a bad flag", []string{"install", "--init", "systemd", "--heartbeat", "1ms"}, "at least 1s"},
		{"install with a bad init", []string{"install", "--init", "upstart"}, "want systemd"},
		{"stray argument to stop", []string{"stop", "now"}, "unexpected argument"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			args := tt.args
			if len(args) == 0 || args[0] == "run" || strings.HasPrefix(args[0], "-") {
				args = append(append([]string(nil), args...), "--config=")
			}
			if code := run(context.Background(), args, environ{stdout: io.Discard, stderr: &stderr, getenv: noEnv}); code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("stderr does not say %q:\n%s", tt.want, stderr.String())
			}
		})
	}
}

func TestParseDefaults(t *testing.T) {
	o, err := parseArgs([]string{"--config=", "--server", "wss://push.example", "--socket-mode", "0660"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.data != "/var/lib/tether" || o.socket != "/run/tether/tetherd.sock" || o.socketMode != 0o660 || o.heartbeat != 0 || o.policy != agent.DefaultHeartbeatPolicy ||
		o.dbus != "system" || o.sysfsRoot != "/sys" || o.apps != nil {
		t.Errorf("options %+v", o)
	}
}

// closePeer is a connection server that checks the device in and reports
// the close code the agent ends the connection with.
func closePeer(t *testing.T) (url string, connected chan struct{}, closed chan int) {
	connected, closed = make(chan struct{}, 4), make(chan int, 4)
	up := websocket.Upgrader{Subprotocols: []string{wire.Subprotocol}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ws, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer ws.Close()
		_, data, err := ws.ReadMessage()
		if err != nil {
			return
		}
		var hello wire.Hello
		if f, err := wire.Decode(data); err != nil || f.Decode(&hello) != nil {
			return
		}
		welcome, _ := wire.Encode("", wire.Welcome{Version: wire.Version, DeviceID: "d1", DeviceSecret: deviceSecret, Heartbeat: 600})
		if ws.WriteMessage(websocket.TextMessage, welcome) != nil {
			return
		}
		if hello.Probe {
			// The agent's heartbeat probes: not the session under test.
			for {
				if _, _, err := ws.ReadMessage(); err != nil {
					return
				}
			}
		}
		connected <- struct{}{}
		for {
			if _, _, err := ws.ReadMessage(); err != nil {
				var ce *websocket.CloseError
				if errors.As(err, &ce) {
					closed <- ce.Code
				} else {
					closed <- -1
				}
				return
			}
		}
	}))
	t.Cleanup(srv.Close)
	return srv.URL, connected, closed
}

// agentProc is this test binary run as tetherd.
type agentProc struct {
	t      *testing.T
	cmd    *exec.Cmd
	logs   chan string
	logged strings.Builder
}

func startAgentProc(t *testing.T, env []string, args ...string) *agentProc {
	t.Helper()
	cmd := exec.Command(os.Args[0], append(args, "--config=")...)
	cmd.Env = append(append(os.Environ(), "TETHERD_TEST_MAIN=1"), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	p := &agentProc{t: t, cmd: cmd, logs: make(chan string, 1024)}
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.logs <- sc.Text()
		}
		close(p.logs)
	}()
	return p
}

func (p *agentProc) waitLog(what string) string {
	p.t.Helper()
	timeout := time.After(waitLimit)
	for {
		select {
		case line, ok := <-p.logs:
			if !ok {
				p.t.Fatalf("tetherd exited before logging %q:\n%s", what, p.logged.String())
			}
			p.logged.WriteString(line + "\n")
			if strings.Contains(line, what) {
				return line
			}
		case <-timeout:
			p.t.Fatalf("tetherd did not log %q:\n%s", what, p.logged.String())
		}
	}
}

// stop sends SIGTERM and waits for a clean exit.
func (p *agentProc) stop() {
	p.t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	for line := range p.logs { // drain, so that Wait can finish reading stderr
		p.logged.WriteString(line + "\n")
	}
	if err := p.cmd.Wait(); err != nil {
		p.t.Fatalf("tetherd after SIGTERM: %v\n%s", err, p.logged.String())
	}
}

// notifySocket is systemd's end of $NOTIFY_SOCKET.
func notifySocket(t *testing.T) (path string, next func() string) {
	path = filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return path, func() string {
		t.Helper()
		buf := make([]byte, 4096)
		conn.SetReadDeadline(time.Now().Add(waitLimit))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}
}

func TestRunServesAndStops(t *testing.T) {
	url, connected, closed := closePeer(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "tetherd.sock")
	notifyPath, nextNotify := notifySocket(t)
	// The watchdog interval is short so that a ping comes soon; the test
	// waits for one, it does not time it.
	p := startAgentProc(t, []string{"NOTIFY_SOCKET=" + notifyPath, "WATCHDOG_USEC=400000"},
		"run", "--server", url, "--data", filepath.Join(dir, "data"), "--socket", sock, "--log-level", "debug")
	p.waitLog("msg=ready")

	// Ready comes once the socket listens.
	if got := nextNotify(); !strings.HasPrefix(got, "READY=1\n") {
		t.Fatalf("first notification %q, want READY=1", got)
	}
	if _, err := os.Stat(sock); err != nil {
		t.Errorf("ready, but the socket is not there: %v", err)
	}
	select {
	case <-connected:
	case <-time.After(waitLimit):
		t.Fatal("tetherd did not connect to the server")
	}
	p.waitLog("msg=connected")
	if got := nextNotify(); got != "WATCHDOG=1" {
		t.Errorf("notification %q, want a watchdog ping", got)
	}

	// An app on the socket sees the agent connected.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(waitLimit))
	if _, err := conn.Write([]byte(`{"id":1,"op":"status"}` + "\n")); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(conn).ReadBytes('\n')
	if err != nil {
		t.Fatal(err)
	}
	var resp ipc.Response
	if err := json.Unmarshal(line, &resp); err != nil || !resp.OK || resp.Status == nil || !resp.Status.Connected || resp.Status.DeviceID != "d1" {
		t.Fatalf("status answer %s (%v)", line, err)
	}

	if fi, err := os.Stat(filepath.Join(dir, "data", "agent.db")); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("store file: %v, %v", fi.Mode(), err)
	}

	p.stop()
	select {
	case code := <-closed:
		if code != websocket.CloseGoingAway {
			t.Errorf("connection closed with %d, want a close frame %d", code, websocket.CloseGoingAway)
		}
	case <-time.After(waitLimit):
		t.Fatal("the server connection was not closed")
	}
	for {
		got := nextNotify()
		if got == "STOPPING=1" {
			break
		}
		if got != "WATCHDOG=1" {
			t.Fatalf("notification %q, want STOPPING=1", got)
		}
	}
	if strings.Contains(p.logged.String(), deviceSecret) {
		t.Errorf("the device secret is in the log:\n%s", p.logged.String())
	}
}

// TestJournalLogging runs tetherd with its stderr as the journal stream:
// lines carry their priority and no time of their own.
func TestJournalLogging(t *testing.T) {
	url, connected, _ := closePeer(t)
	dir := t.TempDir()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(w.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "run", "--config=", "--server", url, "--data", filepath.Join(dir, "data"), "--socket", filepath.Join(dir, "s.sock"))
	cmd.Env = append(os.Environ(), "TETHERD_TEST_MAIN=1", fmt.Sprintf("JOURNAL_STREAM=%d:%d", st.Dev, st.Ino))
	cmd.Stderr = w
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	w.Close()
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	select {
	case <-connected:
	case <-time.After(waitLimit):
		t.Fatal("tetherd did not connect to the server")
	}
	cmd.Process.Signal(syscall.SIGTERM)
	out, _ := io.ReadAll(r)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tetherd: %v\n%s", err, out)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	for _, l := range lines {
		if !strings.HasPrefix(l, "<6>level=INFO ") && !strings.HasPrefix(l, "<4>level=WARN ") {
			t.Errorf("line without its journal priority: %q", l)
		}
		if strings.Contains(l, "time=") {
			t.Errorf("line with a time of its own: %q", l)
		}
	}
	if !strings.Contains(string(out), "<6>level=INFO msg=ready") {
		t.Errorf("no ready line in:\n%s", out)
	}
}

// tlsServer listens for TLS on loopback with a certificate of a test CA,
// asking clients for what clientAuth says, and calls serve with each
// connection, which it closes then.
func tlsServer(t *testing.T, clientAuth tls.ClientAuthType, serve func(*tls.Conn)) (net.Listener, testpki.Files, tls.Certificate) {
	t.Helper()
	files, err := testpki.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(files.Cert, files.Key)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}, ClientAuth: clientAuth})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			serve(c.(*tls.Conn))
			c.Close()
		}
	}()
	return ln, files, cert
}

// clientConfig is the TLS configuration tetherd makes of args, for a
// server on 127.0.0.1.
func clientConfig(t *testing.T, args ...string) *tls.Config {
	t.Helper()
	o, err := parseArgs(append([]string{"--config=", "--server", "wss://127.0.0.1"}, args...), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := prepare(o)
	if err != nil {
		t.Fatal(err)
	}
	cfg.ServerName = "127.0.0.1"
	return cfg
}

// TestServerPin connects to a TLS server with pins: the right key passes,
// any other fails the handshake.
func TestServerPin(t *testing.T) {
	ln, files, cert := tlsServer(t, tls.NoClientCert, func(c *tls.Conn) { c.Handshake() })
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(leaf.RawSubjectPublicKeyInfo)
	right := "sha256//" + base64.StdEncoding.EncodeToString(sum[:])
	wrong := "sha256//" + base64.StdEncoding.EncodeToString(make([]byte, 32))
	tests := []struct {
		pins []string
		ok   bool
	}{
		{[]string{right}, true},
		{[]string{wrong, right}, true},
		{[]string{wrong}, false},
		{nil, true},
	}
	for _, tt := range tests {
		args := []string{"--ca-file", files.CA}
		for _, p := range tt.pins {
			args = append(args, "--server-pin", p)
		}
		c, err := tls.Dial("tcp", ln.Addr().String(), clientConfig(t, args...))
		if err == nil {
			c.Close()
		}
		if (err == nil) != tt.ok {
			t.Errorf("pins %v: handshake error %v, want ok=%v", tt.pins, err, tt.ok)
		}
	}
}

func TestVersion(t *testing.T) {
	for _, arg := range []string{"version", "--version"} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{arg}, environ{stdout: &stdout, stderr: &stderr, getenv: noEnv}); code != 0 {
			t.Fatalf("tetherd %s exited %d: %s", arg, code, stderr.String())
		}
		if got := stdout.String(); got != "tetherd "+version+"\n" {
			t.Errorf("tetherd %s printed %q", arg, got)
		}
	}
}
