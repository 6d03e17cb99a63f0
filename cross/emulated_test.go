// SPDX-License-Identifier: Apache-2.0

package cross

import (
	"bytes"
	"encoding/json"
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

	"tether/internal/testwait"
)

// waitLimit bounds each step; emulated binaries start slowly.
const waitLimit = 60 * time.Second

// crossDir is where cross/build.sh put the binaries, or the test is skipped.
func crossDir(t *testing.T) string {
	t.Helper()
	dir := os.Getenv("TETHER_CROSS")
	if dir == "" {
		t.Skip("TETHER_CROSS is not set: run make test-cross")
	}
	return dir
}

// emulated are the device CPUs run under qemu-user, with their emulator.
var emulated = []struct{ target, qemu string }{
	{"linux-armv7", "qemu-arm-static"},
	{"linux-arm64", "qemu-aarch64-static"},
	{"linux-mipsle", "qemu-mipsel-static"},
}

// TestEmulatedDevice runs each device CPU's tetherd and tetherctl under
// qemu-user (called explicitly: binfmt_misc may not be mounted) against the
// amd64 tether-server: check-in, register, a message down and one up.
func TestEmulatedDevice(t *testing.T) {
	dir := crossDir(t)
	srv := startServer(t, filepath.Join(dir, "linux-amd64", "tether-server"))
	for _, e := range emulated {
		t.Run(e.target, func(t *testing.T) {
			qemu, err := exec.LookPath(e.qemu)
			if err != nil {
				t.Fatalf("%s is missing: apt-get install qemu-user-static", e.qemu)
			}
			dev := &device{t: t, qemu: qemu, bin: filepath.Join(dir, e.target), sock: filepath.Join(t.TempDir(), "tetherd.sock")}

			// The binaries carry the version they were built as.
			out, err := dev.ctl("version")
			if want := "tetherctl " + os.Getenv("TETHER_BUILD_VERSION") + "\n"; err != nil || out != want && os.Getenv("TETHER_BUILD_VERSION") != "" {
				t.Fatalf("tetherctl version under %s: %q, %v; want %q", e.qemu, out, err, want)
			}
			if out, err := exec.Command(qemu, filepath.Join(dev.bin, "tetherd"), "version").Output(); err != nil || !strings.HasPrefix(string(out), "tetherd ") {
				t.Fatalf("tetherd version under %s: %q, %v", e.qemu, out, err)
			}
			// They are the target's, not the host's.
			if err := exec.Command(filepath.Join(dev.bin, "tetherctl"), "version").Run(); err == nil && !binfmtMounted() {
				t.Fatalf("%s/tetherctl runs natively: not a %s binary", dev.bin, e.target)
			}

			dev.start(srv.url, srv.enrollKey)
			app := "com.example." + strings.ReplaceAll(e.target, "-", "")
			token, err := dev.ctl("register", "--app", app, "--sender", srv.sender)
			if err != nil {
				t.Fatal(err)
			}
			token = strings.TrimSpace(token)

			// Down: the app server sends, the emulated tetherctl prints it.
			listen := dev.command("--json", "listen", "--app", app, "--count", "1")
			var listened bytes.Buffer
			listen.Stdout = &listened
			listen.Stderr = &listened
			if err := listen.Start(); err != nil {
				t.Fatal(err)
			}
			id := srv.send(t, token, map[string]string{"setpoint": "21.5", "cpu": e.target})
			waited := make(chan error, 1)
			go func() { waited <- listen.Wait() }()
			select {
			case err := <-waited:
				if err != nil {
					t.Fatalf("tetherctl listen: %v\n%s", err, listened.String())
				}
			case <-time.After(waitLimit):
				listen.Process.Kill()
				t.Fatalf("no message within %v; tetherd log:\n%s", waitLimit, dev.log())
			}
			var got struct {
				MessageID string            `json:"message_id"`
				Data      map[string]string `json:"data"`
			}
			if err := json.Unmarshal(bytes.TrimSpace(listened.Bytes()), &got); err != nil || got.MessageID != id || got.Data["cpu"] != e.target {
				t.Fatalf("tetherctl listen printed %q (%v), want message %s", listened.String(), err, id)
			}

			// Up: the emulated tetherctl sends, the app server's webhook gets it.
			upID := "up-" + e.target
			if _, err := dev.ctl("send", "--app", app, "--to", srv.sender, "--id", upID, "--wait", "temp=20.5"); err != nil {
				t.Fatal(err)
			}
			select {
			case up := <-srv.upstream:
				if up["message_id"] != upID || up["from"] != token {
					t.Errorf("webhook got %v, want message %s from the app's token", up, upID)
				}
			case <-time.After(waitLimit):
				t.Fatal("the webhook got nothing")
			}
			dev.stop()
		})
	}
}

// binfmtMounted reports whether the kernel would run foreign binaries
// through qemu by itself.
func binfmtMounted() bool {
	_, err := os.Stat("/proc/sys/fs/binfmt_misc/qemu-arm")
	return err == nil
}

