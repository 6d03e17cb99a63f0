// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"tether/internal/dbustest"
	"tether/internal/logtest"
	"tether/internal/testwait"
	"tether/ipc"
	"tether/ipc/dbusdoor"
	"tether/ipc/ipctest"
	"tether/ipc/socketdoor"
)

const app = "com.example.app"

// env is an agent socket served by the real door over an ipctest backend
// and, for tests of the D-Bus door, that door on a private bus over the same
// backend.
type env struct {
	t      *testing.T
	b      *ipctest.Backend
	srv    *socketdoor.Server
	socket string
	me     ipc.Caller
	// door is the door tetherctl uses: "socket", or "dbus" for --dbus bus.
	door    string
	bus     string
	dbusSrv *dbusdoor.Server
}

// doors are the values of env.door.
var doors = []string{"socket", "dbus"}

// newEnvOn returns an env whose tetherctl runs use the given door.
func newEnvOn(t *testing.T, door string) *env {
	t.Helper()
	e := newEnv(t)
	e.door = door
	if door == "dbus" {
		e.startDBus()
	}
	return e
}

func (e *env) startDBus() {
	e.t.Helper()
	e.bus = dbustest.Start(e.t).Address
	e.startDBusDoor()
}

// startDBusDoor starts the D-Bus door on the env's bus, as an agent
// (re)starting does.
func (e *env) startDBusDoor() {
	e.t.Helper()
	srv, err := dbusdoor.New(dbusdoor.Config{
		Bus:     e.bus,
		Backend: e.b,
		Logger:  slog.New(slog.NewTextHandler(e.t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ipctest.Serve(e.t, srv)
	e.dbusSrv = srv
}

// startSocketDoor starts the socket door on the env's socket, as an agent
// (re)starting does.
func (e *env) startSocketDoor() {
	e.t.Helper()
	srv, err := socketdoor.New(socketdoor.Config{
		Path:    e.socket,
		Backend: e.b,
		Logger:  slog.New(slog.NewTextHandler(e.t.Output(), &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		e.t.Fatal(err)
	}
	ipctest.Serve(e.t, srv)
	e.srv = srv
}

func newEnv(t *testing.T) *env {
	t.Helper()
	e := &env{
		t: t, b: ipctest.New("push.example.test:443", "device-7"), socket: filepath.Join(t.TempDir(), "tetherd.sock"),
		me: ipc.Caller{UID: uint32(os.Getuid())}, door: "socket",
	}
	e.startSocketDoor()
	return e
}

type result struct {
	code           int
	stdout, stderr string
}

// run runs tetherctl with TETHER_SOCKET pointing at the env's socket and,
// when the env's door is D-Bus, --dbus naming its bus.
func (e *env) run(ctx context.Context, args ...string) result {
	var stderr bytes.Buffer
	r := e.runTo(ctx, &stderr, args...)
	r.stderr = stderr.String()
	return r
}

// runTo is run with stderr going to a writer of the caller's.
func (e *env) runTo(ctx context.Context, stderr io.Writer, args ...string) result {
	if e.door == "dbus" {
		args = append([]string{"--dbus", e.bus}, args...)
	}
	var stdout bytes.Buffer
	getenv := func(key string) string {
		if key == "TETHER_SOCKET" {
			return e.socket
		}
		return ""
	}
	code := run(ctx, args, getenv, &stdout, stderr)
	return result{code: code, stdout: stdout.String()}
}

// start runs tetherctl in the background; wait returns its result.
func (e *env) start(ctx context.Context, args ...string) (wait func() result) {
	var stderr logtest.Buffer
	finish := e.startTo(ctx, &stderr, args...)
	return func() result {
		e.t.Helper()
		r := finish()
		r.stderr = stderr.String()
		return r
	}
}

// startTo is start with stderr going to a writer of the caller's.
func (e *env) startTo(ctx context.Context, stderr io.Writer, args ...string) (wait func() result) {
	done := make(chan result, 1)
	go func() { done <- e.runTo(ctx, stderr, args...) }()
	return func() result {
		e.t.Helper()
		select {
		case r := <-done:
			return r
		case <-time.After(60 * time.Second):
			e.t.Fatalf("tetherctl %q did not finish", args)
			return result{}
		}
	}
}

func (e *env) register(app, sender string) string {
	e.t.Helper()
	reg, err := e.b.Register(context.Background(), e.me, ipc.RegisterRequest{App: app, Sender: sender})
	token := reg.Token
	if err != nil {
		e.t.Fatal(err)
	}
	return token
}

func TestCommands(t *testing.T) {
	otherUID := uint32(os.Getuid()) + 1
	missing := filepath.Join(t.TempDir(), "missing.sock")
	tests := []struct {
		name       string
		setup      func(e *env)
		args       []string
		wantCode   int
		wantStdout string // exact, unless check is set
		wantStderr string // exact
		check      func(t *testing.T, e *env, r result)
	}{
		{
			name: "register prints the token",
			args: []string{"register", "--app", app, "--sender", "123"},
			check: func(t *testing.T, e *env, r result) {
				if want := e.register(app, "123") + "\n"; r.stdout != want {
					t.Errorf("stdout %q, want %q", r.stdout, want)
				}
			},
		},
		{
			name: "register --json after the command",
			args: []string{"register", "--app", app, "--sender", "123", "--json"},
			check: func(t *testing.T, e *env, r result) {
				if want := fmt.Sprintf(`{"token":%q}`+"\n", e.register(app, "123")); r.stdout != want {
					t.Errorf("stdout %q, want %q", r.stdout, want)
				}
			},
		},
		{
			name: "register with webpush prints the token and the endpoint",
			args: []string{"register", "--app", app, "--sender", "webpush", "--vapid", "BKey"},
			check: func(t *testing.T, e *env, r result) {
				token := e.register(app, "webpush")
				if want := token + "\nhttps://push.example.test:443/up/" + token + "\n"; r.stdout != want {
					t.Errorf("stdout %q, want %q", r.stdout, want)
				}
				if k := e.b.VAPID(app, "webpush"); k != "BKey" {
					t.Errorf("the agent got VAPID key %q", k)
				}
			},
		},
		{
			name: "register with webpush --json",
			args: []string{"register", "--app", app, "--sender", "webpush", "--json"},
			check: func(t *testing.T, e *env, r result) {
				token := e.register(app, "webpush")
				if want := fmt.Sprintf(`{"token":%q,"endpoint":"https://push.example.test:443/up/%s"}`+"\n", token, token); r.stdout != want {
					t.Errorf("stdout %q, want %q", r.stdout, want)
				}
			},
		},
		{
			name:       "global flags before the command override the environment",
			setup:      func(e *env) { e.register(app, "123") },
			args:       []string{"--json", "--socket", "SOCKET", "unregister", "--app", app, "--sender", "123"},
			wantStdout: "",
			check: func(t *testing.T, e *env, r result) {
				if err := e.b.Unregister(context.Background(), e.me, app, "123"); err == nil {
					t.Error("the registration is still there")
				}
			},
		},
		{
			name:       "socket flag after the command",
			args:       []string{"status", "--socket", missing},
			wantCode:   1,
			wantStderr: "tetherctl: status: cannot reach the agent: dial unix " + missing + ": connect: no such file or directory\n",
		},
		{
			name:       "backend error with its code",
			setup:      func(e *env) { e.b.SetOwner("com.other", otherUID) },
			args:       []string{"register", "--app", "com.other", "--sender", "1"},
			wantCode:   1,
			wantStderr: fmt.Sprintf("tetherctl: register: register for app \"com.other\": it belongs to uid %d, not %d: permission denied (PermissionDenied)\n", otherUID, os.Getuid()),
		},
		{
			name:       "unregister what is not registered",
			setup:      func(e *env) { e.register(app, "123") },
			args:       []string{"unregister", "--app", app, "--sender", "999"},
			wantCode:   1,
			wantStderr: "tetherctl: unregister: unregister app \"com.example.app\" from sender \"999\": not registered (NotRegistered)\n",
		},
		{
			name: "status",
			setup: func(e *env) {
				e.register(app, "123")
				e.b.Push(ipc.Message{ID: "m1", App: app})
			},
			args: []string{"status"},
			wantStdout: "connected:         yes\nserver:            push.example.test:443\ndevice id:         device-7\napps:              1\nqueued downstream: 1\npending upstream:  0\n" +
				"power mode:        mains\nheartbeat:         -\nnetwork:           -\nlearned:           -\nlast connect:      -\nlast disconnect:   -\nreconnects:        0\nheartbeats sent:   0\n",
		},
		{
			name:  "status --json",
			setup: func(e *env) { e.b.SetConnected(false) },
			args:  []string{"status", "--json"},
			check: func(t *testing.T, e *env, r result) {
				want, _ := e.b.Status(context.Background())
				var got ipc.Status
				if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got != want || !strings.HasSuffix(r.stdout, "}\n") {
					t.Errorf("stdout %q (%v), want %+v", r.stdout, err, want)
				}
			},
		},
		{
			name:       "send with every flag",
			setup:      func(e *env) { e.register(app, "123") },
			args:       []string{"send", "--app", app, "--to", "123", "--id", "m1", "--ttl", "60", "--priority", "high", "k=v", "text=a b=c", "empty="},
			wantStdout: "m1\n",
			check: func(t *testing.T, e *env, r result) {
				ttl := int64(60)
				want := []ipc.SendRequest{{App: app, To: "123", ID: "m1", TTL: &ttl, Priority: "high", Data: map[string]string{"k": "v", "text": "a b=c", "empty": ""}}}
				if got := e.b.Sends(app); !reflect.DeepEqual(got, want) {
					t.Errorf("backend got %+v, want %+v", got, want)
				}
			},
		},
		{
			name:  "send with flags after the data and data after --",
			setup: func(e *env) { e.register(app, "123") },
			args:  []string{"send", "--app", app, "k=v", "--to", "123", "--json", "--", "--ttl=5"},
			check: func(t *testing.T, e *env, r result) {
				sends := e.b.Sends(app)
				want := map[string]string{"k": "v", "--ttl": "5"}
				if len(sends) != 1 || !reflect.DeepEqual(sends[0].Data, want) || sends[0].TTL != nil {
					t.Fatalf("backend got %+v, want data %v and no ttl", sends, want)
				}
				if wantOut := fmt.Sprintf(`{"message_id":%q}`+"\n", sends[0].ID); r.stdout != wantOut {
					t.Errorf("stdout %q, want %q", r.stdout, wantOut)
				}
			},
		},
		{
			name: "send ttl 0 while offline",
			setup: func(e *env) {
				e.register(app, "123")
				e.b.SetConnected(false)
			},
			args:       []string{"send", "--app", app, "--to", "123", "--ttl", "0", "k=v"},
			wantCode:   1,
			wantStderr: "tetherctl: send: send for app \"com.example.app\" with ttl 0: not connected to the server (Offline)\n",
		},
		{name: "bad data pair", args: []string{"send", "--app", app, "--to", "1", "kv"}, wantCode: 2, wantStderr: "tetherctl: send: data must be KEY=VALUE, not \"kv\" (see tetherctl send --help)\n"},
		{name: "empty data key", args: []string{"send", "--app", app, "--to", "1", "=v"}, wantCode: 2, wantStderr: "tetherctl: send: data must be KEY=VALUE, not \"=v\" (see tetherctl send --help)\n"},
		{name: "duplicate data key", args: []string{"send", "--app", app, "--to", "1", "k=1", "k=2"}, wantCode: 2, wantStderr: "tetherctl: send: data key \"k\" given twice (see tetherctl send --help)\n"},
		{name: "bad priority", args: []string{"send", "--app", app, "--to", "1", "--priority", "urgent"}, wantCode: 2, wantStderr: "tetherctl: send: --priority must be normal or high, not \"urgent\" (see tetherctl send --help)\n"},
		{name: "bad ttl", args: []string{"send", "--app", app, "--to", "1", "--ttl", "1.5"}, wantCode: 2, wantStderr: "tetherctl: send: invalid value \"1.5\" for flag -ttl: \"1.5\" is not a whole number of seconds (see tetherctl send --help)\n"},
		{name: "missing --to", args: []string{"send", "--app", app, "k=v"}, wantCode: 2, wantStderr: "tetherctl: send: --to is required (see tetherctl send --help)\n"},
		{name: "missing --app", args: []string{"listen"}, wantCode: 2, wantStderr: "tetherctl: listen: --app is required (see tetherctl listen --help)\n"},
		{name: "--exec of nothing", args: []string{"listen", "--app", app, "--exec", "/nonexistent/handler"}, wantCode: 2, wantStderr: "tetherctl: listen: --exec: exec: \"/nonexistent/handler\": stat /nonexistent/handler: no such file or directory (see tetherctl listen --help)\n"},
		{name: "arguments without --exec", args: []string{"listen", "--app", app, "--", "x"}, wantCode: 2, wantStderr: "tetherctl: listen: unexpected argument \"x\" (arguments are for --exec's program) (see tetherctl listen --help)\n"},
		{name: "negative count", args: []string{"listen", "--app", app, "--count", "-1"}, wantCode: 2, wantStderr: "tetherctl: listen: --count must not be negative (see tetherctl listen --help)\n"},
		{name: "unknown flag", args: []string{"status", "--verbose"}, wantCode: 2, wantStderr: "tetherctl: status: flag provided but not defined: -verbose (see tetherctl status --help)\n"},
		{name: "stray argument", args: []string{"status", "now"}, wantCode: 2, wantStderr: "tetherctl: status: unexpected argument \"now\" (see tetherctl status --help)\n"},
		{name: "unknown command", args: []string{"frobnicate"}, wantCode: 2, wantStderr: "tetherctl: unknown command \"frobnicate\"\n\n" + usage},
		{name: "no command", args: []string{"--json"}, wantCode: 2, wantStderr: "tetherctl: no command\n\n" + usage},
		{name: "unknown global flag", args: []string{"--nope", "status"}, wantCode: 2, wantStderr: "tetherctl: flag provided but not defined: -nope\n\n" + usage},
		{name: "help", args: []string{"help"}, wantStdout: usage},
		{name: "-h", args: []string{"-h"}, wantStdout: usage},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t)
			if tt.setup != nil {
				tt.setup(e)
			}
			args := slices.Clone(tt.args)
			for i, a := range args {
				if a == "SOCKET" {
					args[i] = e.socket
					e.socket = missing // so only the flag can find the agent
				}
			}
			r := e.run(context.Background(), args...)
			if r.code != tt.wantCode {
				t.Errorf("exit status %d, want %d (stderr %q)", r.code, tt.wantCode, r.stderr)
			}
			if r.stderr != tt.wantStderr {
				t.Errorf("stderr %q, want %q", r.stderr, tt.wantStderr)
			}
			if tt.check != nil {
				tt.check(t, e, r)
			} else if r.stdout != tt.wantStdout {
				t.Errorf("stdout %q, want %q", r.stdout, tt.wantStdout)
			}
		})
	}
}

func TestUsageListsEveryCommand(t *testing.T) {
	for _, cmd := range commands {
		if !strings.Contains(usage, "\n  "+cmd.name+" ") {
			t.Errorf("usage does not list %s", cmd.name)
		}
	}
}

func TestSendWait(t *testing.T) {
	tests := []struct {
		name       string
		outcome    string
		wantCode   int
		wantStdout string
		wantStderr string
	}{
		{name: "sent", wantStdout: "sent m1\n"},
		{name: "failed", outcome: "ttl expired", wantCode: 1, wantStderr: "tetherctl: send: message m1: ttl expired (SendError)\n"},
	}
	for _, door := range doors {
		for _, tt := range tests {
			t.Run(door+"/"+tt.name, func(t *testing.T) {
				e := newEnvOn(t, door)
				e.register(app, "123")
				wait := e.start(context.Background(), "send", "--wait", "--app", app, "--to", "123", "--id", "m1", "k=v")
				testwait.Until(t, "the agent has the message", 10*time.Second, func() bool { return len(e.b.Sends(app)) == 1 })
				// Another upstream message's outcome is not the one waited for.
				if _, _, err := e.b.Send(context.Background(), e.me, ipc.SendRequest{App: app, To: "123", ID: "m0"}); err != nil {
					t.Fatal(err)
				}
				if err := e.b.Complete(app, "m0", "other"); err != nil {
					t.Fatal(err)
				}
				if err := e.b.Complete(app, "m1", tt.outcome); err != nil {
					t.Fatal(err)
				}
				r := wait()
				if r.code != tt.wantCode || r.stdout != tt.wantStdout || r.stderr != tt.wantStderr {
					t.Errorf("got %+v, want status %d, stdout %q, stderr %q", r, tt.wantCode, tt.wantStdout, tt.wantStderr)
				}
				if door == "dbus" {
					testwait.Until(t, "the waiting subscription ends", 10*time.Second, func() bool { return !e.b.Listening(app) })
				}
			})
		}
	}
}

func TestListenCount(t *testing.T) {
	for _, door := range doors {
		t.Run(door, func(t *testing.T) { testListenCount(t, newEnvOn(t, door)) })
	}
}

func testListenCount(t *testing.T, e *env) {
	e.register(app, "123")
	e.b.Push(ipc.Message{ID: "0:1%ab", App: app, From: "123", CollapseKey: "news", Data: map[string]string{"b": "two words", "a": "1"}})
	e.b.Push(ipc.Message{ID: "0:2%ab", App: app, From: "123"})
	e.b.Push(ipc.Message{ID: "0:3%ab", App: app, From: "123", Raw: []byte{0, 1, 2}})

	r := e.run(context.Background(), "listen", "--app", app, "--count", "2")
	want := "message 0:1%ab from 123 collapse_key=news data: a=1 b=\"two words\"\n" +
		"message 0:2%ab from 123 collapse_key=- data: -\n"
	if r.code != 0 || r.stdout != want || r.stderr != "" {
		t.Fatalf("got %+v, want status 0 and stdout %q", r, want)
	}
	// Both printed messages were acked before tetherctl exited; the third
	// stays for the next listener.
	if got := e.b.Acked(app); !reflect.DeepEqual(got, []string{"0:1%ab", "0:2%ab"}) {
		t.Errorf("acked %q, want the two printed messages", got)
	}
	r = e.run(context.Background(), "listen", "--app", app, "--count", "1")
	if want := "message 0:3%ab from 123 collapse_key=- data: - raw=3 bytes\n"; r.stdout != want {
		t.Errorf("next listen printed %q, want %q", r.stdout, want)
	}
}

func TestListenJSONWithEvents(t *testing.T) {
	for _, door := range doors {
		t.Run(door, func(t *testing.T) { testListenJSONWithEvents(t, newEnvOn(t, door)) })
	}
}

func testListenJSONWithEvents(t *testing.T, e *env) {
	e.register(app, "123")
	wait := e.start(context.Background(), "--json", "listen", "--app", app, "--count", "2")
	sent := time.Date(2025, 5, 6, 7, 8, 9, 0, time.UTC)
	e.b.Push(ipc.Message{ID: "m1", App: app, From: "123", CollapseKey: "ck", Data: map[string]string{"k": "v"}, Priority: "high", TTL: 60, SentTime: sent})
	testwait.Until(t, "m1 is acked", 10*time.Second, func() bool { return len(e.b.Acked(app)) == 1 })
	for _, id := range []string{"up1", "up2"} {
		if _, _, err := e.b.Send(context.Background(), e.me, ipc.SendRequest{App: app, To: "123", ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	e.b.Complete(app, "up1", "")
	e.b.Complete(app, "up2", "rejected")
	e.b.DeleteMessages(app, 4)
	e.b.RefreshToken(app, "123", "token-new")
	e.b.Push(ipc.Message{ID: "m2", App: app, From: "123", Data: map[string]string{}, Notification: map[string]string{"title": "t"}, Topic: "alerts"})

	r := wait()
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("got %+v, want status 0", r)
	}
	var got []map[string]any
	dec := json.NewDecoder(strings.NewReader(r.stdout))
	for {
		var line map[string]any
		if err := dec.Decode(&line); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("stdout %q: %v", r.stdout, err)
		}
		got = append(got, line)
	}
	want := []map[string]any{
		{"event": "message", "message_id": "m1", "app": app, "from": "123", "collapse_key": "ck", "data": map[string]any{"k": "v"}, "priority": "high", "ttl": 60.0, "sent_time": "2025-05-06T07:08:09Z"},
		{"event": "sent", "app": app, "message_id": "up1"},
		{"event": "send_error", "app": app, "message_id": "up2", "error": "rejected"},
		{"event": "deleted_messages", "app": app, "count": 4.0},
		{"event": "token_refreshed", "app": app, "sender": "123", "token": "token-new"},
		{"event": "message", "message_id": "m2", "app": app, "from": "123", "collapse_key": "", "data": map[string]any{}, "ttl": 0.0, "notification": map[string]any{"title": "t"}, "topic": "alerts"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("printed\n%v\nwant\n%v", got, want)
	}
	if acked := e.b.Acked(app); !reflect.DeepEqual(acked, []string{"m1", "m2"}) {
		t.Errorf("acked %q, want m1 and m2", acked)
	}
}

func TestListenEnds(t *testing.T) {
	tests := []struct {
		name       string
		door       string // only this door; "" for both
		once       bool   // listen --once
		end        func(e *env, cancel context.CancelFunc)
		wantCode   int
		wantStderr string
	}{
		{
			// On D-Bus, by a listener on the socket: the doors share one
			// listener per app.
			name: "replaced",
			end: func(e *env, _ context.CancelFunc) {
				conn, err := net.Dial("unix", e.socket)
				if err != nil {
					e.t.Fatal(err)
				}
				e.t.Cleanup(func() { conn.Close() })
				fmt.Fprintf(conn, `{"op":"listen","app":%q}`+"\n", app)
			},
			wantCode:   1,
			wantStderr: "tetherctl: listen: app \"com.example.app\": another listener took over\n",
		},
		{
			name:       "agent goes away with --once",
			door:       "socket",
			once:       true,
			end:        func(e *env, _ context.CancelFunc) { e.srv.Close() },
			wantCode:   1,
			wantStderr: "tetherctl: listen: disconnected from the agent: it closed the connection\n",
		},
		{
			name:       "agent goes away with --once",
			door:       "dbus",
			once:       true,
			end:        func(e *env, _ context.CancelFunc) { e.dbusSrv.Close() },
			wantCode:   1,
			wantStderr: "tetherctl: listen: disconnected from the agent: it left the bus\n",
		},
		{
			name: "subscriber replaced by another on the bus",
			door: "dbus",
			end: func(e *env, _ context.CancelFunc) {
				conn, err := dbus.Connect(e.bus)
				if err != nil {
					e.t.Fatal(err)
				}
				e.t.Cleanup(func() { conn.Close() })
				if err := conn.Object(ipc.DBusName, ipc.DBusPath).Call(ipc.DBusInterface+".Subscribe", 0, app).Err; err != nil {
					e.t.Fatal(err)
				}
			},
			wantCode:   1,
			wantStderr: "tetherctl: listen: app \"com.example.app\": another listener took over\n",
		},
		{
			name: "interrupted",
			end:  func(e *env, cancel context.CancelFunc) { cancel() },
		},
	}
	for _, door := range doors {
		for _, tt := range tests {
			if tt.door != "" && tt.door != door {
				continue
			}
			t.Run(door+"/"+tt.name, func(t *testing.T) {
				e := newEnvOn(t, door)
				e.register(app, "123")
				ctx, cancel := context.WithCancel(context.Background())
				defer cancel()
				args := []string{"listen", "--app", app}
				if tt.once {
					args = append(args, "--once")
				}
				wait := e.start(ctx, args...)
				testwait.Until(t, "tetherctl listens", 10*time.Second, func() bool { return e.b.Listening(app) })
				tt.end(e, cancel)
				if r := wait(); r.code != tt.wantCode || r.stderr != tt.wantStderr || r.stdout != "" {
					t.Errorf("got %+v, want status %d and stderr %q", r, tt.wantCode, tt.wantStderr)
				}
			})
		}
	}
}

func TestTopics(t *testing.T) {
	for _, door := range doors {
		t.Run(door, func(t *testing.T) {
			e := newEnvOn(t, door)
			e.register(app, "123")
			for _, step := range []struct {
				args []string
				want []string
			}{
				{[]string{"subscribe", "--app", app, "--sender", "123", "--topic", "alerts"}, []string{"alerts"}},
				{[]string{"subscribe", "--app", app, "--sender", "123", "--topic", "news"}, []string{"alerts", "news"}},
				{[]string{"unsubscribe", "--app", app, "--sender", "123", "--topic", "alerts"}, []string{"news"}},
			} {
				if r := e.run(context.Background(), step.args...); r.code != 0 || r.stdout != "" || r.stderr != "" {
					t.Fatalf("%q: got %+v, want status 0 and no output", step.args, r)
				}
				if got := e.b.Topics(app, "123"); !reflect.DeepEqual(got, step.want) {
					t.Fatalf("after %q the topics are %q, want %q", step.args, got, step.want)
				}
			}
			r := e.run(context.Background(), "subscribe", "--app", app, "--sender", "999", "--topic", "t")
			if want := `tetherctl: subscribe: subscribe app "com.example.app" sender "999": not registered (NotRegistered)` + "\n"; r.code != 1 || r.stderr != want {
				t.Errorf("got %+v, want status 1 and stderr %q", r, want)
			}
			r = e.run(context.Background(), "unsubscribe", "--app", app, "--sender", "123")
			if want := "tetherctl: unsubscribe: --topic is required (see tetherctl unsubscribe --help)\n"; r.code != 2 || r.stderr != want {
				t.Errorf("got %+v, want status 2 and stderr %q", r, want)
			}
		})
	}
}

// TestDBus runs the commands on the bus, with what differs from the socket:
// the D-Bus error names, and how a bus or an agent that cannot be reached
// is reported.
func TestDBus(t *testing.T) {
	otherUID := uint32(os.Getuid()) + 1
	missing := "unix:path=" + filepath.Join(t.TempDir(), "missing")
	tests := []struct {
		name       string
		setup      func(e *env)
		args       []string
		wantCode   int
		wantStdout string // exact, unless check is set
		wantStderr string // exact, unless stderrPrefix is set
		// stderrPrefix: stderr starts with wantStderr, and then has the
		// system's words.
		stderrPrefix bool
		check        func(t *testing.T, e *env, r result)
	}{
		{
			name: "register prints the token",
			args: []string{"register", "--app", app, "--sender", "123"},
			check: func(t *testing.T, e *env, r result) {
				if want := e.register(app, "123") + "\n"; r.stdout != want {
					t.Errorf("stdout %q, want %q", r.stdout, want)
				}
			},
		},
		{
			name: "register --json",
			args: []string{"register", "--json", "--app", app, "--sender", "123"},
			check: func(t *testing.T, e *env, r result) {
				if want := fmt.Sprintf(`{"token":%q}`+"\n", e.register(app, "123")); r.stdout != want {
					t.Errorf("stdout %q, want %q", r.stdout, want)
				}
			},
		},
		{
			name:  "unregister",
			setup: func(e *env) { e.register(app, "123") },
			args:  []string{"unregister", "--app", app, "--sender", "123"},
			check: func(t *testing.T, e *env, r result) {
				if err := e.b.Unregister(context.Background(), e.me, app, "123"); err == nil {
					t.Error("the registration is still there")
				}
			},
		},
		{
			name:       "permission denied",
			setup:      func(e *env) { e.b.SetOwner("com.other", otherUID) },
			args:       []string{"register", "--app", "com.other", "--sender", "1"},
			wantCode:   1,
			wantStderr: fmt.Sprintf("tetherctl: register: register for app \"com.other\": it belongs to uid %d, not %d: permission denied (PermissionDenied)\n", otherUID, os.Getuid()),
		},
		{
			name:       "unknown app",
			args:       []string{"listen", "--app", "com.nobody"},
			wantCode:   1,
			wantStderr: "tetherctl: listen: listen for app \"com.nobody\": unknown app (NotRegistered)\n",
		},
		{
			name: "status",
			setup: func(e *env) {
				e.register(app, "123")
				e.b.Push(ipc.Message{ID: "m1", App: app})
			},
			args: []string{"status"},
			wantStdout: "connected:         yes\nserver:            push.example.test:443\ndevice id:         device-7\napps:              1\nqueued downstream: 1\npending upstream:  0\n" +
				"power mode:        mains\nheartbeat:         -\nnetwork:           -\nlearned:           -\nlast connect:      -\nlast disconnect:   -\nreconnects:        0\nheartbeats sent:   0\n",
		},
		{
			name: "status --json",
			setup: func(e *env) {
				e.b.SetConnected(false)
				e.b.SetPowerMode("low")
			},
			args: []string{"status", "--json"},
			check: func(t *testing.T, e *env, r result) {
				want, _ := e.b.Status(context.Background())
				var got ipc.Status
				if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || got != want {
					t.Errorf("stdout %q (%v), want %+v", r.stdout, err, want)
				}
			},
		},
		{
			name:       "send with every flag",
			setup:      func(e *env) { e.register(app, "123") },
			args:       []string{"send", "--app", app, "--to", "123", "--id", "m1", "--ttl", "60", "--priority", "high", "k=v", "text=a b=c", "empty="},
			wantStdout: "m1\n",
			check: func(t *testing.T, e *env, r result) {
				ttl := int64(60)
				want := []ipc.SendRequest{{App: app, To: "123", ID: "m1", TTL: &ttl, Priority: "high", Data: map[string]string{"k": "v", "text": "a b=c", "empty": ""}}}
				if got := e.b.Sends(app); !reflect.DeepEqual(got, want) || r.stdout != "m1\n" {
					t.Errorf("stdout %q, backend got %+v, want %+v", r.stdout, got, want)
				}
			},
		},
		{
			name:       "send with a negative ttl",
			setup:      func(e *env) { e.register(app, "123") },
			args:       []string{"send", "--app", app, "--to", "123", "--ttl", "-5"},
			wantCode:   1,
			wantStderr: "tetherctl: send: send for app \"com.example.app\": option \"ttl\" is -5; it must not be negative: invalid argument (InvalidArgument)\n",
		},
		{
			name: "send ttl 0 while offline",
			setup: func(e *env) {
				e.register(app, "123")
				e.b.SetConnected(false)
			},
			args:       []string{"send", "--app", app, "--to", "123", "--ttl", "0", "k=v"},
			wantCode:   1,
			wantStderr: "tetherctl: send: send for app \"com.example.app\" with ttl 0: not connected to the server (Unavailable)\n",
		},
		{
			name:       "bad --dbus",
			args:       []string{"--dbus", "sytem", "status"},
			wantCode:   2,
			wantStderr: "tetherctl: status: --dbus: bus \"sytem\" is not system, session or a D-Bus address such as unix:path=/run/dbus/system_bus_socket (see tetherctl status --help)\n",
		},
		{
			name:         "no bus",
			args:         []string{"--dbus", missing, "status"},
			wantCode:     1,
			wantStderr:   "tetherctl: status: cannot reach the agent: the bus at " + missing + ": dial unix ",
			stderrPrefix: true,
		},
		{
			name:       "no agent on the bus",
			setup:      func(e *env) { e.dbusSrv.Close() },
			args:       []string{"register", "--app", app, "--sender", "1"},
			wantCode:   1,
			wantStderr: "tetherctl: register: cannot reach the agent on the bus: The name org.tether.Push was not provided by any .service files\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnvOn(t, "dbus")
			if tt.setup != nil {
				tt.setup(e)
			}
			r := e.run(context.Background(), tt.args...)
			if r.code != tt.wantCode {
				t.Errorf("exit status %d, want %d (stderr %q)", r.code, tt.wantCode, r.stderr)
			}
			if r.stderr != tt.wantStderr && !(tt.stderrPrefix && strings.HasPrefix(r.stderr, tt.wantStderr)) {
				t.Errorf("stderr %q, want %q", r.stderr, tt.wantStderr)
			}
			if tt.check != nil {
				tt.check(t, e, r)
			} else if r.stdout != tt.wantStdout {
				t.Errorf("stdout %q, want %q", r.stdout, tt.wantStdout)
			}
		})
	}
}
