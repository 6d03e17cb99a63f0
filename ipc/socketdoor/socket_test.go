// SPDX-License-Identifier: Apache-2.0

package socketdoor_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"tether/internal/testwait"
	"tether/ipc"
	"tether/ipc/ipctest"
	"tether/ipc/socketdoor"
)

const app = "com.example.app"

type harness struct {
	t    *testing.T
	path string
	b    *ipctest.Backend
	srv  *socketdoor.Server
}

// start serves an ipctest backend on a socket in a fresh directory and
// checks, when the test ends, that Close makes Serve return.
func start(t *testing.T) *harness {
	t.Helper()
	return startWith(t, socketdoor.Config{})
}

// startWith is start with the settings cfg has beyond path, backend and
// logger.
func startWith(t *testing.T, cfg socketdoor.Config) *harness {
	t.Helper()
	b := ipctest.New("push.example.test:443", "device-1")
	path := filepath.Join(t.TempDir(), "tetherd.sock")
	cfg.Path, cfg.Backend, cfg.Logger = path, b, ipctest.Logger(t)
	srv, err := socketdoor.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ipctest.Serve(t, srv)
	return &harness{t: t, path: path, b: b, srv: srv}
}

type client struct {
	t    *testing.T
	conn *net.UnixConn
	r    *bufio.Reader
}

func (h *harness) dial() *client {
	h.t.Helper()
	return dial(h.t, h.path)
}

func dial(t *testing.T, path string) *client {
	t.Helper()
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatalf("dial %s: %v", path, err)
	}
	t.Cleanup(func() { conn.Close() })
	return &client{t: t, conn: conn, r: bufio.NewReader(conn)}
}

func (c *client) write(line string) {
	c.t.Helper()
	if _, err := c.conn.Write([]byte(line + "\n")); err != nil {
		c.t.Fatalf("write %s: %v", line, err)
	}
}

func (c *client) readLine() ([]byte, error) {
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c.r.ReadBytes('\n')
}

func (c *client) line() []byte {
	c.t.Helper()
	line, err := c.readLine()
	if err != nil {
		c.t.Fatalf("read: %v (got %q)", err, line)
	}
	return line
}

// response reads the next line and fails the test unless it is a response.
func (c *client) response() ipc.Response {
	c.t.Helper()
	line := c.line()
	var probe struct{ Event string }
	var resp ipc.Response
	if err := json.Unmarshal(line, &probe); err != nil || probe.Event != "" {
		c.t.Fatalf("got %s, want a response", line)
	}
	if err := json.Unmarshal(line, &resp); err != nil {
		c.t.Fatalf("decode response %s: %v", line, err)
	}
	return resp
}

func (c *client) do(line string) ipc.Response {
	c.t.Helper()
	c.write(line)
	return c.response()
}

// event reads the next line and fails the test unless it is an event.
func (c *client) event() ipc.Event {
	c.t.Helper()
	line := c.line()
	var ev ipc.Event
	if err := json.Unmarshal(line, &ev); err != nil || ev.Event == "" {
		c.t.Fatalf("got %s, want an event", line)
	}
	return ev
}

func (c *client) expectEOF() {
	c.t.Helper()
	line, err := c.readLine()
	if err != io.EOF {
		c.t.Fatalf("read %q, %v; want the door to close the connection", line, err)
	}
}

func wantOK(t *testing.T, resp ipc.Response) {
	t.Helper()
	if !resp.OK || resp.Error != nil {
		t.Fatalf("got %+v (error %v), want ok", resp, resp.Error)
	}
}

func wantError(t *testing.T, resp ipc.Response, code, text string) {
	t.Helper()
	if resp.OK || resp.Error == nil || resp.Error.Code != code || !strings.Contains(resp.Error.Message, text) {
		t.Fatalf("got %+v (error %v), want error %s with %q", resp, resp.Error, code, text)
	}
}

