// SPDX-License-Identifier: Apache-2.0

package main

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
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"sync"
	"syscall"
	"time"

	"tether/ipc"
)

// benchApp is the app ID of the tool's local app on the agent.
const benchApp = "org.example.bench"

// dataKey is the one data key of Tether's messages; its value is the
// payload.
const dataKey = "b"

// failure records the first reason a system stopped working.
type failure struct {
	once sync.Once
	ch   chan struct{}
	err  error
}

func newFailure() *failure { return &failure{ch: make(chan struct{})} }

func (f *failure) set(err error) {
	f.once.Do(func() {
		f.err = err
		close(f.ch)
	})
}

// watch sets f should p exit before stopping is closed.
func (f *failure) watch(p *process, stopping <-chan struct{}) {
	go func() {
		select {
		case <-p.done:
			f.set(fmt.Errorf("%s exited\n%s", p.name, p.tail()))
		case <-stopping:
		}
	}()
}

// benchEnrollKey is the fleet enrollment key of the benchmark's server
// and agent, on loopback.
const benchEnrollKey = "bench-fleet-enrollment-key-0123456789"

// tetherSide is Tether on loopback: tether-server, tetherd connected
// through a counting proxy, the tool's app listening on tetherd's socket,
// and an HTTP client for the app server's sends.
type tetherSide struct {
	work     string
	server   *process
	agent    *process
	proxy    *proxy
	listener *appListener
	client   *http.Client
	sendURL  string
	key      string
	token    string
	reg      registry
	fail     *failure
	stopping chan struct{}
}

// profileEnv names where the process called name writes its profiles,
// with -profile.
func profileEnv(c config, name string) []string {
	if c.profile == "" {
		return nil
	}
	return []string{"TETHER_CPUPROFILE=" + filepath.Join(c.profile, name)}
}

// listenAddr finds the address in tether-server's "listening" log line.
var listenAddr = regexp.MustCompile(`msg=listening addr=(\S+)`)

func startTether(ctx context.Context, c config, bins binaries, work string) (t *tetherSide, err error) {
	t = &tetherSide{work: work, fail: newFailure(), stopping: make(chan struct{})}
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	data := filepath.Join(work, "server")
	// The sender first: sender add creates the data directory.
	out, err := exec.CommandContext(ctx, bins.server, "sender", "add", "--data", data, "--name", "bench", "--json").Output()
	if err != nil {
		return t, fmt.Errorf("tether-server sender add: %w", exitDetail(err))
	}
	var snd struct {
		ID  string `json:"sender_id"`
		Key string `json:"server_key"`
	}
	if err := json.Unmarshal(out, &snd); err != nil || snd.ID == "" || snd.Key == "" {
		return t, fmt.Errorf("tether-server sender add printed %q: %v", out, err)
	}
	t.key = snd.Key

	addrs := make(chan string, 1)
	t.server, err = start(procSpec{
		name: "tether-server", path: bins.server, logPath: filepath.Join(work, "tether-server.log"),
		args: []string{"serve", "--listen", "127.0.0.1:0", "--data", data, "--enroll-key", benchEnrollKey},
		env:  profileEnv(c, "tether-server"),
		onLine: func(line string) {
			if m := listenAddr.FindStringSubmatch(line); m != nil {
				select {
				case addrs <- m[1]:
				default:
				}
			}
		},
	})
	if err != nil {
		return t, err
	}
	var addr string
	select {
	case addr = <-addrs:
	case <-t.server.done:
		return t, fmt.Errorf("tether-server exited before it listened\n%s", t.server.tail())
	case <-time.After(30 * time.Second):
		return t, errors.New("tether-server did not listen within 30 s")
	case <-ctx.Done():
		return t, ctx.Err()
	}
	t.fail.watch(t.server, t.stopping)
	t.sendURL = "http://" + addr + "/gcm/send"
	t.client = &http.Client{
		Timeout: time.Minute,
		Transport: &http.Transport{
			MaxIdleConnsPerHost: c.conns,
			MaxConnsPerHost:     c.conns,
			IdleConnTimeout:     10 * time.Minute,
		},
	}

	if t.proxy, err = newProxy(addr, websocketProtocol, nil); err != nil {
		return t, err
	}
	sock := filepath.Join(work, "tetherd.sock")
	t.agent, err = start(procSpec{
		name: "tetherd", path: bins.agent, logPath: filepath.Join(work, "tetherd.log"),
		args: []string{
			"run", "--config", "", "--server", "ws://" + t.proxy.addr(),
			"--data", filepath.Join(work, "agent"), "--socket", sock, "--dbus", "off",
			"--heartbeat", c.heartbeat.String(), "--enroll-key", benchEnrollKey,
		},
		env: profileEnv(c, "tetherd"),
	})
	if err != nil {
		return t, err
	}
	t.fail.watch(t.agent, t.stopping)
	if err := waitConnected(ctx, sock, t.fail); err != nil {
		return t, err
	}
	resp, err := askAgent(ctx, sock, ipc.Request{Op: "register", App: benchApp, Sender: snd.ID})
	if err != nil {
		return t, fmt.Errorf("register the app: %w", err)
	}
	t.token = resp.Token
	t.listener, err = listen(ctx, sock, benchApp, c.batchAcks, &t.reg, t.fail.set)
	return t, err
}

