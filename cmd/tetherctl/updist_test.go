// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"tether/internal/busclient"
	"tether/internal/dbustest"
	"tether/internal/testwait"
	"tether/internal/updist"
	"tether/ipc"
)

// connectorScript is the UnifiedPush connector of the acceptance tests,
// which follows the D-Bus specification with dbus-python.
const connectorScript = "../../e2e/acceptance/up-connector.py"

// pythonWithDBus is Debian's python, which has dbus-python, PyGObject and
// cryptography.
const pythonWithDBus = "/usr/bin/python3"

// upEnv is tetherctl up-distributor on a private session bus, against the
// socket door of a test backend, with connectors the bus starts on demand.
type upEnv struct {
	*env
	bus   string
	state string
	dir   string
}

type upConnector struct {
	name    string
	version int
	token   string
}

var upConnectors = []upConnector{
	{"org.example.Two", 2, "2b8f0f8e-4c1e-4a7a-9d55-0c0f5e0a1b02"},
	{"org.example.One", 1, "1c7e2d4a-9b3f-4f1e-8a66-7d2e4b9c3a01"},
}

func newUpEnv(t *testing.T) *upEnv {
	t.Helper()
	if _, err := os.Stat(pythonWithDBus); err != nil {
		t.Skip("no ", pythonWithDBus)
	}
	script, err := filepath.Abs(connectorScript)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	u := &upEnv{env: newEnv(t), state: filepath.Join(dir, "state", "unifiedpush.json"), dir: dir}
	services := filepath.Join(dir, "services")
	if err := os.Mkdir(services, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range upConnectors {
		service := fmt.Sprintf("[D-BUS Service]\nName=%s\nExec=%s %s serve --name %s --dir %s\n", c.name, pythonWithDBus, script, c.name, u.connectorDir(c))
		if err := os.WriteFile(filepath.Join(services, c.name+".service"), []byte(service), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	u.bus = dbustest.StartWith(t, dbustest.Options{ServiceDirs: []string{services}}).Address
	return u
}

func (u *upEnv) connectorDir(c upConnector) string { return filepath.Join(u.dir, c.name) }

// start runs the distributor until stop is called; stop returns its
// result.
func (u *upEnv) start() (stop func() result) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan result, 1)
	go func() { done <- u.run(ctx, "up-distributor", "--bus", u.bus, "--state", u.state) }()
	testwait.For(u.t, "the distributor on the bus", 30*time.Second, func() error {
		select {
		case r := <-done:
			u.t.Fatalf("up-distributor exited: %+v", r)
		default:
		}
		return u.hasOwner(updist.BusName)
	})
	var r *result
	stopped := func() result {
		if r == nil {
			cancel()
			got := <-done
			r = &got
		}
		return *r
	}
	u.t.Cleanup(func() { stopped() })
	return stopped
}

// hasOwner is nil when a connection owns name.
func (u *upEnv) hasOwner(name string) error {
	out, err := exec.Command("dbus-send", "--bus="+u.bus, "--print-reply", "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
		"org.freedesktop.DBus.NameHasOwner", "string:"+name).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "boolean true") {
		return fmt.Errorf("not yet: %s %v", out, err)
	}
	return nil
}

// python runs the connector script and returns its stdout, and its stderr
// in the error when it fails.
func (u *upEnv) python(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, pythonWithDBus, append([]string{connectorScript}, append(args, "--bus", u.bus)...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		err = fmt.Errorf("%w: %s", err, stderr.String())
	}
	return string(out), err
}

func (u *upEnv) register(c upConnector, vapid string) string {
	u.t.Helper()
	args := []string{"register", "--name", c.name, "--token", c.token, "--dir", u.connectorDir(c), "--version", fmt.Sprint(c.version)}
	if vapid != "" {
		args = append(args, "--vapid", vapid)
	}
	out, err := u.python(args...)
	var sub struct{ Endpoint string }
	if err != nil || json.Unmarshal([]byte(out), &sub) != nil {
		u.t.Fatalf("register %s: %v: %s", c.name, err, out)
	}
	return sub.Endpoint
}

func (u *upEnv) records(c upConnector, file string) []map[string]any {
	b, _ := os.ReadFile(filepath.Join(u.connectorDir(c), file))
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var m map[string]any
		if json.Unmarshal(sc.Bytes(), &m) == nil {
			out = append(out, m)
		}
	}
	return out
}