// waitFor waits for a condition the door reaches on its own goroutines,
// such as cancelling a subscription after a client has gone.
func TestEveryOp(t *testing.T) {
	h := start(t)
	c := h.dial()
	var token string
	steps := []struct {
		name  string
		line  string
		check func(t *testing.T, resp ipc.Response)
	}{
		{"register", `{"id":1,"op":"register","app":"com.example.app","sender":"123"}`, func(t *testing.T, resp ipc.Response) {
			wantOK(t, resp)
			if resp.Token == "" || string(resp.ID) != "1" {
				t.Fatalf("register answered %+v, want a token and id 1", resp)
			}
			token = resp.Token
		}},
		{"register again gives the same token", `{"id":"two","op":"register","app":"com.example.app","sender":"123"}`, func(t *testing.T, resp ipc.Response) {
			wantOK(t, resp)
			if resp.Token != token || string(resp.ID) != `"two"` {
				t.Fatalf("register answered %+v, want token %q and id \"two\"", resp, token)
			}
		}},
		{"status", `{"op":"status"}`, func(t *testing.T, resp ipc.Response) {
			wantOK(t, resp)
			want := ipc.Status{Connected: true, Server: "push.example.test:443", DeviceID: "device-1", Apps: 1, PowerMode: "mains"}
			if resp.Status == nil || *resp.Status != want || resp.ID != nil {
				t.Fatalf("status answered %+v, want %+v and no id", resp, want)
			}
		}},
		{"subscribe_topic", `{"id":5,"op":"subscribe_topic","app":"com.example.app","sender":"123","topic":"alerts"}`, func(t *testing.T, resp ipc.Response) {
			wantOK(t, resp)
			if got := h.b.Topics(app, "123"); !reflect.DeepEqual(got, []string{"alerts"}) {
				t.Fatalf("subscribed to %q, want [alerts]", got)
			}
		}},
		{"unsubscribe_topic", `{"id":6,"op":"unsubscribe_topic","app":"com.example.app","sender":"123","topic":"alerts"}`, func(t *testing.T, resp ipc.Response) {
			wantOK(t, resp)
			if got := h.b.Topics(app, "123"); len(got) != 0 {
				t.Fatalf("still subscribed to %q", got)
			}
		}},
		{"send", `{"id":3,"op":"send","app":"com.example.app","to":"123","ttl":60,"priority":"high","data":{"k":"v"}}`, func(t *testing.T, resp ipc.Response) {
			wantOK(t, resp)
			sends := h.b.Sends(app)
			if len(sends) != 1 || resp.MessageID != sends[0].ID || resp.Sent {
				t.Fatalf("send answered %+v; backend has %+v", resp, sends)
			}
			ttl := int64(60)
			want := ipc.SendRequest{App: app, To: "123", ID: resp.MessageID, TTL: &ttl, Priority: "high", Data: map[string]string{"k": "v"}}
			if !reflect.DeepEqual(sends[0], want) {
				t.Fatalf("backend got %+v, want %+v", sends[0], want)
			}
		}},
		{"status counts the pending message", `{"op":"status"}`, func(t *testing.T, resp ipc.Response) {
			wantOK(t, resp)
			if resp.Status == nil || resp.Status.PendingUpstream != 1 {
				t.Fatalf("status answered %+v, want 1 pending upstream", resp.Status)
			}
		}},
		{"listen", `{"id":4,"op":"listen","app":"com.example.app"}`, func(t *testing.T, resp ipc.Response) {
			wantOK(t, resp)
			if !h.b.Listening(app) {
				t.Fatal("the backend has no listener after listen")
			}
		}},
		{"ack", `{"id":5,"op":"ack","app":"com.example.app","ids":["m1","m2"]}`, func(t *testing.T, resp ipc.Response) {
			wantOK(t, resp)
			if got := h.b.Acked(app); !reflect.DeepEqual(got, []string{"m1", "m2"}) {
				t.Fatalf("backend has acks %q", got)
			}
		}},
		{"unregister", `{"id":6,"op":"unregister","app":"com.example.app","sender":"123"}`, wantOK},
		{"unregister again", `{"id":7,"op":"unregister","app":"com.example.app","sender":"123"}`, func(t *testing.T, resp ipc.Response) {
			wantError(t, resp, ipc.CodeNotRegistered, `unregister app "com.example.app" from sender "123": not registered`)
		}},
	}
	for _, step := range steps {
		t.Run(step.name, func(t *testing.T) {
			step.check(t, c.do(step.line))
		})
	}
}

