// SPDX-License-Identifier: Apache-2.0

package main

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// TestServeNotifiesSystemdAndHealthcheck runs serve as systemd runs a
// Type=notify unit, with $NOTIFY_SOCKET, and probes it with the
// healthcheck command a container runs: READY=1 names the bound address,
// healthcheck passes there and fails where nothing healthy answers, and
// SIGTERM sends STOPPING=1.
func TestServeNotifiesSystemdAndHealthcheck(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "notify")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	next := func() string {
		t.Helper()
		buf := make([]byte, 4096)
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		n, err := conn.Read(buf)
		if err != nil {
			t.Fatalf("no notification: %v", err)
		}
		return string(buf[:n])
	}

	srv := command("serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "data"), "--open-enrollment")
	srv.Env = append(srv.Env, "NOTIFY_SOCKET="+sock)
	srv.Stderr = io.Discard
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer srv.Process.Kill()

	ready := next()
	addr, ok := strings.CutPrefix(ready, "READY=1\nSTATUS=listening on ")
	if !ok {
		t.Fatalf("first notification %q, want READY=1 with the address", ready)
	}

	notFound := httptest.NewServer(http.NotFoundHandler())
	defer notFound.Close()
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closedURL := "http://" + closed.Addr().String() + "/healthz"
	closed.Close()
	for _, tc := range []struct {
		name string
		args []string
		code int
	}{
		{"serving", []string{"--url", "http://" + addr + "/healthz"}, 0},
		{"no server", []string{"--url", closedURL, "--timeout", "30s"}, 1},
		{"not found", []string{"--url", notFound.URL + "/healthz"}, 1},
		{"bad url", []string{"--url", "http://[::1"}, 2},
		{"empty url", []string{"--url", ""}, 2},
		{"zero timeout", []string{"--timeout", "0s"}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, stdout, stderr := runCmd(t, append([]string{"healthcheck"}, tc.args...)...)
			if code != tc.code {
				t.Fatalf("exit %d, want %d; stdout %q, stderr %q", code, tc.code, stdout, stderr)
			}
			if (code == 0) != (stdout == "ok\n") || (code != 0 && stderr == "") {
				t.Errorf("exit %d with stdout %q, stderr %q", code, stdout, stderr)
			}
		})
	}

	srv.Process.Signal(syscall.SIGTERM)
	if got := next(); got != "STOPPING=1" {
		t.Errorf("notification after SIGTERM %q, want STOPPING=1", got)
	}
	if err := srv.Wait(); err != nil {
		t.Errorf("serve exited with %v", err)
	}
}