// server is an amd64 tether-server with one sender whose webhook is here.
type server struct {
	url, http string
	sender    string
	key       string
	// enrollKey enrolls the emulated devices, one key for the batch.
	enrollKey string
	upstream  chan map[string]any
}

func startServer(t *testing.T, bin string) *server {
	t.Helper()
	s := &server{upstream: make(chan map[string]any, 16)}
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		s.upstream <- body
	}))
	t.Cleanup(hook.Close)

	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	data := filepath.Join(t.TempDir(), "server")
	out, err := exec.Command(bin, "sender", "add", "--data", data, "--name", "cross", "--webhook", hook.URL+"/upstream", "--json").Output()
	if err != nil {
		t.Fatalf("sender add: %v", err)
	}
	var sender struct {
		SenderID  string `json:"sender_id"`
		ServerKey string `json:"server_key"`
	}
	if err := json.Unmarshal(out, &sender); err != nil {
		t.Fatalf("sender add printed %q: %v", out, err)
	}
	s.sender, s.key = sender.SenderID, sender.ServerKey
	out, err = exec.Command(bin, "enroll", "create", "--data", data, "--uses", "16", "--json").Output()
	if err != nil {
		t.Fatalf("enroll create: %v", err)
	}
	var key struct {
		Key string `json:"key"`
	}
	if err := json.Unmarshal(out, &key); err != nil || key.Key == "" {
		t.Fatalf("enroll create printed %q: %v", out, err)
	}
	s.enrollKey = key.Key
	cmd := exec.Command(bin, "serve", "--listen", addr, "--data", data)
	var logs bytes.Buffer
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
		if t.Failed() {
			t.Logf("tether-server log:\n%s", logs.String())
		}
	})
	s.url, s.http = "ws://"+addr, "http://"+addr
	testwait.For(t, "tether-server", waitLimit, func() error {
		resp, err := http.Get(s.http + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	return s
}

// send posts a GCM message to token and returns its message ID.
func (s *server) send(t *testing.T, token string, data map[string]string) string {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"to": token, "data": data})
	req, _ := http.NewRequest(http.MethodPost, s.http+"/gcm/send", bytes.NewReader(body))
	req.Header.Set("Authorization", "key="+s.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r struct {
		Results []struct {
			MessageID string `json:"message_id"`
			Error     string `json:"error"`
		} `json:"results"`
	}
	out, _ := io.ReadAll(resp.Body)
	if err := json.Unmarshal(out, &r); err != nil || len(r.Results) != 1 || r.Results[0].MessageID == "" {
		t.Fatalf("send: %d %s", resp.StatusCode, out)
	}
	return r.Results[0].MessageID
}

// device is an emulated tetherd and its tetherctl.
type device struct {
	t       *testing.T
	qemu    string
	bin     string
	sock    string
	cmd     *exec.Cmd
	logPath string
}

func (d *device) command(args ...string) *exec.Cmd {
	return exec.Command(d.qemu, append([]string{filepath.Join(d.bin, "tetherctl"), "--socket", d.sock}, args...)...)
}

func (d *device) ctl(args ...string) (string, error) {
	var stderr bytes.Buffer
	cmd := d.command(args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("tetherctl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func (d *device) start(server, enrollKey string) {
	d.t.Helper()
	dir := d.t.TempDir()
	d.logPath = filepath.Join(dir, "tetherd.log")
	logFile, err := os.Create(d.logPath)
	if err != nil {
		d.t.Fatal(err)
	}
	d.cmd = exec.Command(d.qemu, filepath.Join(d.bin, "tetherd"), "run", "--config=", "--server", server,
		"--data", filepath.Join(dir, "data"), "--socket", d.sock, "--log-level", "debug", "--enroll-key", enrollKey)
	d.cmd.Stdout, d.cmd.Stderr = logFile, logFile
	if err := d.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() {
		d.cmd.Process.Kill()
		d.cmd.Wait()
		logFile.Close()
		if d.t.Failed() {
			d.t.Logf("tetherd log:\n%s", d.log())
		}
	})
	testwait.For(d.t, "tetherd to check in", waitLimit, func() error {
		out, err := d.ctl("--json", "status")
		if err != nil {
			return err
		}
		var st struct {
			Connected bool   `json:"connected"`
			DeviceID  string `json:"device_id"`
		}
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return err
		}
		if !st.Connected || st.DeviceID == "" {
			return fmt.Errorf("status %s", out)
		}
		return nil
	})
}

// stop sends SIGTERM, which qemu-user passes on, and expects a clean exit.
func (d *device) stop() {
	d.t.Helper()
	d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- d.cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			d.t.Fatalf("tetherd after SIGTERM: %v\n%s", err, d.log())
		}
	case <-time.After(waitLimit):
		d.t.Fatalf("tetherd did not stop on SIGTERM:\n%s", d.log())
	}
	if !strings.Contains(d.log(), "msg=stopped") {
		d.t.Errorf("tetherd did not log its stop:\n%s", d.log())
	}
}

func (d *device) log() string {
	b, _ := os.ReadFile(d.logPath)
	return string(b)
}