func TestErrors(t *testing.T) {
	h := start(t)
	h.b.SetOwner("com.other", uint32(os.Getuid())+1)
	c := h.dial()
	wantOK(t, c.do(`{"op":"register","app":"com.example.app","sender":"123"}`))

	tests := []struct {
		name, line, code, text, id string
	}{
		{"malformed JSON", `{"op":"status"`, ipc.CodeBadRequest, "invalid JSON: unexpected end of JSON input", ""},
		{"not an object", `"status"`, ipc.CodeBadRequest, "must be a JSON object, not string", ""},
		{"no op", `{"id":1}`, ipc.CodeBadRequest, `no "op"`, "1"},
		{"unknown op", `{"id":2,"op":"subscribe"}`, ipc.CodeUnknownOp, `unknown op "subscribe"`, "2"},
		{"non-string data value", `{"id":3,"op":"send","app":"com.example.app","to":"123","data":{"ok":"x","count":3}}`, ipc.CodeInvalidArgument, `key "count" is a number`, "3"},
		{"ttl not an integer", `{"id":4,"op":"send","app":"com.example.app","to":"123","ttl":"1h"}`, ipc.CodeInvalidArgument, `field "ttl" must be an integer`, "4"},
		{"missing recipient", `{"id":5,"op":"send","app":"com.example.app"}`, ipc.CodeInvalidArgument, "no recipient", "5"},
		{"app of another user", `{"id":6,"op":"listen","app":"com.other"}`, ipc.CodePermissionDenied, `listen for app "com.other": it belongs to uid`, "6"},
		{"register app of another user", `{"id":7,"op":"register","app":"com.other","sender":"1"}`, ipc.CodePermissionDenied, "permission denied", "7"},
		{"unknown app", `{"id":8,"op":"ack","app":"com.nobody","ids":["x"]}`, ipc.CodeUnknownApp, `ack for app "com.nobody": unknown app`, "8"},
		{"data too big", `{"id":9,"op":"send","app":"com.example.app","to":"123","data":{"k":"` + strings.Repeat("v", 4096) + `"}}`, ipc.CodeMessageTooBig, "4097 bytes, limit 4096", "9"},
		{"topic of another user's app", `{"id":10,"op":"subscribe_topic","app":"com.other","sender":"1","topic":"t"}`, ipc.CodePermissionDenied, "it belongs to uid", "10"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := c.do(tt.line)
			wantError(t, resp, tt.code, tt.text)
			if string(resp.ID) != tt.id {
				t.Errorf("response has id %s, want %s", resp.ID, tt.id)
			}
			// The connection goes on working.
			wantOK(t, c.do(`{"op":"status"}`))
		})
	}
	if sends := h.b.Sends(app); len(sends) != 0 {
		t.Errorf("rejected sends reached the backend: %+v", sends)
	}
}

func TestSendLimits(t *testing.T) {
	h := start(t)
	c := h.dial()
	wantOK(t, c.do(`{"op":"register","app":"com.example.app","sender":"123"}`))

	h.b.SetConnected(false)
	wantError(t, c.do(`{"op":"send","app":"com.example.app","to":"123","ttl":0,"data":{"k":"v"}}`), ipc.CodeOffline, "ttl 0: not connected to the server")
	for range ipctest.MaxPending {
		wantOK(t, c.do(`{"op":"send","app":"com.example.app","to":"123","data":{"k":"v"}}`))
	}
	wantError(t, c.do(`{"op":"send","app":"com.example.app","to":"123","data":{"k":"v"}}`), ipc.CodeTooManyMessages, "too many pending messages")
}

