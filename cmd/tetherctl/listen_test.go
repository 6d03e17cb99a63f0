// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"tether/internal/logtest"
	"tether/internal/testwait"
	"tether/ipc"
)

// TestListenAgainAfterTheAgentRestarts stops the agent's door under a
// listening tetherctl three times, with a message acked before each stop
// and one stored while the door is down: tetherctl listens again each
// time, and prints every message once.
func TestListenAgainAfterTheAgentRestarts(t *testing.T) {
	for _, door := range doors {
		t.Run(door, func(t *testing.T) {
			e := newEnvOn(t, door)
			e.register(app, "123")
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			wait := e.start(ctx, "--json", "listen", "--app", app)
			var want []string
			for round := range 3 {
				id := fmt.Sprintf("before-%d", round)
				e.b.Push(ipc.Message{ID: id, App: app, From: "123"})
				want = append(want, id)
				testwait.Until(t, id+" is acked", 20*time.Second, func() bool { return slices.Contains(e.b.Acked(app), id) })
				e.stopDoor()
				id = fmt.Sprintf("while-down-%d", round)
				e.b.Push(ipc.Message{ID: id, App: app, From: "123"})
				want = append(want, id)
				e.startDoor()
				testwait.Until(t, id+" is acked", 20*time.Second, func() bool { return slices.Contains(e.b.Acked(app), id) })
			}
			cancel()
			r := wait()
			if r.code != 0 {
				t.Fatalf("got %+v, want status 0", r)
			}
			var got []string
			for line := range strings.Lines(r.stdout) {
				var m struct {
					ID string `json:"message_id"`
				}
				if err := json.Unmarshal([]byte(line), &m); err != nil {
					t.Fatalf("line %q: %v", line, err)
				}
				got = append(got, m.ID)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("printed %q, want %q", got, want)
			}
			if n := strings.Count(r.stderr, "listening again for app"); n != 3 {
				t.Errorf("stderr tells of %d listens again, want 3:\n%s", n, r.stderr)
			}
		})
	}
}

// stopDoor stops the door tetherctl uses, as the agent stopping does.
func (e *env) stopDoor() {
	if e.door == "dbus" {
		e.dbusSrv.Close()
	} else {
		e.srv.Close()
	}
}

// startDoor starts the door tetherctl uses again, over the same backend.
func (e *env) startDoor() {
	if e.door == "dbus" {
		e.startDBusDoor()
	} else {
		e.startSocketDoor()
	}
}

// TestListenWaitsForTheAgent starts listen before the agent's socket is
// there.
func TestListenWaitsForTheAgent(t *testing.T) {
	e := newEnv(t)
	e.register(app, "123")
	e.b.Push(ipc.Message{ID: "m1", App: app, From: "123"})
	e.srv.Close()
	stderr := &logtest.Buffer{}
	wait := e.startTo(context.Background(), stderr, "listen", "--app", app, "--count", "1")
	testwait.Until(t, "tetherctl to find no agent", 20*time.Second, func() bool {
		return strings.Contains(stderr.String(), "cannot reach the agent: dial unix "+e.socket)
	})
	e.startSocketDoor()
	if r, want := wait(), "message m1 from 123 collapse_key=- data: -\n"; r.code != 0 || r.stdout != want {
		t.Errorf("got %+v, want status 0 and stdout %q", r, want)
	}
}

