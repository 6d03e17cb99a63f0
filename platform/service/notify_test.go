// SPDX-License-Identifier: Apache-2.0

package service

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// listenNotify is systemd's end of the notify socket.
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func readNotify(t *testing.T, conn *net.UnixConn) string {
	t.Helper()
	buf := make([]byte, 4096)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := conn.Read(buf)
	if err != nil {
		t.Fatalf("no notification: %v", err)
	}
	return string(buf[:n])
}

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestNotifierSendsStates(t *testing.T) {
	for _, name := range []string{
		filepath.Join(t.TempDir(), "notify"),
		"@tether-notify-test-" + strconv.Itoa(os.Getpid()), // abstract, as systemd uses
	} {
		t.Run(name[:1], func(t *testing.T) {
			conn := listenNotify(t, name)
			n, err := NewNotifier(env(map[string]string{"NOTIFY_SOCKET": name}), os.Getpid())
			if err != nil || n == nil {
				t.Fatalf("NewNotifier: %v, %v", n, err)
			}
			if err := n.Ready("serving"); err != nil {
				t.Fatal(err)
			}
			if got := readNotify(t, conn); got != "READY=1\nSTATUS=serving" {
				t.Errorf("ready sent %q", got)
			}
			if err := n.Stopping(); err != nil {
				t.Fatal(err)
			}
			if got := readNotify(t, conn); got != "STOPPING=1" {
				t.Errorf("stopping sent %q", got)
			}
		})
	}
}

func TestNotifierOutsideSystemd(t *testing.T) {
	n, err := NewNotifier(env(nil), os.Getpid())
	if err != nil || n != nil {
		t.Fatalf("NewNotifier without NOTIFY_SOCKET = %v, %v; want nil, nil", n, err)
	}
	if err := n.Ready(""); err != nil {
		t.Errorf("nil Notifier's Ready: %v", err)
	}
	if n.WatchdogInterval() != 0 {
		t.Error("nil Notifier has a watchdog")
	}
	n.Watchdog(context.Background(), nil, nil) // returns at once
}

func TestNewNotifierEnvironment(t *testing.T) {
	pid := os.Getpid()
	tests := []struct {
		name     string
		env      map[string]string
		watchdog time.Duration
		err      string
	}{
		{"watchdog", map[string]string{"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "30000000"}, 30 * time.Second, ""},
		{"watchdog for us", map[string]string{"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": strconv.Itoa(pid)}, time.Second, ""},
		{"watchdog for another process", map[string]string{"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, 0, ""},
		{"no watchdog", map[string]string{"NOTIFY_SOCKET": "@n"}, 0, ""},
		{"relative socket", map[string]string{"NOTIFY_SOCKET": "run/n"}, 0, "neither a path"},
		{"bad usec", map[string]string{"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "soon"}, 0, "WATCHDOG_USEC"},
		{"zero usec", map[string]string{"NOTIFY_SOCKET": "/run/n", "WATCHDOG_USEC": "0"}, 0, "WATCHDOG_USEC"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n, err := NewNotifier(env(tt.env), pid)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one saying %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := n.WatchdogInterval(); got != tt.watchdog {
				t.Errorf("watchdog %v, want %v", got, tt.watchdog)
			}
		})
	}
}

func TestWatchdogPingsOnlyWhenHealthy(t *testing.T) {
	name := filepath.Join(t.TempDir(), "notify")
	conn := listenNotify(t, name)
	n, err := NewNotifier(env(map[string]string{"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "40000"}), os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	checks := make(chan chan error)
	reports := make(chan error, 10)
	done := make(chan struct{})
	go func() {
		defer close(done)
		n.Watchdog(ctx, func(context.Context) error {
			answer := make(chan error)
			checks <- answer
			return <-answer
		}, func(err error) { reports <- err })
	}()

	// A sick daemon gets no ping, and the report says why.
	(<-checks) <- errors.New("store stuck")
	select {
	case err := <-reports:
		if !strings.Contains(err.Error(), "store stuck") {
			t.Errorf("report %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("an unhealthy check was not reported")
	}
	// A healthy one pings.
	(<-checks) <- nil
	if got := readNotify(t, conn); got != "WATCHDOG=1" {
		t.Errorf("ping %q", got)
	}
	// The failed check sent nothing: the only datagram was the ping.
	conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	if _, err := conn.Read(make([]byte, 64)); err == nil {
		t.Error("a second datagram arrived")
	}
	cancel()
	select {
	case answer := <-checks: // a tick raced the cancel
		answer <- nil
	case <-done:
	}
	<-done
}