func TestListenerEvents(t *testing.T) {
	h := start(t)
	l := h.dial()
	wantOK(t, l.do(`{"op":"register","app":"com.example.app","sender":"123"}`))
	sent := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	h.b.Push(ipc.Message{ID: "0:1%ab", App: app, From: "123", CollapseKey: "update", Data: map[string]string{"k": "v"}, Priority: "high", SentTime: sent, TTL: 3600})
	h.b.Push(ipc.Message{ID: "0:2%ab", App: app, From: "123", Data: map[string]string{}})

	// The backend delivers stored messages inside Listen; the app must
	// still see the listen response first.
	wantOK(t, l.do(`{"id":"L","op":"listen","app":"com.example.app"}`))
	var first map[string]any
	if err := json.Unmarshal(l.line(), &first); err != nil {
		t.Fatal(err)
	}
	wantFirst := map[string]any{"event": "message", "message": map[string]any{
		"message_id": "0:1%ab", "app": app, "from": "123", "collapse_key": "update",
		"data": map[string]any{"k": "v"}, "priority": "high", "sent_time": "2025-03-01T12:00:00Z", "ttl": 3600.0,
	}}
	if !reflect.DeepEqual(first, wantFirst) {
		t.Fatalf("first event = %v, want %v", first, wantFirst)
	}
	if ev := l.event(); ev.Event != ipc.EventMessage || ev.Message.ID != "0:2%ab" {
		t.Fatalf("second event = %+v, want message 0:2%%ab", ev)
	}
	h.b.Push(ipc.Message{ID: "0:3%ab", App: app, From: "123", Data: map[string]string{"n": "3"}})
	if ev := l.event(); ev.Event != ipc.EventMessage || ev.Message.ID != "0:3%ab" || ev.Message.Data["n"] != "3" {
		t.Fatalf("event = %+v, want message 0:3%%ab", ev)
	}
	wantOK(t, l.do(`{"op":"ack","app":"com.example.app","ids":["0:1%ab","0:2%ab"]}`))

	// Upstream outcomes reach the listener, whichever connection sent.
	s := h.dial()
	wantOK(t, s.do(`{"op":"send","app":"com.example.app","to":"123","message_id":"up-a","data":{"k":"v"}}`))
	wantOK(t, s.do(`{"op":"send","app":"com.example.app","to":"123","message_id":"up-b","data":{"k":"v"}}`))
	if err := h.b.Complete(app, "up-a", ""); err != nil {
		t.Fatal(err)
	}
	if err := h.b.Complete(app, "up-b", "ttl expired before the server took it"); err != nil {
		t.Fatal(err)
	}
	h.b.DeleteMessages(app, 7)
	h.b.RefreshToken(app, "123", "token-new")
	for _, want := range []ipc.Event{
		{Event: ipc.EventSent, App: app, MessageID: "up-a"},
		{Event: ipc.EventSendError, App: app, MessageID: "up-b", Error: "ttl expired before the server took it"},
		{Event: ipc.EventDeletedMessages, App: app, Count: 7},
		{Event: ipc.EventTokenRefreshed, App: app, Sender: "123", Token: "token-new"},
	} {
		if got := l.event(); !reflect.DeepEqual(got, want) {
			t.Errorf("event = %+v, want %+v", got, want)
		}
	}
}

func TestReplacedListener(t *testing.T) {
	h := start(t)
	a := h.dial()
	wantOK(t, a.do(`{"op":"register","app":"com.example.app","sender":"123"}`))
	wantOK(t, a.do(`{"op":"listen","app":"com.example.app"}`))
	h.b.Push(ipc.Message{ID: "m1", App: app, From: "123"})
	if ev := a.event(); ev.Message == nil || ev.Message.ID != "m1" {
		t.Fatalf("a got %+v, want m1", ev)
	}

	b := h.dial()
	wantOK(t, b.do(`{"op":"listen","app":"com.example.app"}`))
	if ev := a.event(); ev != (ipc.Event{Event: ipc.EventReplaced, App: app}) {
		t.Fatalf("a got %+v, want replaced", ev)
	}
	a.expectEOF()
	// m1 was not acked, so the new listener gets it again.
	if ev := b.event(); ev.Message == nil || ev.Message.ID != "m1" {
		t.Fatalf("b got %+v, want m1 again", ev)
	}
	// Closing the replaced connection leaves the new subscription alone.
	h.b.Push(ipc.Message{ID: "m2", App: app, From: "123"})
	if ev := b.event(); ev.Message == nil || ev.Message.ID != "m2" {
		t.Fatalf("b got %+v, want m2", ev)
	}
	b.conn.Close()
	testwait.Until(t, "the closed listener's subscription is cancelled", 10*time.Second, func() bool { return !h.b.Listening(app) })
}