// TestExec runs a program that fails twice, then succeeds: it gets the
// message three times, on stdin and in its environment, and the agent
// sees a single ack, after the third run.
func TestExec(t *testing.T) {
	for _, door := range doors {
		t.Run(door, func(t *testing.T) {
			e := newEnvOn(t, door)
			e.register(app, "123")
			dir := t.TempDir()
			script := filepath.Join(dir, "handler.sh")
			writeScript(t, script, `
n=$(cat "$DIR/count" 2>/dev/null || echo 0)
n=$((n + 1))
echo $n > "$DIR/count"
cat > "$DIR/stdin-$n"
env | grep '^TETHER_' | sort > "$DIR/env-$n"
echo "run $n of $1"
[ $n -ge 3 ] || exit 3
`)
			t.Setenv("DIR", dir)
			t.Setenv("TETHER_DATA_STALE", "from another message")
			e.b.Push(ipc.Message{ID: "0:1%ab", App: app, From: "123", CollapseKey: "ck", TTL: 3600, Data: map[string]string{"temp": "21", "set-point": "19.5"}})
			r := e.run(context.Background(), "listen", "--app", app, "--count", "1", "--exec", script, "--", "arg one")
			if r.code != 0 {
				t.Fatalf("got %+v, want status 0", r)
			}
			if want := "run 1 of arg one\nrun 2 of arg one\nrun 3 of arg one\n"; r.stdout != want {
				t.Errorf("stdout %q, want %q", r.stdout, want)
			}
			failure := regexp.MustCompile(`^tetherctl: listen: ` + regexp.QuoteMeta(script) + ` for message 0:1%ab: exit status 3; trying again in [0-9.]+m?s$`)
			lines := strings.Split(strings.TrimSuffix(r.stderr, "\n"), "\n")
			if len(lines) != 2 || !failure.MatchString(lines[0]) || !failure.MatchString(lines[1]) {
				t.Errorf("stderr %q, want two lines matching %s", r.stderr, failure)
			}
			if got := e.b.Acked(app); !reflect.DeepEqual(got, []string{"0:1%ab"}) || e.b.AckCalls(app) != 1 {
				t.Errorf("acked %q in %d calls, want the message once", got, e.b.AckCalls(app))
			}
			wantEnv := "TETHER_COLLAPSE_KEY=ck\nTETHER_DATA_SET_POINT=19.5\nTETHER_DATA_TEMP=21\nTETHER_FROM=123\nTETHER_MESSAGE_ID=0:1%ab\n"
			for n := 1; n <= 3; n++ {
				env, _ := os.ReadFile(filepath.Join(dir, fmt.Sprint("env-", n)))
				if string(env) != wantEnv {
					t.Errorf("run %d had the environment\n%s\nwant\n%s", n, env, wantEnv)
				}
				stdin, _ := os.ReadFile(filepath.Join(dir, fmt.Sprint("stdin-", n)))
				var m ipc.Message
				if err := json.Unmarshal(stdin, &m); err != nil || m.ID != "0:1%ab" || m.Data["set-point"] != "19.5" {
					t.Errorf("run %d had the stdin %q (%v), want the message", n, stdin, err)
				}
			}
		})
	}
}

// TestExecGivesUpWhenTheTTLRunsOut: a message whose time to live runs out
// before the program succeeds is not acked (the agent drops it) and the
// next message is handled.
func TestExecGivesUpWhenTheTTLRunsOut(t *testing.T) {
	e := newEnv(t)
	e.register(app, "123")
	script := filepath.Join(t.TempDir(), "handler.sh")
	writeScript(t, script, `[ "$TETHER_MESSAGE_ID" = good ] || exit 7`)
	e.b.Push(ipc.Message{ID: "bad", App: app, From: "123", TTL: 0})
	e.b.Push(ipc.Message{ID: "good", App: app, From: "123", TTL: 60})
	r := e.run(context.Background(), "listen", "--app", app, "--count", "1", "--exec", script)
	if r.code != 0 {
		t.Fatalf("got %+v, want status 0", r)
	}
	if want := "tetherctl: listen: " + script + " for message bad: exit status 7; gave up after try 1: its time to live runs out\n"; r.stderr != want {
		t.Errorf("stderr %q, want %q", r.stderr, want)
	}
	if got := e.b.Acked(app); !reflect.DeepEqual(got, []string{"good"}) {
		t.Errorf("acked %q, want good alone", got)
	}
}

func writeScript(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
}

func TestExecEnv(t *testing.T) {
	base := []string{"PATH=/bin", "TETHER_SOCKET=/s", "TETHER_MESSAGE_ID=old", "TETHER_DATA_OLD=x", "TETHER_DATAX=kept"}
	tests := []struct {
		name string
		m    ipc.Message
		want []string // after base's PATH, TETHER_SOCKET and TETHER_DATAX
	}{
		{
			name: "fields, and nothing of another message",
			m:    ipc.Message{ID: "0:1%ab", From: "123"},
			want: []string{"TETHER_MESSAGE_ID=0:1%ab", "TETHER_FROM=123", "TETHER_COLLAPSE_KEY="},
		},
		{
			name: "keys upper-cased, other characters made _",
			m:    ipc.Message{ID: "m", From: "1", CollapseKey: "ck", Data: map[string]string{"temp": "21", "Set-Point.2": "19", "émoji✓": "y", "": "empty"}},
			want: []string{
				"TETHER_MESSAGE_ID=m", "TETHER_FROM=1", "TETHER_COLLAPSE_KEY=ck",
				"TETHER_DATA_=empty", "TETHER_DATA_SET_POINT_2=19", "TETHER_DATA_TEMP=21", "TETHER_DATA__MOJI_=y",
			},
		},
		{
			name: "keys that meet on one name: the first in byte order has it",
			m:    ipc.Message{ID: "m", From: "1", Data: map[string]string{"a-b": "dash", "a.b": "dot", "A_B": "upper", "a_b": "lower"}},
			want: []string{"TETHER_MESSAGE_ID=m", "TETHER_FROM=1", "TETHER_COLLAPSE_KEY=", "TETHER_DATA_A_B=upper"},
		},
		{
			name: "values with a NUL byte are left out",
			m:    ipc.Message{ID: "m", From: "1", Data: map[string]string{"bin": "a\x00b", "ok": "v"}},
			want: []string{"TETHER_MESSAGE_ID=m", "TETHER_FROM=1", "TETHER_COLLAPSE_KEY=", "TETHER_DATA_OK=v"},
		},
		{
			name: "values may hold = and newlines",
			m:    ipc.Message{ID: "m", From: "1", Data: map[string]string{"expr": "a=b\nc"}},
			want: []string{"TETHER_MESSAGE_ID=m", "TETHER_FROM=1", "TETHER_COLLAPSE_KEY=", "TETHER_DATA_EXPR=a=b\nc"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := append([]string{"PATH=/bin", "TETHER_SOCKET=/s", "TETHER_DATAX=kept"}, tt.want...)
			if got := execEnv(base, tt.m); !reflect.DeepEqual(got, want) {
				t.Errorf("execEnv = %q, want %q", got, want)
			}
		})
	}
}

