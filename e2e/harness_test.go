// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"bufio"
	"bytes"
	"context"
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
	"sync"
	"syscall"
	"testing"
	"time"

	"tether/internal/natstest"
	"tether/internal/testwait"
)

// binDir holds the binaries built once by TestMain.
var binDir string

// natsBin is nats-server, built once by TestMain from the module Tether
// requires, for the cluster tests.
var natsBin string

func TestMain(m *testing.M) {
	if os.Getenv(chaosAppEnv) != "" {
		os.Exit(runChaosApp()) // the test binary is the chaos test's local app
	}
	dir, err := os.MkdirTemp("", "tether-e2e-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	build := exec.Command("go", "build", "-race", "-o", dir+"/", "tether/cmd/tetherd", "tether/cmd/tetherctl", "tether/cmd/tether-server")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build binaries:", err)
		os.Exit(1)
	}
	binDir = dir
	if natsBin, err = natstest.Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// proc is one running binary whose output goes to a log file.
type proc struct {
	t       *testing.T
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{}
	err     error
}

func startProc(t *testing.T, name string, stdout io.Writer, args ...string) *proc {
	t.Helper()
	return startProcIn(t, "", nil, name, stdout, args...)
}

// startProcIn starts one of the binaries in the network namespace netns
// (ip netns exec), or in the test's own when netns is empty, with env
// added to the test's environment.
func startProcIn(t *testing.T, netns string, env []string, name string, stdout io.Writer, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	if netns != "" {
		cmd = exec.Command("ip", append([]string{"netns", "exec", netns, filepath.Join(binDir, name)}, args...)...)
	}
	if env != nil {
		cmd.Env = append(os.Environ(), env...)
	}
	return startCmd(t, name, cmd, logPath, logFile, stdout)
}

// startCmd starts cmd with its output going to logFile (stdout elsewhere
// when given) and makes it a proc, killed when the test ends.
func startCmd(t *testing.T, name string, cmd *exec.Cmd, logPath string, logFile *os.File, stdout io.Writer) *proc {
	t.Helper()
	cmd.Stderr = logFile
	cmd.Stdout = logFile
	if stdout != nil {
		cmd.Stdout = stdout
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &proc{t: t, name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logFile.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		p.checkLog()
		if t.Failed() {
			p.keepLog()
		}
	})
	return p
}

// keepLog copies the log of a failed test's process out of the test's
// temporary dir, which is about to be removed, and says where it went.
func (p *proc) keepLog() {
	dir := filepath.Join(os.TempDir(), "tether-e2e-logs", p.t.Name())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return
	}
	f, err := os.CreateTemp(dir, p.name+"-*.log")
	if err != nil {
		return
	}
	defer f.Close()
	f.WriteString(p.log())
	p.t.Logf("%s log kept at %s", p.name, f.Name())
}