func TestOneListenPerConnection(t *testing.T) {
	h := start(t)
	c := h.dial()
	wantError(t, c.do(`{"op":"listen","app":"com.example.app"}`), ipc.CodeUnknownApp, "unknown app")
	wantOK(t, c.do(`{"op":"register","app":"com.example.app","sender":"123"}`))
	wantOK(t, c.do(`{"op":"listen","app":"com.example.app"}`))
	wantError(t, c.do(`{"id":9,"op":"listen","app":"com.example.app"}`), ipc.CodeAlreadyListening, `already listens for app "com.example.app"`)
	h.b.Push(ipc.Message{ID: "m1", App: app, From: "123"})
	if ev := c.event(); ev.Message == nil || ev.Message.ID != "m1" {
		t.Fatalf("got %+v, want m1", ev)
	}
}

func TestSendWait(t *testing.T) {
	h := start(t)
	c := h.dial()
	wantOK(t, c.do(`{"op":"register","app":"com.example.app","sender":"123"}`))

	c.write(`{"id":1,"op":"send","app":"com.example.app","to":"123","message_id":"m-1","data":{"k":"v"},"wait":true}`)
	c.write(`{"id":2,"op":"send","app":"com.example.app","to":"123","message_id":"m-2","data":{"k":"v"},"wait":true}`)
	// The waiting sends do not hold up the connection.
	if resp := c.do(`{"id":3,"op":"status"}`); string(resp.ID) != "3" || resp.Status.PendingUpstream != 2 {
		t.Fatalf("got %+v, want the status with 2 pending", resp)
	}
	if err := h.b.Complete(app, "m-2", "ttl expired"); err != nil {
		t.Fatal(err)
	}
	resp := c.response()
	wantError(t, resp, ipc.CodeSendError, "ttl expired")
	if string(resp.ID) != "2" || resp.MessageID != "m-2" {
		t.Fatalf("got %+v, want the failure of m-2 with id 2", resp)
	}
	if err := h.b.Complete(app, "m-1", ""); err != nil {
		t.Fatal(err)
	}
	resp = c.response()
	wantOK(t, resp)
	if string(resp.ID) != "1" || resp.MessageID != "m-1" || !resp.Sent {
		t.Fatalf("got %+v, want m-1 sent with id 1", resp)
	}
}

// TestPipelinedAcksShareACall: acks an app writes one after another
// without waiting reach the backend as one call, answered each in order;
// an ack for another app, or another op, is not merged.
func TestPipelinedAcksShareACall(t *testing.T) {
	h := start(t)
	c := h.dial()
	for _, app := range []string{"com.example.a", "com.example.b"} {
		wantOK(t, c.do(`{"op":"register","app":"`+app+`","sender":"1"}`))
	}
	lines := []string{
		`{"id":1,"op":"ack","app":"com.example.a","ids":["m1"]}`,
		`{"id":2,"op":"ack","app":"com.example.a","ids":["m2","m3"]}`,
		`{"id":3,"op":"ack","app":"com.example.a","ids":["m4"]}`,
		`{"id":4,"op":"ack","app":"com.example.b","ids":["m5"]}`,
		`{"id":5,"op":"ack","app":"com.example.a","ids":["m6"]}`,
		`{"id":6,"op":"status"}`,
	}
	if _, err := c.conn.Write([]byte(strings.Join(lines, "\n") + "\n")); err != nil {
		t.Fatal(err)
	}
	for i := range lines {
		resp := c.response()
		if string(resp.ID) != fmt.Sprint(i+1) || !resp.OK {
			t.Fatalf("answer %d: %+v", i+1, resp)
		}
	}
	if got := h.b.Acked("com.example.a"); !slices.Equal(got, []string{"m1", "m2", "m3", "m4", "m6"}) {
		t.Errorf("app a acked %v", got)
	}
	if n := h.b.AckCalls("com.example.a"); n != 2 {
		t.Errorf("app a's four acks took %d calls, want 2 (three merged, one after app b's)", n)
	}
}

