// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"tether/internal/testpki"
	"tether/wire"
)

// serverProcess is a tether-server serve process whose log the test reads
// line by line.
type serverProcess struct {
	cmd   *exec.Cmd
	lines chan string
}

// startServer runs tether-server with args and waits for its listening
// line; it returns the address the line names.
func startServer(t *testing.T, args ...string) (*serverProcess, string) {
	t.Helper()
	return startServerEnv(t, nil, args...)
}

// startServerEnv is startServer with env added to the environment.
func startServerEnv(t *testing.T, env []string, args ...string) (*serverProcess, string) {
	t.Helper()
	p := launch(t, env, args...)
	m := p.waitLog(t, `msg=listening addr=(\S+)`)
	return p, m[1]
}

// launch starts tether-server with args and env added to the
// environment; its log lines come on p.lines.
func launch(t *testing.T, env []string, args ...string) *serverProcess {
	t.Helper()
	p := &serverProcess{cmd: command(args...), lines: make(chan string, 1000)}
	p.cmd.Env = append(p.cmd.Env, env...)
	stderr, err := p.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	go func() {
		defer close(p.lines)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			p.lines <- sc.Text()
		}
	}()
	return p
}

// waitLog reads the log until a line matches re, and returns its
// submatches.
func (p *serverProcess) waitLog(t *testing.T, re string) []string {
	t.Helper()
	r := regexp.MustCompile(re)
	timeout := time.After(time.Minute) // a hung server, not a slow one
	for {
		select {
		case line, ok := <-p.lines:
			if !ok {
				t.Fatalf("the server exited before logging %q", re)
			}
			if m := r.FindStringSubmatch(line); m != nil {
				return m
			}
		case <-timeout:
			t.Fatalf("no log line %q", re)
		}
	}
}

// stop ends the server with SIGTERM and waits for it.
func (p *serverProcess) stop(t *testing.T) {
	t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	for range p.lines {
	}
	if err := p.cmd.Wait(); err != nil {
		t.Errorf("serve exited with %v", err)
	}
}

// peerCert is the certificate that a new TLS client verifying with pki
// gets from addr.
func peerCert(t *testing.T, addr string, pki testpki.Files) ([]byte, error) {
	t.Helper()
	conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: pki.Pool, ServerName: "127.0.0.1"})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0].Raw, nil
}