func (p *proc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// checkLog fails the test when the race detector or a panic spoke in the
// process's output.
func (p *proc) checkLog() {
	out := p.log()
	for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
		if strings.Contains(out, bad) {
			p.t.Errorf("%s printed %q:\n%s", p.name, bad, out)
		}
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// kill sends SIGKILL, as a power cut or the OOM killer would.
func (p *proc) kill() {
	if !p.exited() {
		p.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-p.done
}

// stop sends SIGTERM and expects a clean exit.
func (p *proc) stop() {
	p.t.Helper()
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(20 * time.Second):
		p.t.Fatalf("%s did not exit within 20 s of SIGTERM:\n%s", p.name, p.log())
	}
	if p.err != nil {
		p.t.Fatalf("%s exited with %v after SIGTERM:\n%s", p.name, p.err, p.log())
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// server is a tether-server process with its data dir and address, which
// stay the same across restarts.
type server struct {
	// netns is the network namespace tether-server runs in; empty for the
	// test's.
	netns string
	// env is added to tether-server's environment.
	env    []string
	t      *testing.T
	addr   string
	data   string
	args   []string
	scheme string // http or https
	// keysOnly enrolls devices with the enrollment keys in the store
	// alone, no fleet key.
	keysOnly bool
	client   *http.Client
	p        *proc
}

func newServer(t *testing.T, extra ...string) *server {
	return &server{
		t: t, addr: freeAddr(t), data: filepath.Join(t.TempDir(), "server"), args: extra,
		scheme: "http", client: &http.Client{Timeout: 15 * time.Second},
	}
}

func startServer(t *testing.T, extra ...string) *server {
	t.Helper()
	s := newServer(t, extra...)
	s.start()
	return s
}

// e2eEnrollKey is the fleet enrollment key of the servers and agents of
// the tests that give none of their own.
const e2eEnrollKey = "e2e-fleet-enrollment-key-0123456789"

// enrollment is the way to enroll a test gave in args, or else the fleet
// key of the tests: a server needs one, and an agent one that its server
// takes.
func enrollment(args []string, flags ...string) []string {
	for _, a := range args {
		for _, f := range flags {
			if a == f || strings.HasPrefix(a, f+"=") {
				return nil
			}
		}
	}
	return []string{"--enroll-key", e2eEnrollKey}
}

// launch starts the process without waiting for it.
func (s *server) launch() {
	args := append([]string{"serve", "--listen", s.addr, "--data", s.data, "--log-level", "debug"}, s.args...)
	if !s.keysOnly {
		args = append(args, enrollment(s.args, "--enroll-key", "--enroll-key-file", "--open-enrollment", "--device-ca")...)
	}
	s.p = startProcIn(s.t, s.netns, s.env, "tether-server", nil, args...)
}

// startListening starts the process and waits for it to say it listens:
// for a server that /healthz from the test cannot reach, such as one in a
// network namespace of its own.
func (s *server) startListening() {
	s.t.Helper()
	s.launch()
	testwait.For(s.t, "tether-server to listen", 30*time.Second, func() error {
		if s.p.exited() {
			s.t.Fatalf("tether-server exited: %v\n%s", s.p.err, s.p.log())
		}
		if !strings.Contains(s.p.log(), "msg=listening") {
			return errors.New("not listening yet")
		}
		return nil
	})
}

func (s *server) start() {
	s.t.Helper()
	s.launch()
	testwait.For(s.t, "tether-server to answer /healthz", 30*time.Second, func() error {
		if s.p.exited() {
			s.t.Fatalf("tether-server exited: %v\n%s", s.p.err, s.p.log())
		}
		resp, err := s.client.Get(s.scheme + "://" + s.addr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("status %d", resp.StatusCode)
		}
		return nil
	})
}

func (s *server) url() string { return "ws://" + s.addr }

// post sends a raw body to path (/gcm/send or /fcm/send) and returns the
// status and body.
func (s *server) postTo(path, key, contentType string, body []byte) (int, []byte, error) {
	req, err := http.NewRequest(http.MethodPost, s.scheme+"://"+s.addr+path, bytes.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Authorization", "key="+key)
	req.Header.Set("Content-Type", contentType)
	resp, err := s.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	return resp.StatusCode, out, err
}

// addSender runs `tether-server sender add` and returns the sender ID and key.
func (s *server) addSender(name, webhook string) (id, key string) {
	s.t.Helper()
	args := []string{"sender", "add", "--data", s.data, "--name", name, "--json"}
	if webhook != "" {
		args = append(args, "--webhook", webhook)
	}
	out, err := exec.Command(filepath.Join(binDir, "tether-server"), args...).Output()
	if err != nil {
		s.t.Fatalf("sender add: %v: %s", err, exitStderr(err))
	}
	var sender struct {
		SenderID  string `json:"sender_id"`
		ServerKey string `json:"server_key"`
	}
	if err := json.Unmarshal(out, &sender); err != nil || sender.SenderID == "" || sender.ServerKey == "" {
		s.t.Fatalf("sender add printed %q: %v", out, err)
	}
	return sender.SenderID, sender.ServerKey
}

func exitStderr(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// sendResponse is GCM's answer to a send.
type sendResponse struct {
	MulticastID  int64 `json:"multicast_id"`
	Success      int   `json:"success"`
	Failure      int   `json:"failure"`
	CanonicalIDs int   `json:"canonical_ids"`
	Results      []struct {
		MessageID      string `json:"message_id"`
		RegistrationID string `json:"registration_id"`
		Error          string `json:"error"`
	} `json:"results"`
}

// post sends a raw body to /gcm/send.
func (s *server) post(key, contentType string, body []byte) (int, []byte, error) {
	return s.postTo("/gcm/send", key, contentType, body)
}

// send posts one GCM JSON message and returns the parsed answer.
func (s *server) send(key string, msg map[string]any) (sendResponse, error) {
	body, err := json.Marshal(msg)
	if err != nil {
		return sendResponse{}, err
	}
	status, out, err := s.post(key, "application/json", body)
	if err != nil {
		return sendResponse{}, err
	}
	if status != http.StatusOK {
		return sendResponse{}, fmt.Errorf("status %d: %s", status, out)
	}
	var r sendResponse
	if err := json.Unmarshal(out, &r); err != nil {
		return r, fmt.Errorf("decode %s: %w", out, err)
	}
	return r, nil
}

// mustSend sends to one token and returns the accepted message ID.
func (s *server) mustSend(key string, msg map[string]any) string {
	s.t.Helper()
	r, err := s.send(key, msg)
	if err != nil {
		s.t.Fatalf("send %v: %v", msg, err)
	}
	if len(r.Results) != 1 || r.Results[0].MessageID == "" || r.Success != 1 {
		s.t.Fatalf("send %v: answer %+v", msg, r)
	}
	return r.Results[0].MessageID
}

// agent is a tetherd process with its data dir and socket.
type agent struct {
	t *testing.T
	// netns is the network namespace tetherd runs in; empty for the test's.
	netns string
	// env is added to tetherd's environment.
	env    []string
	server string
	data   string
	sock   string
	args   []string
	p      *proc
}

func newAgent(t *testing.T, serverURL string, extra ...string) *agent {
	dir := t.TempDir()
	return &agent{t: t, server: serverURL, data: filepath.Join(dir, "agent"), sock: filepath.Join(dir, "tetherd.sock"), args: extra}
}

func startAgent(t *testing.T, serverURL string, extra ...string) *agent {
	t.Helper()
	a := newAgent(t, serverURL, extra...)
	a.start()
	return a
}

// launch starts tetherd and waits for its socket, not for a connection.
func (a *agent) launch() {
	a.t.Helper()
	args := append([]string{"--server", a.server, "--data", a.data, "--socket", a.sock, "--log-level", "debug"}, a.args...)
	args = append(args, enrollment(a.args, "--enroll-key", "--enroll-key-file", "--cert", "--config")...)
	a.p = startProcIn(a.t, a.netns, a.env, "tetherd", nil, args...)
	testwait.For(a.t, "tetherd's socket", 30*time.Second, func() error {
		if a.p.exited() {
			a.t.Fatalf("tetherd exited: %v\n%s", a.p.err, a.p.log())
		}
		c, err := dialApp(a.sock)
		if err != nil {
			return err
		}
		c.close()
		return nil
	})
}

func (a *agent) start() {
	a.t.Helper()
	a.launch()
	a.waitConnected()
}

// waitConnected waits until the agent reports a live session.
func (a *agent) waitConnected() {
	a.t.Helper()
	testwait.For(a.t, "tetherd to connect", 30*time.Second, func() error {
		if a.p.exited() {
			a.t.Fatalf("tetherd exited: %v\n%s", a.p.err, a.p.log())
		}
		c, err := dialApp(a.sock)
		if err != nil {
			return err
		}
		defer c.close()
		resp, err := c.call(map[string]any{"op": "status"})
		if err != nil {
			return err
		}
		var st struct {
			Status struct {
				Connected bool `json:"connected"`
			} `json:"status"`
		}
		if err := json.Unmarshal(resp, &st); err != nil {
			return err
		}
		if !st.Status.Connected {
			return errors.New("not connected yet")
		}
		return nil
	})
}

// ctl runs tetherctl against the agent and returns its stdout.
func (a *agent) ctl(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(binDir, "tetherctl"), append([]string{"--socket", a.sock}, args...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return string(out), fmt.Errorf("tetherctl %s: %w: %s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func (a *agent) register(app, sender string) string {
	a.t.Helper()
	out, err := a.ctl("register", "--app", app, "--sender", sender)
	if err != nil {
		a.t.Fatal(err)
	}
	token := strings.TrimSpace(out)
	if len(token) < 32 || strings.ContainsAny(token, " \n") {
		a.t.Fatalf("register printed %q, want a token", out)
	}
	return token
}

// delivered is a message as `tetherctl listen --json` prints it.
type delivered struct {
	Event       string            `json:"event"`
	MessageID   string            `json:"message_id"`
	App         string            `json:"app"`
	From        string            `json:"from"`
	CollapseKey string            `json:"collapse_key"`
	Data        map[string]string `json:"data"`
	Topic       string            `json:"topic"`
	// Of the other events.
	Sender string `json:"sender"`
	Token  string `json:"token"`
	Count  int    `json:"count"`
}

// listen runs `tetherctl listen --json --once` (with extra flags such as
// --count) and returns its messages and events as they come. With --once
// it ends when the agent goes, so that a test that restarts the agent
// and listens anew has one listener.
func (a *agent) listen(app string, extra ...string) (<-chan delivered, *proc) {
	a.t.Helper()
	r, w := io.Pipe()
	p := startProc(a.t, "tetherctl", w, append([]string{"--socket", a.sock, "listen", "--app", app, "--json", "--once"}, extra...)...)
	ch := make(chan delivered, 1000)
	go func() {
		<-p.done
		w.Close()
	}()
	go func() {
		defer close(ch)
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			var d delivered
			if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
				a.t.Errorf("tetherctl listen printed a line that is not JSON: %q", sc.Text())
				continue
			}
			ch <- d
		}
	}()
	return ch, p
}

// next waits for the next delivered message, passing over other events.
func next(t *testing.T, ch <-chan delivered) delivered {
	t.Helper()
	return nextEvent(t, ch, "message")
}

// nextEvent waits for the next event of a kind, passing over others.
func nextEvent(t *testing.T, ch <-chan delivered, kind string) delivered {
	t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case d, ok := <-ch:
			if !ok {
				t.Fatalf("the listener stopped before a %s came", kind)
			}
			if d.Event == kind {
				return d
			}
		case <-timeout:
			t.Fatalf("no %s within 30 s", kind)
		}
	}
}

// appConn is a local app speaking the socket protocol directly.
type appConn struct {
	conn net.Conn
	r    *bufio.Reader
	seq  int
	// events received while waiting for a response, in order.
	events [][]byte
}

func dialApp(sock string) (*appConn, error) {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return nil, err
	}
	return &appConn{conn: c, r: bufio.NewReaderSize(c, 128<<10)}, nil
}

func (c *appConn) close() { c.conn.Close() }

func (c *appConn) writeLine(b []byte) error {
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, err := c.conn.Write(append(b, '\n'))
	return err
}

func (c *appConn) readLine(timeout time.Duration) ([]byte, error) {
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		return nil, err
	}
	return bytes.TrimSpace(line), nil
}

// call sends one request and returns its response; an error response is
// returned as a *callError.
func (c *appConn) call(req map[string]any) ([]byte, error) {
	c.seq++
	req["id"] = c.seq
	b, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if err := c.writeLine(b); err != nil {
		return nil, err
	}
	return c.response(c.seq)
}

// response reads until the response with id arrives, keeping events.
func (c *appConn) response(id int) ([]byte, error) {
	for {
		line, err := c.readLine(30 * time.Second)
		if err != nil {
			return nil, err
		}
		var head struct {
			ID    *int   `json:"id"`
			Event string `json:"event"`
			OK    bool   `json:"ok"`
			Error *struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(line, &head); err != nil {
			return nil, fmt.Errorf("agent sent a line that is not JSON: %q", line)
		}
		if head.Event != "" {
			c.events = append(c.events, line)
			continue
		}
		if head.ID == nil || *head.ID != id {
			return nil, fmt.Errorf("response %q does not answer request %d", line, id)
		}
		if !head.OK {
			if head.Error == nil {
				return nil, fmt.Errorf("error response without error: %q", line)
			}
			return line, &callError{Code: head.Error.Code, Message: head.Error.Message}
		}
		return line, nil
	}
}

type callError struct{ Code, Message string }

func (e *callError) Error() string { return e.Code + ": " + e.Message }

// webhook is an app server's upstream endpoint.
type webhook struct {
	srv *httptest.Server
	mu  sync.Mutex
	got []map[string]any
	ch  chan map[string]any
}

func startWebhook(t *testing.T) *webhook {
	h := &webhook{ch: make(chan map[string]any, 10000)}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			t.Errorf("webhook got a body that is not JSON: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		h.mu.Lock()
		h.got = append(h.got, body)
		h.mu.Unlock()
		h.ch <- body
	}))
	t.Cleanup(h.srv.Close)
	return h
}

func (h *webhook) url() string { return h.srv.URL + "/upstream" }

func (h *webhook) next(t *testing.T) map[string]any {
	t.Helper()
	select {
	case b := <-h.ch:
		return b
	case <-time.After(30 * time.Second):
		t.Fatal("the webhook got nothing within 30 s")
	}
	return nil
}

// withTimeout is a context for one test step.
func withTimeout(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