func TestLineTooLong(t *testing.T) {
	h := start(t)
	c := h.dial()
	request := `{"op":"status"}`
	wantOK(t, c.do(request+strings.Repeat(" ", ipc.MaxLineSize-len(request))))
	c.write(request + strings.Repeat(" ", ipc.MaxLineSize-len(request)+1))
	wantError(t, c.response(), ipc.CodeLineTooLong, "longer than 65536 bytes")
	c.expectEOF()
	// Other apps are not affected.
	wantOK(t, h.dial().do(request))
}

// TestConnectionsPerUserBounded: one user's connection over the limit is
// answered TooManyConnections and closed; closing one makes room.
func TestConnectionsPerUserBounded(t *testing.T) {
	h := startWith(t, socketdoor.Config{MaxConnsPerUser: 2})
	first, second := h.dial(), h.dial()
	wantOK(t, first.do(`{"op":"status"}`))
	wantOK(t, second.do(`{"op":"status"}`))
	third := h.dial()
	wantError(t, third.response(), ipc.CodeTooManyConnections, "2 connections")
	third.expectEOF()
	first.conn.Close()
	// Until the door has seen first go, a new connection is refused: its
	// answer is the error, and the door may close it before the request
	// is written.
	testwait.Until(t, "room for another connection", 10*time.Second, func() bool {
		c := h.dial()
		defer c.conn.Close()
		c.conn.Write([]byte(`{"op":"status"}` + "\n"))
		line, _ := c.readLine()
		var resp ipc.Response
		return json.Unmarshal(line, &resp) == nil && resp.OK
	})
}

func TestEndOfInput(t *testing.T) {
	h := start(t)
	c := h.dial()
	// Two requests, the last without a newline, then the app shuts its
	// side: both are answered before the door closes.
	if _, err := c.conn.Write([]byte(`{"id":1,"op":"status"}` + "\n\n" + `{"id":2,"op":"register","app":"com.example.app","sender":"1"}`)); err != nil {
		t.Fatal(err)
	}
	if err := c.conn.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if resp := c.response(); string(resp.ID) != "1" || !resp.OK {
		t.Fatalf("got %+v, want the status", resp)
	}
	if resp := c.response(); string(resp.ID) != "2" || resp.Token == "" {
		t.Fatalf("got %+v, want the token", resp)
	}
	c.expectEOF()
}

func TestCallerFromKernel(t *testing.T) {
	h := start(t)
	wantOK(t, h.dial().do(`{"op":"register","app":"com.example.app","sender":"123"}`))
	want := ipc.Caller{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), PID: int32(os.Getpid())}
	if got := h.b.LastCaller(); got != want {
		t.Fatalf("backend saw caller %+v, want %+v", got, want)
	}
}

func TestSlowListenerIsDropped(t *testing.T) {
	// Writes never time out here: the app must be dropped for falling
	// behind, not for being slow to read one line.
	h := startWith(t, socketdoor.Config{WriteTimeout: time.Hour})
	c := h.dial()
	wantOK(t, c.do(`{"op":"register","app":"com.example.app","sender":"123"}`))
	wantOK(t, c.do(`{"op":"listen","app":"com.example.app"}`))
	// The app reads nothing while far more events come than the socket
	// buffer and the door's queue hold. None of the calls may block.
	const events = 50000
	pushed := make(chan struct{})
	go func() {
		defer close(pushed)
		for range events {
			h.b.DeleteMessages(app, 1)
		}
	}()
	select {
	case <-pushed:
	case <-time.After(time.Minute):
		t.Fatal("a Listener call blocked on an app that does not read")
	}
	testwait.Until(t, "the slow listener's subscription is cancelled", 10*time.Second, func() bool { return !h.b.Listening(app) })
	n := 0
	for {
		line, err := c.readLine()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("after %d events: %v", n, err)
		}
		if !strings.Contains(string(line), `"deleted_messages"`) {
			t.Fatalf("got %s, want deleted_messages", line)
		}
		n++
	}
	if n >= events {
		t.Fatalf("the app got all %d events; it should have been dropped", n)
	}
}