func (t *tetherSide) name() string        { return "Tether" }
func (t *tetherSide) registry() *registry { return &t.reg }
func (t *tetherSide) needsAck() bool      { return true }
func (t *tetherSide) wire() wireCounts    { return t.proxy.snapshot() }

// toggleProfiles signals tetherd and tether-server, built with -tags
// cpuprobe, to start or stop their profiles (internal/cpuprobe).
func (t *tetherSide) toggleProfiles() {
	for _, p := range []*process{t.agent, t.server} {
		p.cmd.Process.Signal(syscall.SIGUSR2)
	}
}

func (t *tetherSide) cpu() cpuTimes           { return measureCPU(t.agent, t.server) }
func (t *tetherSide) agentPID() int           { return t.agent.pid() }
func (t *tetherSide) failed() <-chan struct{} { return t.fail.ch }
func (t *tetherSide) err() error              { return t.fail.err }

// publish posts one message to the app's token, as an app server does.
func (t *tetherSide) publish(ctx context.Context, payload []byte) error {
	body, err := json.Marshal(map[string]any{"to": t.token, "data": map[string]string{dataKey: string(payload)}})
	if err != nil {
		return err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.sendURL, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "key="+t.key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := t.client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return fmt.Errorf("read the answer: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", resp.Status, bytes.TrimSpace(out))
	}
	var answer struct {
		Success int `json:"success"`
		Results []struct {
			Error string `json:"error"`
		} `json:"results"`
	}
	if err := json.Unmarshal(out, &answer); err != nil {
		return fmt.Errorf("the answer %q: %w", out, err)
	}
	if answer.Success != 1 {
		return fmt.Errorf("not accepted: %s", out)
	}
	return nil
}

// close stops the agent first, so that it leaves its session cleanly, then
// the server and the proxy.
func (t *tetherSide) close() {
	select {
	case <-t.stopping:
		return
	default:
		close(t.stopping)
	}
	if t.listener != nil {
		t.listener.close()
	}
	for _, p := range []*process{t.agent, t.server} {
		if p != nil {
			p.stop()
		}
	}
	if t.proxy != nil {
		t.proxy.close()
	}
	if t.client != nil {
		t.client.CloseIdleConnections()
	}
}

// waitConnected asks the agent for its status until it is connected to
// the server: before any run, not during one.
func waitConnected(ctx context.Context, sock string, fail *failure) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := askAgent(ctx, sock, ipc.Request{Op: "status"})
		if err == nil && resp.Status != nil && resp.Status.Connected {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("tetherd did not connect within 30 s (last: %v)", err)
		}
		select {
		case <-time.After(100 * time.Millisecond):
		case <-fail.ch:
			return fail.err
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// askAgent sends one request on a connection of its own and returns the
// answer, which must be a success.
func askAgent(ctx context.Context, sock string, req ipc.Request) (*ipc.Response, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	conn.SetDeadline(deadline)
	return request(conn, bufio.NewReader(conn), req)
}

// request writes req with id 0 and reads its answer.
func request(conn net.Conn, r *bufio.Reader, req ipc.Request) (*ipc.Response, error) {
	req.ID = json.RawMessage("0")
	line, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write(append(line, '\n')); err != nil {
		return nil, fmt.Errorf("%s: %w", req.Op, err)
	}
	line, err = r.ReadBytes('\n')
	if err != nil {
		return nil, fmt.Errorf("%s: %w", req.Op, err)
	}
	var resp ipc.Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return nil, fmt.Errorf("%s: the agent answered %q: %w", req.Op, line, err)
	}
	if !resp.OK {
		return nil, fmt.Errorf("%s: %w", req.Op, resp.Error)
	}
	return &resp, nil
}

// appListener is the tool's local app: it listens on the agent's socket
// and hands each message to its run. It acks each message with a request
// of its own at once, without waiting for the answers to earlier acks;
// or, batching, acks in one request every message received since its last
// ack was answered.
type appListener struct {
	conn  net.Conn
	r     *bufio.Reader
	app   string
	reg   *registry
	fail  func(error)
	batch bool

	mu      sync.Mutex
	queue   []queuedAck
	pending map[string][]*collector // ack request id → the runs of its messages
	nextID  int
	wake    chan struct{}
	stop    chan struct{}
	wg      sync.WaitGroup
}

type queuedAck struct {
	id  string // the message's
	col *collector
}

// maxAckIDs bounds the message IDs of one batched ack, well within a
// request line's limit.
const maxAckIDs = 500