// FuzzExecEnv: whatever the message, the program's environment has names
// of A-Z, 0-9 and _, each once, and no NUL byte.
func FuzzExecEnv(f *testing.F) {
	f.Add("0:1%ab", "123", "ck", "temp", "21", "Temp", "22")
	f.Add("m\x00", "", "", "a-b", "x\x00", "a.b", "y")
	f.Add("", "", "", "", "", "é", "=")
	name := regexp.MustCompile(`^[A-Z0-9_]+$`)
	f.Fuzz(func(t *testing.T, id, from, ck, k1, v1, k2, v2 string) {
		env := execEnv(nil, ipc.Message{ID: id, From: from, CollapseKey: ck, Data: map[string]string{k1: v1, k2: v2}})
		seen := map[string]bool{}
		for _, kv := range env {
			n, _, ok := strings.Cut(kv, "=")
			if !ok || !name.MatchString(n) || seen[n] || strings.ContainsRune(kv, 0) {
				t.Fatalf("bad variable %q in %q", kv, env)
			}
			seen[n] = true
		}
		if !strings.ContainsRune(id, 0) && !seen[envMessageID] {
			t.Fatalf("no %s in %q", envMessageID, env)
		}
	})
}

// TestTimeout: an agent that takes the connection and never answers.
func TestTimeout(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "mute.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	e := &env{t: t, socket: socket, door: "socket"}
	for _, args := range [][]string{
		{"status"},
		{"register", "--app", app, "--sender", "1"},
		{"send", "--app", app, "--to", "1", "--wait", "k=v"},
		{"listen", "--once", "--app", app},
	} {
		r := e.run(context.Background(), append([]string{"--timeout", "50ms"}, args...)...)
		want := fmt.Sprintf("tetherctl: %s: the agent did not answer within 50ms\n", args[0])
		if r.code != 1 || r.stderr != want {
			t.Errorf("%q: got %+v, want status 1 and stderr %q", args, r, want)
		}
	}
	if r := e.run(context.Background(), "status", "--timeout", "-1s"); r.code != 2 {
		t.Errorf("a negative timeout: got %+v, want status 2", r)
	}
}

// TestCommandHelp: every command's --help names what it does and each of
// its flags, and the global ones.
func TestCommandHelp(t *testing.T) {
	tests := []struct {
		cmd   string
		flags []string
	}{
		{"register", []string{"--app APP", "--sender SENDER"}},
		{"unregister", []string{"--app APP", "--sender SENDER"}},
		{"subscribe", []string{"--app APP", "--sender SENDER", "--topic TOPIC"}},
		{"unsubscribe", []string{"--app APP", "--sender SENDER", "--topic TOPIC"}},
		{"listen", []string{"--app APP", "--count N", "--once ", "--exec PROGRAM"}},
		{"send", []string{"--app APP", "--to SENDER", "--id ID", "--ttl SECONDS", "--priority normal", "--wait "}},
		{"status", nil},
		{"up-distributor", []string{"--bus ADDRESS", "--state FILE"}},
	}
	e := newEnv(t)
	for _, tt := range tests {
		t.Run(tt.cmd, func(t *testing.T) {
			i := slices.IndexFunc(commands, func(c command) bool { return c.name == tt.cmd })
			for _, flagArg := range []string{"--help", "-h"} {
				r := e.run(context.Background(), tt.cmd, flagArg)
				if r.code != 0 || r.stderr != "" {
					t.Fatalf("%s %s: got %+v, want status 0", tt.cmd, flagArg, r)
				}
				for _, want := range append([]string{"Usage: tetherctl " + tt.cmd + " ", commands[i].summary[1:] + ".\n", globalHelp}, tt.flags...) {
					if !strings.Contains(r.stdout, want) {
						t.Errorf("%s %s printed\n%s\nwithout %q", tt.cmd, flagArg, r.stdout, want)
					}
				}
			}
		})
	}
	if len(tests) != len(commands) {
		t.Errorf("%d commands tested, of %d", len(tests), len(commands))
	}
}