// TestUpDistributor drives tetherctl up-distributor with the connector of
// the acceptance tests through both versions of the interfaces: each
// registration is one of the Web Push sender in the agent with the VAPID
// key the app gave, the endpoint comes with NewEndpoint, messages reach
// the connector (started by the bus) with their bytes unchanged and are
// acked once it has them, a restart hands the endpoints again, and
// unregistering is confirmed.
func TestUpDistributor(t *testing.T) {
	u := newUpEnv(t)
	stop := u.start()
	const vapid = "BDd3_hVL9fZi9Ybo2UUzA284WG5FZR30_95YeZJsiApwXKpNcF1rRPF3foIiBHXRdJI2Qhumhf6_LFTeZaNndIo"
	for _, c := range upConnectors {
		key := ""
		if c.version == 2 {
			key = vapid
		}
		endpoint := u.register(c, key)
		if want := "https://push.example.test:443/up/"; !strings.HasPrefix(endpoint, want) {
			t.Errorf("%s: endpoint %q, want one under %s", c.name, endpoint, want)
		}
		if got := u.b.VAPID(updist.AppID(c.token), ipc.WebPushSender); got != key {
			t.Errorf("%s: the agent has VAPID key %q, want %q", c.name, got, key)
		}
	}
	if fi, err := os.Stat(u.state); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file: %v, %v; want mode 0600", fi, err)
	}

	body := make([]byte, 4096)
	for i := range body {
		body[i] = byte(i * 7)
	}
	deliver := func(t *testing.T, id string) {
		t.Helper()
		for _, c := range upConnectors {
			app := updist.AppID(c.token)
			u.b.Push(ipc.Message{ID: id, App: app, From: ipc.WebPushSender, Raw: body})
			// A Connector1 never answers: its message is acked once the
			// call is sent, which may be before the connector has it.
			testwait.For(t, c.name+" to get "+id+" and the agent its ack", 60*time.Second, func() error {
				if !slices.Contains(u.b.Acked(app), id) {
					return errors.New("not acked yet")
				}
				if !slices.ContainsFunc(u.records(c, "messages.jsonl"), func(m map[string]any) bool { return m["id"] == id }) {
					return errors.New("not with the connector yet")
				}
				return nil
			})
			msgs := u.records(c, "messages.jsonl")
			i := slices.IndexFunc(msgs, func(m map[string]any) bool { return m["id"] == id })
			if msgs[i]["token"] != c.token || msgs[i]["body"] != base64.StdEncoding.EncodeToString(body) {
				t.Fatalf("%s: the connector recorded %v", c.name, msgs[i])
			}
		}
	}
	deliver(t, "m1")

	// A new token in the agent is a new endpoint, handed to the connector
	// and kept.
	c := upConnectors[0]
	u.b.RefreshToken(updist.AppID(c.token), ipc.WebPushSender, "token-rotated")
	const rotated = "https://push.example.test:443/up/token-rotated"
	testwait.For(t, c.name+" to be handed its new endpoint", 60*time.Second, func() error {
		if !slices.ContainsFunc(u.records(c, "endpoints.jsonl"), func(m map[string]any) bool { return m["endpoint"] == rotated }) {
			return errors.New("not yet")
		}
		return nil
	})
	if b, err := os.ReadFile(u.state); err != nil || !strings.Contains(string(b), rotated) {
		t.Errorf("the state file does not have the new endpoint: %s, %v", b, err)
	}

	r := stop()
	if r.code != 0 {
		t.Fatalf("up-distributor stopped with %+v", r)
	}
	if strings.Contains(r.stderr, "/up/") || !strings.Contains(r.stderr, "UnifiedPush app registered") {
		t.Errorf("the distributor's log has an endpoint, or not its registrations:\n%s", r.stderr)
	}
	endpoints := map[string]int{}
	for _, c := range upConnectors {
		endpoints[c.name] = len(u.records(c, "endpoints.jsonl"))
	}
	u.start()
	for _, c := range upConnectors {
		testwait.For(t, c.name+" to be handed its endpoint again", 60*time.Second, func() error {
			if n := len(u.records(c, "endpoints.jsonl")); n <= endpoints[c.name] {
				return fmt.Errorf("%d endpoints, as before", n)
			}
			return nil
		})
	}
	deliver(t, "m2")

	for _, c := range upConnectors {
		if out, err := u.python("unregister", "--name", c.name, "--token", c.token, "--version", fmt.Sprint(c.version)); err != nil {
			t.Fatalf("unregister %s: %v: %s", c.name, err, out)
		}
		testwait.For(t, c.name+" to be told it is unregistered", 60*time.Second, func() error {
			if !slices.ContainsFunc(u.records(c, "unregistered.jsonl"), func(m map[string]any) bool { return m["token"] == c.token }) {
				return errors.New("not yet")
			}
			return nil
		})
	}
	b, err := os.ReadFile(u.state)
	if err != nil || strings.Contains(string(b), upConnectors[0].token) || strings.Contains(string(b), upConnectors[1].token) {
		t.Errorf("state file after unregistering: %s, %v", b, err)
	}
}

// TestUpDistributorWaitsForTheApp: a message for an app that is not
// running and cannot be started stays with the agent, unacked, and reaches
// the app once it runs.
func TestUpDistributorWaitsForTheApp(t *testing.T) {
	u := newUpEnv(t)
	u.start()
	later := upConnector{"org.example.Later", 2, "3d9e1f2a-5b6c-4d7e-8f90-a1b2c3d4e5f6"} // no service file
	u.register(later, "")
	testwait.For(t, "the registering app to leave the bus", 30*time.Second, func() error {
		if u.hasOwner(later.name) == nil {
			return errors.New("still there")
		}
		return nil
	})
	app := updist.AppID(later.token)
	u.b.Push(ipc.Message{ID: "w1", App: app, From: ipc.WebPushSender, Raw: []byte("waited")})

	serve := exec.Command(pythonWithDBus, connectorScript, "serve", "--name", later.name, "--dir", u.connectorDir(later), "--bus", u.bus)
	if err := serve.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		serve.Process.Kill()
		serve.Wait()
	})
	testwait.For(t, "the app, once running, to get the message and the agent its ack", 90*time.Second, func() error {
		if !slices.Contains(u.b.Acked(app), "w1") {
			return errors.New("not acked yet")
		}
		return nil
	})
	msgs := u.records(later, "messages.jsonl")
	if len(msgs) != 1 || msgs[0]["body"] != base64.StdEncoding.EncodeToString([]byte("waited")) {
		t.Errorf("the app recorded %v", msgs)
	}
}

