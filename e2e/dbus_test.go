// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"bufio"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"tether/internal/dbustest"
)

// pythonWithDBus is Debian's python, which has dbus-python and PyGObject;
// another python3 earlier on PATH may lack them.
const pythonWithDBus = "/usr/bin/python3"

// startBusAgent runs a bus with the system bus's policy and the shipped
// org.tether.Push policy (granted to root, as tetherd runs here), and an
// agent whose D-Bus door is on it.
func startBusAgent(t *testing.T) (*fleet, string) {
	t.Helper()
	policy, err := os.ReadFile("../packaging/dbus/org.tether.Push.conf")
	if err != nil {
		t.Fatal(err)
	}
	const grant = `<policy user="tether">`
	if !strings.Contains(string(policy), grant) {
		t.Fatalf("the shipped policy has no %s", grant)
	}
	rootPolicy := filepath.Join(t.TempDir(), "org.tether.Push.conf")
	if err := os.WriteFile(rootPolicy, []byte(strings.Replace(string(policy), grant, `<policy user="root">`, 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	bus := dbustest.StartSystemLike(t, rootPolicy)

	f := &fleet{hook: startWebhook(t)}
	f.srv = startServer(t)
	f.sender, f.key = f.srv.addSender("thermo-backend", f.hook.url())
	f.agent = startAgent(t, f.srv.url(), "--dbus", bus.Address)
	t.Cleanup(func() { checkNoSecretsLogged(t, f.key, f.token) })
	return f, bus.Address
}

// ctlBus runs tetherctl on the bus, as uid when it is not zero.
func ctlBus(t *testing.T, bus string, uid uint32, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(filepath.Join(binDir, "tetherctl"), append([]string{"--dbus", bus}, args...)...)
	if uid != 0 {
		if err := os.Chmod(binDir, 0o755); err != nil {
			t.Fatal(err)
		}
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestDBusDoor drives the real agent through its D-Bus service with the
// same commands as the socket: register, receive what the app server
// sent, ack, get what was not acked again, send upstream, and be refused
// for bad input and for another user's app.
func TestDBusDoor(t *testing.T) {
	f, bus := startBusAgent(t)
	out, err := ctlBus(t, bus, 0, "register", "--app", app, "--sender", f.sender)
	if f.token = strings.TrimSpace(out); err != nil || len(f.token) < 32 {
		t.Fatalf("register on the bus: %v: %s", err, out)
	}

	// Two messages; the first listen acks one and leaves, the second gets
	// the other: what was not acked comes again, what was acked does not.
	first := f.srv.mustSend(f.key, map[string]any{"to": f.token, "data": map[string]string{"n": "1"}})
	second := f.srv.mustSend(f.key, map[string]any{"to": f.token, "data": map[string]string{"n": "2"}})
	for _, want := range []string{first, second} {
		out, err := ctlBus(t, bus, 0, "--json", "listen", "--app", app, "--count", "1")
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("listen on the bus: %v: %s, want message %s", err, out, want)
		}
	}

	out, err = ctlBus(t, bus, 0, "send", "--app", app, "--to", f.sender, "--wait", "reading=21")
	if err != nil {
		t.Fatalf("send --wait on the bus: %v: %s", err, out)
	}
	if up := f.hook.next(t); up["data"].(map[string]any)["reading"] != "21" {
		t.Fatalf("webhook got %v", up)
	}

	refusals := []struct {
		name string
		uid  uint32
		args []string
		want string
	}{
		{"data over 4096 bytes", 0, []string{"send", "--app", app, "--to", f.sender, "k=" + strings.Repeat("x", 4096)}, "MessageTooBig"},
		{"a bad topic name", 0, []string{"subscribe", "--app", app, "--sender", f.sender, "--topic", "no spaces"}, "InvalidArgument"},
		{"an unknown app", 0, []string{"listen", "--app", "com.example.nobody", "--count", "1"}, "NotRegistered"},
		{"another user listens", 65534, []string{"listen", "--app", app, "--count", "1"}, "PermissionDenied"},
		{"another user sends", 65534, []string{"send", "--app", app, "--to", f.sender, "k=v"}, "PermissionDenied"},
		{"another user unregisters", 65534, []string{"unregister", "--app", app, "--sender", f.sender}, "PermissionDenied"},
	}
	for _, r := range refusals {
		t.Run(r.name, func(t *testing.T) {
			if r.uid != 0 && os.Getuid() != 0 {
				t.Skip("needs root to run as another user")
			}
			out, err := ctlBus(t, bus, r.uid, r.args...)
			if err == nil || !strings.Contains(out, r.want) {
				t.Fatalf("%v: %q, want %s", err, out, r.want)
			}
			if strings.Contains(out, f.token) {
				t.Fatal("the refusal shows the app's token")
			}
		})
	}
	// The agent is still there and serving.
	if out, err := ctlBus(t, bus, 0, "status"); err != nil || !strings.Contains(out, "connected") {
		t.Fatalf("status after the refusals: %v: %s", err, out)
	}
}

// TestPythonExample runs examples/python/listen.py, as an app developer
// would copy it, against the agent: it receives a message the app server
// sent, acks it, and sends one upstream.
func TestPythonExample(t *testing.T) {
	if _, err := os.Stat(pythonWithDBus); err != nil {
		t.Skip("no ", pythonWithDBus)
	}
	f, bus := startBusAgent(t)
	f.token = f.agent.register(app, f.sender)

	r, w := io.Pipe()
	cmd := exec.Command(pythonWithDBus, "../examples/python/listen.py", "--bus", bus, "--app", app,
		"--count", "1", "--send-to", f.sender, "temp=21")
	cmd.Stdout = w
	stderr := &strings.Builder{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- cmd.Wait()
		w.Close()
	}()
	lines := make(chan string, 16)
	go func() {
		defer close(lines)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	expect := func(prefix string) string {
		t.Helper()
		timeout := time.After(30 * time.Second)
		for {
			select {
			case l, ok := <-lines:
				if !ok {
					t.Fatalf("listen.py ended before printing %q: %v\n%s", prefix, <-done, stderr)
				}
				if strings.HasPrefix(l, prefix) {
					return l
				}
			case <-timeout:
				cmd.Process.Kill()
				t.Fatalf("listen.py printed no %q\n%s", prefix, stderr)
			}
		}
	}
	// The upstream message's outcome and the downstream message may come
	// in either order.
	expect("queued ")
	id := f.srv.mustSend(f.key, map[string]any{"to": f.token, "data": map[string]string{"alert": "frost"}})
	// A listen.py that never gets what it waits for is stopped.
	stop := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() })
	defer stop.Stop()
	var printed []string
	for l := range lines {
		printed = append(printed, l)
	}
	if err := <-done; err != nil {
		t.Fatalf("listen.py: %v\n%s", err, stderr)
	}
	all := strings.Join(printed, "\n")
	if !strings.Contains(all, "message "+id) || !strings.Contains(all, "alert=frost") || !strings.Contains(all, "\nsent ") && !strings.HasPrefix(all, "sent ") {
		t.Fatalf("listen.py printed:\n%s\nwant message %s and the upstream message sent", all, id)
	}
	if up := f.hook.next(t); up["data"].(map[string]any)["temp"] != "21" {
		t.Fatalf("webhook got %v", up)
	}
	// It acked the message: nothing is left for the app.
	if out, err := f.agent.ctl("--json", "status"); err != nil || !strings.Contains(out, `"queued_downstream":0`) {
		t.Fatalf("status after listen.py: %v: %s", err, out)
	}
}