// writeTimeout bounds each write to the agent, which reads promptly.
const writeTimeout = 10 * time.Second

func listen(ctx context.Context, sock, app string, batch bool, reg *registry, fail func(error)) (*appListener, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	l := &appListener{
		conn: conn, r: bufio.NewReaderSize(conn, 64<<10), app: app, reg: reg, fail: fail, batch: batch,
		pending: map[string][]*collector{}, wake: make(chan struct{}, 1), stop: make(chan struct{}),
	}
	conn.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := request(conn, l.r, ipc.Request{Op: "listen", App: app}); err != nil {
		conn.Close()
		return nil, err
	}
	// Reads wait for messages for as long as the tool runs; writes keep
	// their deadline, each its own.
	conn.SetDeadline(time.Time{})
	l.wg.Go(l.readLoop)
	l.wg.Go(l.writeLoop)
	return l, nil
}

func (l *appListener) close() {
	close(l.stop)
	l.conn.Close()
	l.wg.Wait()
}

func (l *appListener) readLoop() {
	for {
		b, err := l.r.ReadBytes('\n')
		if err != nil {
			select {
			case <-l.stop:
			default:
				l.fail(fmt.Errorf("the app's connection to tetherd: %w", err))
			}
			return
		}
		if err := l.handle(b, time.Now()); err != nil {
			l.fail(err)
			return
		}
	}
}

// handle takes a line from the agent: an event, or the answer to an ack.
func (l *appListener) handle(b []byte, now time.Time) error {
	var ev ipc.Event
	if err := json.Unmarshal(b, &ev); err == nil && ev.Event != "" {
		return l.event(ev, now)
	}
	var resp ipc.Response
	if err := json.Unmarshal(b, &resp); err != nil {
		return fmt.Errorf("tetherd sent %q: %w", b, err)
	}
	l.mu.Lock()
	cols, ok := l.pending[string(resp.ID)]
	delete(l.pending, string(resp.ID))
	l.mu.Unlock()
	switch {
	case !ok:
		return fmt.Errorf("tetherd answered request %s, which the app did not make", resp.ID)
	case !resp.OK:
		return fmt.Errorf("ack: %w", resp.Error)
	}
	for _, col := range cols {
		col.ack(now)
	}
	if l.batch {
		l.poke() // the next batch may go
	}
	return nil
}

func (l *appListener) event(ev ipc.Event, now time.Time) error {
	switch ev.Event {
	case ipc.EventMessage:
		if ev.Message == nil {
			return errors.New("tetherd sent a message event without its message")
		}
		col, err := l.reg.deliver([]byte(ev.Message.Data[dataKey]), now)
		if err != nil {
			return err
		}
		l.queueAck(ev.Message.ID, col)
	case ipc.EventDeletedMessages:
		// The messages are gone: the run cannot complete, the tool can go on.
		l.reg.failCurrent(fmt.Errorf("lost messages: tetherd reports %d deleted before the app had them (deleted_messages)", ev.Count))
	case ipc.EventReplaced:
		return errors.New("another listener took the app over")
	}
	return nil
}

func (l *appListener) queueAck(msgID string, col *collector) {
	l.mu.Lock()
	l.queue = append(l.queue, queuedAck{msgID, col})
	l.mu.Unlock()
	l.poke()
}

func (l *appListener) poke() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// writeLoop writes the acks queued so far, in one write.
func (l *appListener) writeLoop() {
	for {
		select {
		case <-l.wake:
		case <-l.stop:
			return
		}
		if buf := l.takeAcks(); len(buf) > 0 {
			l.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
			if _, err := l.conn.Write(buf); err != nil {
				select {
				case <-l.stop:
				default:
					l.fail(fmt.Errorf("ack: %w", err))
				}
				return
			}
		}
	}
}

// takeAcks turns the queued acks into request lines: one per message, or
// when batching, one for up to maxAckIDs messages once the last batch is
// answered.
func (l *appListener) takeAcks() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.batch && len(l.pending) > 0 {
		return nil
	}
	per := 1
	if l.batch {
		per = maxAckIDs
	}
	var buf []byte
	for len(l.queue) > 0 {
		n := min(per, len(l.queue))
		req := ipc.Request{Op: "ack", App: l.app}
		var cols []*collector
		for _, a := range l.queue[:n] {
			req.IDs = append(req.IDs, a.id)
			cols = append(cols, a.col)
		}
		l.queue = l.queue[n:]
		l.nextID++
		id := strconv.Itoa(l.nextID)
		req.ID = json.RawMessage(id)
		l.pending[id] = cols
		b, _ := json.Marshal(req) // strings only: it cannot fail
		buf = append(append(buf, b...), '\n')
		if l.batch {
			break
		}
	}
	return buf
}

// exitDetail adds what a failed command wrote to stderr to its error.
func exitDetail(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
	}
	return err
}