func certDER(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(b)
	return block.Bytes
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	// Written to a new file and renamed over, as certbot and autocert do.
	if err := os.WriteFile(to+".new", b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(to+".new", to); err != nil {
		t.Fatal(err)
	}
}

// TestReloadOnSIGHUP swaps the certificate files of a running server and
// sends SIGHUP: new TLS clients, on the HTTPS and the XMPP listener, get
// the new certificate while a device session opened before stays up and
// takes a message sent after. A bad certificate is then refused and the
// good one kept, and the config file's settings are reloaded or named as
// needing a restart.
func TestReloadOnSIGHUP(t *testing.T) {
	dir := t.TempDir()
	var pkis [2]testpki.Files
	for i := range pkis {
		d := filepath.Join(dir, fmt.Sprint("pki", i))
		os.Mkdir(d, 0o700)
		var err error
		if pkis[i], err = testpki.Write(d); err != nil {
			t.Fatal(err)
		}
	}
	oldPKI, newPKI := pkis[0], pkis[1]
	cert, key := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	copyFile(t, oldPKI.Cert, cert)
	copyFile(t, oldPKI.Key, key)
	data := filepath.Join(dir, "data")
	writeFile := func(doc string) string {
		path := filepath.Join(dir, "server.toml")
		if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	base := fmt.Sprintf("data = %q\ntls_cert = %q\ntls_key = %q\nopen_enrollment = true\nlisten = \"127.0.0.1:0\"\nxmpp_listen = \"127.0.0.1:0\"\n", data, cert, key)
	config := writeFile(base + "log_level = \"info\"\n")
	srv, addr := startServer(t, "serve", "--config", config, "--shutdown-spread", "0")
	xmppAddr := srv.waitLog(t, `msg="listening for XMPP" addr=(\S+)`)[1]

	out, err := command("sender", "add", "--data", data, "--name", "reload", "--json").Output()
	if err != nil {
		t.Fatalf("sender add: %v", err)
	}
	var snd struct {
		SenderID  string `json:"sender_id"`
		ServerKey string `json:"server_key"`
	}
	if err := json.Unmarshal(out, &snd); err != nil {
		t.Fatal(err)
	}

	// A device session over the old certificate, with a registration.
	dialer := websocket.Dialer{Subprotocols: []string{wire.Subprotocol}, HandshakeTimeout: 10 * time.Second,
		TLSClientConfig: &tls.Config{RootCAs: oldPKI.Pool}}
	conn, _, err := dialer.Dial("wss://"+addr+wire.Path, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	read := func(want wire.Type) wire.Frame {
		t.Helper()
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		_, data, err := conn.ReadMessage()
		if err != nil {
			t.Fatalf("device session: %v", err)
		}
		f, err := wire.Decode(data)
		if err != nil || f.Type != want {
			t.Fatalf("device read %s, %v; want a %s frame", data, err, want)
		}
		return f
	}
	write := func(ref string, b wire.Body) {
		t.Helper()
		frame, err := wire.Encode(ref, b)
		if err != nil {
			t.Fatal(err)
		}
		if err := conn.WriteMessage(websocket.TextMessage, frame); err != nil {
			t.Fatal(err)
		}
	}
	write("", wire.Hello{Version: 1})
	read(wire.TypeWelcome)
	write("r1", wire.Register{App: "com.example.reload", Sender: snd.SenderID})
	var reg wire.Registered
	if err := read(wire.TypeRegistered).Decode(&reg); err != nil {
		t.Fatal(err)
	}

	for _, a := range []string{addr, xmppAddr} {
		if got, err := peerCert(t, a, oldPKI); err != nil || !bytes.Equal(got, certDER(t, oldPKI.Cert)) {
			t.Fatalf("%s before the reload: %v", a, err)
		}
	}

	// The new certificate, a log level, a rate limit and a setting that takes a restart.
	copyFile(t, newPKI.Cert, cert)
	copyFile(t, newPKI.Key, key)
	writeFile(base + "log_level = \"debug\"\ndevice_rate_limit = 5\nmax_store_size = 100000000\n")
	srv.cmd.Process.Signal(syscall.SIGHUP)
	srv.waitLog(t, `msg="reload: these settings changed and take effect at the next restart" keys=max_store_size`)
	srv.waitLog(t, `msg=reloaded .* log_level=DEBUG`)
	for _, a := range []string{addr, xmppAddr} {
		if got, err := peerCert(t, a, newPKI); err != nil || !bytes.Equal(got, certDER(t, newPKI.Cert)) {
			t.Errorf("%s after the reload: %v; want the new certificate", a, err)
		}
	}

	// The session opened before the reload takes a message sent after it.
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: newPKI.Pool}}}
	req, _ := http.NewRequest(http.MethodPost, "https://"+addr+"/gcm/send",
		strings.NewReader(fmt.Sprintf(`{"to": %q, "data": {"after": "reload"}}`, reg.Token)))
	req.Header.Set("Authorization", "key="+snd.ServerKey)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || !strings.Contains(string(body), `"success":1`) {
		t.Fatalf("send after the reload: %d %s", resp.StatusCode, body)
	}
	var msg wire.Message
	if err := read(wire.TypeMessage).Decode(&msg); err != nil || msg.Data["after"] != "reload" {
		t.Fatalf("message on the old session: %+v, %v", msg, err)
	}
	write("", wire.Ack{IDs: []string{msg.ID}})

	// A bad certificate, and a bad config file: each is logged, and the
	// certificate in use stays.
	if err := os.WriteFile(cert, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	srv.cmd.Process.Signal(syscall.SIGHUP)
	srv.waitLog(t, `level=ERROR msg="reload failed; the settings in use are kept" err=.*certificate`)
	copyFile(t, newPKI.Cert, cert)
	writeFile(base + "log_level = \"loud\"\n")
	srv.cmd.Process.Signal(syscall.SIGHUP)
	srv.waitLog(t, `level=ERROR msg="reload failed; the settings in use are kept" err=.*log_level`)
	if got, err := peerCert(t, addr, newPKI); err != nil || !bytes.Equal(got, certDER(t, newPKI.Cert)) {
		t.Errorf("after a failed reload: %v; want the certificate in use", err)
	}

	srv.stop(t)
}

// TestLogFormatJSON: with --log-format json each log line is one JSON
// object with time, level and msg, and the line's attributes as fields.
func TestLogFormatJSON(t *testing.T) {
	srv := launch(t, nil, "serve", "--data", filepath.Join(t.TempDir(), "data"), "--listen", "127.0.0.1:0", "--open-enrollment", "--log-format", "json")
	var first struct {
		Time  time.Time `json:"time"`
		Level string    `json:"level"`
		Msg   string    `json:"msg"`
		Addr  string    `json:"addr"`
	}
	line := <-srv.lines
	if err := json.Unmarshal([]byte(line), &first); err != nil || first.Time.IsZero() || first.Level != "INFO" || first.Msg != "listening" || first.Addr == "" {
		t.Fatalf("first line %s: %+v, %v", line, first, err)
	}
	srv.cmd.Process.Signal(syscall.SIGTERM)
	for line := range srv.lines {
		if !json.Valid([]byte(line)) {
			t.Errorf("not JSON: %s", line)
		}
	}
	if err := srv.cmd.Wait(); err != nil {
		t.Errorf("serve exited with %v", err)
	}
}
