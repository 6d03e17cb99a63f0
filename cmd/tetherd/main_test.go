package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
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

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"no server", []string{}, "--server is required"},
		{"no server with run", []string{"run"}, "--server is required"},
		{"unknown flag", []string{"--server", "ws://h", "--bogus"}, "not defined"},
		{"bad scheme", []string{"--server", "ftp://h"}, "scheme"},
		{"bad socket mode", []string{"--server", "ws://h", "--socket-mode", "rwx"}, "octal"},
		{"bad heartbeat", []string{"--server", "ws://h", "--heartbeat", "10ms"}, "at least 1s"},
		{"bad log level", []string{"--server", "ws://h", "--log-level", "loud"}, "log-level"},
		{"stray argument", []string{"run", "--server", "ws://h", "extra"}, "unexpected argument"},
		{"enroll key twice", []string{"--server", "ws://h", "--enroll-key", "k", "--enroll-key-file", "f"}, "not both"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			if code := run(context.Background(), tt.args, io.Discard, &stderr); code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			if !strings.Contains(stderr.String(), tt.want) || !strings.Contains(stderr.String(), "usage:") {
				t.Errorf("stderr does not say %q with the usage:\n%s", tt.want, stderr.String())
			}
		})
	}
}

func TestParseDefaults(t *testing.T) {
	o, err := parseArgs([]string{"--server", "wss://push.example", "--socket-mode", "0660"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.data != "/var/lib/tether" || o.socket != "/run/tether/tetherd.sock" || o.socketMode != 0o660 || o.heartbeat != 4*time.Minute {
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
		if _, _, err := ws.ReadMessage(); err != nil {
			return
		}
		welcome, _ := wire.Encode("", wire.Welcome{Version: wire.Version, DeviceID: "d1", DeviceSecret: deviceSecret, Heartbeat: 600})
		if ws.WriteMessage(websocket.TextMessage, welcome) != nil {
			return
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

func TestRunServesAndStops(t *testing.T) {
	url, connected, closed := closePeer(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "tetherd.sock")
	cmd := exec.Command(os.Args[0], "run", "--server", url, "--data", filepath.Join(dir, "data"),
		"--socket", sock, "--log-level", "debug")
	cmd.Env = append(os.Environ(), "TETHERD_TEST_MAIN=1")
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	logs := make(chan string, 1024)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			logs <- sc.Text()
		}
		close(logs)
	}()
	var logged strings.Builder
	waitLog := func(what string) {
		t.Helper()
		timeout := time.After(waitLimit)
		for {
			select {
			case line, ok := <-logs:
				if !ok {
					t.Fatalf("tetherd exited before logging %q:\n%s", what, logged.String())
				}
				logged.WriteString(line + "\n")
				if strings.Contains(line, what) {
					return
				}
			case <-timeout:
				t.Fatalf("tetherd did not log %q:\n%s", what, logged.String())
			}
		}
	}
	waitLog("msg=ready")
	select {
	case <-connected:
	case <-time.After(waitLimit):
		t.Fatal("tetherd did not connect to the server")
	}
	waitLog("msg=connected")

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
	if strings.Contains(logged.String(), deviceSecret) {
		t.Errorf("the device secret is in the log:\n%s", logged.String())
	}

	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case code := <-closed:
		if code != websocket.CloseGoingAway {
			t.Errorf("connection closed with %d, want a close frame %d", code, websocket.CloseGoingAway)
		}
	case <-time.After(waitLimit):
		t.Fatal("the server connection was not closed")
	}
	for line := range logs { // drain, so that Wait can finish reading stderr
		t.Log(line)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tetherd after SIGTERM: %v", err)
	}
}

func TestVersion(t *testing.T) {
	for _, arg := range []string{"version", "--version"} {
		var stdout, stderr bytes.Buffer
		if code := run(context.Background(), []string{arg}, &stdout, &stderr); code != 0 {
			t.Fatalf("tetherd %s exited %d: %s", arg, code, stderr.String())
		}
		if got := stdout.String(); got != "tetherd "+version+"\n" {
			t.Errorf("tetherd %s printed %q", arg, got)
		}
	}
}