func TestCloseStopsEverything(t *testing.T) {
	before := runtime.NumGoroutine()
	b := ipctest.New("s", "d")
	path := filepath.Join(t.TempDir(), "tetherd.sock")
	srv, err := socketdoor.New(socketdoor.Config{Path: path, Backend: b, Logger: ipctest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	closeAndWait := ipctest.Serve(t, srv)

	listener := dial(t, path)
	wantOK(t, listener.do(`{"op":"register","app":"com.example.app","sender":"123"}`))
	wantOK(t, listener.do(`{"op":"listen","app":"com.example.app"}`))
	waiter := dial(t, path)
	waiter.write(`{"id":1,"op":"send","app":"com.example.app","to":"123","data":{},"wait":true}`)
	wantOK(t, waiter.do(`{"id":2,"op":"status"}`))
	idle := dial(t, path)
	// A connection still in the listen backlog would be reset, not
	// closed; one answered request shows the door has it.
	wantOK(t, idle.do(`{"op":"status"}`))

	closeAndWait()
	for _, c := range []*client{listener, waiter, idle} {
		c.expectEOF()
	}
	if b.Listening(app) {
		t.Error("the listener's subscription outlived the server")
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("socket file after Close: %v", err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	testwait.Until(t, "the server's goroutines are gone", 10*time.Second, func() bool { return runtime.NumGoroutine() <= before })
}

func TestServeEndsWithContext(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tetherd.sock")
	srv, err := socketdoor.New(socketdoor.Config{Path: path, Backend: ipctest.New("s", "d"), Logger: ipctest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	c := dial(t, path)
	wantOK(t, c.do(`{"op":"status"}`))
	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	c.expectEOF()
}

func TestNewSocketServer(t *testing.T) {
	tests := []struct {
		name    string
		mode    os.FileMode
		prepare func(t *testing.T, path string)
		wantErr string
		wantDir os.FileMode
	}{
		{name: "creates the directory", wantDir: 0o755},
		{name: "custom mode", mode: 0o660},
		{name: "replaces a stale socket", prepare: func(t *testing.T, path string) {
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			ln.SetUnlinkOnClose(false)
			ln.Close()
		}},
		{name: "refuses a live socket", prepare: func(t *testing.T, path string) {
			ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { ln.Close() })
		}, wantErr: "another process is listening on"},
		{name: "refuses a regular file", prepare: func(t *testing.T, path string) {
			if err := os.WriteFile(path, []byte("keep me"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, wantErr: "exists and is not a socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "run", "tether")
			path := filepath.Join(dir, "tetherd.sock")
			if tt.prepare != nil {
				if err := os.MkdirAll(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				tt.prepare(t, path)
			}
			srv, err := socketdoor.New(socketdoor.Config{Path: path, Mode: tt.mode, Backend: ipctest.New("s", "d"), Logger: ipctest.Logger(t)})
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					if srv != nil {
						srv.Close()
					}
					t.Fatalf("New = %v, want error with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer srv.Close()
			fi, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			wantMode := tt.mode
			if wantMode == 0 {
				wantMode = socketdoor.DefaultMode
			}
			if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != wantMode {
				t.Errorf("socket file mode %v, want socket %v", fi.Mode(), wantMode)
			}
			if tt.wantDir != 0 {
				di, err := os.Stat(dir)
				if err != nil {
					t.Fatal(err)
				}
				if di.Mode().Perm() != tt.wantDir {
					t.Errorf("directory mode %v, want %v", di.Mode().Perm(), tt.wantDir)
				}
			}
			go srv.Serve(context.Background())
			wantOK(t, dial(t, path).do(`{"op":"status"}`))
		})
	}

	for _, cfg := range []socketdoor.Config{{Backend: ipctest.New("s", "d")}, {Path: filepath.Join(t.TempDir(), "s.sock")}} {
		if srv, err := socketdoor.New(cfg); err == nil {
			srv.Close()
			t.Errorf("New(%+v) succeeded, want an error", cfg)
		}
	}
}