// TestUpDistributorAgentForgot: a registration the agent no longer has
// (its store was reset) is dropped, and its connector told.
func TestUpDistributorAgentForgot(t *testing.T) {
	u := newUpEnv(t)
	c := upConnectors[0]
	for _, dir := range []string{filepath.Dir(u.state), u.connectorDir(c)} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	state := fmt.Sprintf(`{"registrations":[{"token":%q,"service":%q,"endpoint":"https://push.example.test:443/up/gone","version":2}]}`, c.token, c.name)
	if err := os.WriteFile(u.state, []byte(state), 0o600); err != nil {
		t.Fatal(err)
	}
	u.start()
	testwait.For(t, c.name+" to be told it is unregistered", 60*time.Second, func() error {
		if !slices.ContainsFunc(u.records(c, "unregistered.jsonl"), func(m map[string]any) bool { return m["token"] == c.token }) {
			return errors.New("not yet")
		}
		return nil
	})
	testwait.For(t, "the registration to leave the state file", 30*time.Second, func() error {
		if b, _ := os.ReadFile(u.state); strings.Contains(string(b), c.token) {
			return errors.New("still there")
		}
		return nil
	})
}

// TestUpDistributorRefuses: bad registrations are refused with a reason and
// the distributor keeps serving; calls it does not know are errors; a
// second distributor on the bus and a bus that is not there are errors.
func TestUpDistributorRefuses(t *testing.T) {
	u := newUpEnv(t)
	u.start()
	c := upConnectors[0]
	for _, token := range []string{"a token with spaces", strings.Repeat("x", 101)} {
		out, err := u.python("register", "--name", c.name, "--token", token, "--dir", u.connectorDir(c))
		if err == nil || !strings.Contains(err.Error(), "REGISTRATION_FAILED") {
			t.Errorf("registering token %q: %v: %s", token, err, out)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := busclient.Dial(ctx, u.bus)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for _, call := range []struct {
		path          busclient.ObjectPath
		iface, member string
		args          []any
	}{
		{"/org/unifiedpush/Distributor", "org.unifiedpush.Distributor2", "Register", []any{"not a dict"}},
		{"/org/unifiedpush/Distributor", "org.unifiedpush.Distributor2", "Nope", nil},
		{"/elsewhere", "org.unifiedpush.Distributor2", "Register", []any{map[string]busclient.Variant{}}},
	} {
		_, err := conn.Call(ctx, updist.BusName, call.path, call.iface, call.member, call.args...)
		var be *busclient.Error
		if !errors.As(err, &be) || be.Name != busclient.ErrorUnknownMethod {
			t.Errorf("%s.%s at %s: %v, want %s", call.iface, call.member, call.path, err, busclient.ErrorUnknownMethod)
		}
	}
	// Still serving.
	if endpoint := u.register(c, ""); endpoint == "" {
		t.Error("no endpoint after the refusals")
	}
	// The agent refuses a token whose app is another user's.
	other := upConnectors[1]
	u.b.SetOwner(updist.AppID(other.token), 4242)
	args := []string{"register", "--name", other.name, "--token", other.token, "--dir", u.connectorDir(other)}
	if _, err := u.python(args...); err == nil || !strings.Contains(err.Error(), "REGISTRATION_FAILED INTERNAL_ERROR") {
		t.Errorf("registering another user's app: %v", err)
	}
	// An agent that is not there is a network failure, worth trying again.
	away := newUpEnv(t)
	away.socket = filepath.Join(away.dir, "no-agent.sock")
	away.start()
	if _, err := away.python(args...); err == nil || !strings.Contains(err.Error(), "REGISTRATION_FAILED NETWORK") {
		t.Errorf("registering without an agent: %v", err)
	}

	for _, tt := range []struct {
		name   string
		args   []string
		code   int
		stderr string
	}{
		{"second distributor", []string{"--bus", u.bus}, 1, "owned by another connection"},
		{"no bus", nil, 2, "no session bus"},
		{"bus not there", []string{"--bus", "unix:path=" + filepath.Join(u.dir, "nobus")}, 1, "connect to the session bus"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := u.run(ctx, append([]string{"up-distributor", "--state", filepath.Join(u.dir, "other.json")}, tt.args...)...)
			if r.code != tt.code || !strings.Contains(r.stderr, tt.stderr) {
				t.Errorf("got %+v, want status %d and %q", r, tt.code, tt.stderr)
			}
		})
	}
}
