// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const app = "com.example.thermo"

// fleet is one server with a sender and one agent with a registered app.
type fleet struct {
	srv    *server
	hook   *webhook
	sender string
	key    string
	agent  *agent
	token  string
	// served are the messages stillServed saw arrive.
	served []string
}

func newFleet(t *testing.T) *fleet {
	t.Helper()
	f := &fleet{hook: startWebhook(t)}
	f.srv = startServer(t)
	f.sender, f.key = f.srv.addSender("thermo-backend", f.hook.url())
	f.agent = startAgent(t, f.srv.url())
	f.token = f.agent.register(app, f.sender)
	t.Cleanup(func() { checkNoSecretsLogged(t, f.key, f.token) })
	return f
}

// checkNoSecretsLogged reads the log of every process the test started and
// fails if one holds a secret.
func checkNoSecretsLogged(t *testing.T, secrets ...string) {
	root := filepath.Dir(t.TempDir())
	filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".log") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return nil
		}
		for _, s := range secrets {
			if strings.Contains(string(b), s) {
				t.Errorf("%s logs a secret (%.6s...)", filepath.Base(path), s)
			}
		}
		return nil
	})
}

func (f *fleet) sendData(data map[string]any, extra map[string]any) string {
	msg := map[string]any{"to": f.token, "data": data}
	for k, v := range extra {
		msg[k] = v
	}
	return f.srv.mustSend(f.key, msg)
}

func TestDownstreamToOnlineDevice(t *testing.T) {
	f := newFleet(t)
	msgs, _ := f.agent.listen(app)
	id := f.sendData(map[string]any{"setpoint": "21.5", "room": 3, "on": true}, map[string]any{"collapse_key": "setpoint", "priority": "high"})
	d := next(t, msgs)
	if d.MessageID != id || d.From != f.sender || d.App != app || d.CollapseKey != "setpoint" {
		t.Fatalf("delivered %+v, want message %s from %s for %s with collapse key setpoint", d, id, f.sender, app)
	}
	want := map[string]string{"setpoint": "21.5", "room": "3", "on": "true"}
	for k, v := range want {
		if d.Data[k] != v {
			t.Errorf("data[%q] = %q, want %q (non-string values arrive as their JSON text)", k, d.Data[k], v)
		}
	}
}

func TestDownstreamToOfflineDeviceThatConnectsLater(t *testing.T) {
	f := newFleet(t)
	f.agent.p.stop()
	id := f.sendData(map[string]any{"n": "1"}, nil)
	f.agent.start()
	msgs, _ := f.agent.listen(app)
	if d := next(t, msgs); d.MessageID != id {
		t.Fatalf("delivered %s, want %s", d.MessageID, id)
	}
}

func TestDownstreamToAppThatListensLater(t *testing.T) {
	f := newFleet(t)
	first := f.sendData(map[string]any{"n": "1"}, nil)
	// The agent is online: the message reaches the device and waits there
	// for the app. Restarting the agent shows it is held in the device's store.
	f.agent.p.stop()
	f.agent.start()
	// This listener takes two messages and exits once both acks are confirmed.
	msgs, listener := f.agent.listen(app, "--count", "2")
	if d := next(t, msgs); d.MessageID != first {
		t.Fatalf("delivered %s, want %s", d.MessageID, first)
	}
	second := f.sendData(map[string]any{"n": "2"}, nil)
	if d := next(t, msgs); d.MessageID != second {
		t.Fatalf("delivered %s, want %s", d.MessageID, second)
	}
	<-listener.done
	if listener.err != nil {
		t.Fatalf("tetherctl listen --count 2 failed: %v\n%s", listener.err, listener.log())
	}
	// Acked messages are not delivered again to the next listener.
	third := f.sendData(map[string]any{"n": "3"}, nil)
	msgs, _ = f.agent.listen(app)
	if d := next(t, msgs); d.MessageID != third {
		t.Fatalf("a new listener got %s first, want only the unacked %s", d.MessageID, third)
	}
}

func TestCollapseKeyReplacesPendingMessage(t *testing.T) {
	f := newFleet(t)
	f.agent.p.stop()
	for i := range 3 {
		f.sendData(map[string]any{"setpoint": fmt.Sprint(18 + i)}, map[string]any{"collapse_key": "setpoint"})
	}
	other := f.sendData(map[string]any{"alarm": "door"}, nil)
	last := f.sendData(map[string]any{"setpoint": "22"}, map[string]any{"collapse_key": "setpoint"})
	f.agent.start()
	msgs, _ := f.agent.listen(app)
	got := map[string]delivered{}
	for range 2 {
		d := next(t, msgs)
		got[d.MessageID] = d
	}
	sentinel := f.sendData(map[string]any{"end": "1"}, nil)
	if d := next(t, msgs); d.MessageID != sentinel {
		t.Fatalf("after the two pending messages came %+v, want only the sentinel %s: a replaced message was delivered", d, sentinel)
	}
	if _, ok := got[other]; !ok {
		t.Errorf("the message without collapse key was not delivered: %v", got)
	}
	if d, ok := got[last]; !ok || d.Data["setpoint"] != "22" {
		t.Errorf("the newest message under the collapse key was not delivered: %v", got)
	}
}

func TestTTLExpiryAtServer(t *testing.T) {
	f := newFleet(t)
	f.agent.p.stop()
	expired := f.sendData(map[string]any{"short": "lived"}, map[string]any{"time_to_live": 1})
	time.Sleep(2100 * time.Millisecond) // let the one-second TTL run out
	kept := f.sendData(map[string]any{"long": "lived"}, map[string]any{"time_to_live": 3600})
	f.agent.start()
	msgs, _ := f.agent.listen(app)
	d := next(t, msgs)
	if d.MessageID == expired {
		t.Fatalf("message %s was delivered after its TTL ran out", expired)
	}
	if d.MessageID != kept {
		t.Fatalf("delivered %s, want %s", d.MessageID, kept)
	}
}

func TestTTLZeroToOfflineDeviceIsNotStored(t *testing.T) {
	f := newFleet(t)
	f.agent.p.stop()
	nowOrNever := f.sendData(map[string]any{"now": "or never"}, map[string]any{"time_to_live": 0})
	kept := f.sendData(map[string]any{"later": "ok"}, nil)
	f.agent.start()
	msgs, _ := f.agent.listen(app)
	if d := next(t, msgs); d.MessageID != kept {
		t.Fatalf("delivered %s (TTL 0 one is %s), want %s", d.MessageID, nowOrNever, kept)
	}
}

func TestUpstreamReachesWebhook(t *testing.T) {
	f := newFleet(t)
	out, err := f.agent.ctl("send", "--app", app, "--to", f.sender, "--id", "up-1", "--wait", "temp=20.5", "unit=C")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "up-1") {
		t.Errorf("tetherctl send printed %q, want the message ID", out)
	}
	got := f.hook.next(t)
	data, _ := got["data"].(map[string]any)
	if got["from"] != f.token || got["category"] != app || got["message_id"] != "up-1" || data["temp"] != "20.5" || data["unit"] != "C" {
		t.Fatalf("webhook got %v, want from=token category=%s message_id=up-1 data temp=20.5 unit=C", got, app)
	}
	// A retry of the same ID (an app that did not see the result) does not
	// reach the app server twice.
	if _, err := f.agent.ctl("send", "--app", app, "--to", f.sender, "--id", "up-1", "--wait", "temp=20.5"); err != nil {
		t.Fatal(err)
	}
	if _, err := f.agent.ctl("send", "--app", app, "--to", f.sender, "--id", "up-2", "--wait", "temp=21"); err != nil {
		t.Fatal(err)
	}
	if got := f.hook.next(t); got["message_id"] != "up-2" {
		t.Fatalf("after a repeated up-1 the webhook got %v, want up-2", got)
	}
}

func TestUpstreamWhileOfflineIsSentOnReconnect(t *testing.T) {
	f := newFleet(t)
	f.srv.p.stop()
	if _, err := f.agent.ctl("send", "--app", app, "--to", f.sender, "--id", "queued-1", "reading=7"); err != nil {
		t.Fatalf("an upstream message is queued while the server is down: %v", err)
	}
	f.srv.start()
	if got := f.hook.next(t); got["message_id"] != "queued-1" {
		t.Fatalf("webhook got %v, want queued-1", got)
	}
}

func TestUpstreamPendingLimit(t *testing.T) {
	f := newFleet(t)
	f.srv.p.stop()
	c, err := dialApp(f.agent.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	for i := range 20 {
		if _, err := c.call(map[string]any{"op": "send", "app": app, "to": f.sender, "data": map[string]any{"i": fmt.Sprint(i)}}); err != nil {
			t.Fatalf("pending message %d refused: %v", i, err)
		}
	}
	_, err = c.call(map[string]any{"op": "send", "app": app, "to": f.sender, "data": map[string]any{"i": "21"}})
	var ce *callError
	if !errors.As(err, &ce) || ce.Code != "TooManyMessages" {
		t.Fatalf("the 21st pending message: %v, want TooManyMessages", err)
	}
	f.srv.start()
	for range 20 {
		f.hook.next(t)
	}
}

func TestBadInputOnHTTP(t *testing.T) {
	f := newFleet(t)
	big := strings.Repeat("x", 4097)
	cases := []struct {
		name        string
		key         string
		contentType string
		body        string
		status      int
		want        string
	}{
		{"malformed JSON", f.key, "application/json", `{"to": "x", "data": {`, http.StatusBadRequest, ""},
		{"wrong field type", f.key, "application/json", `{"to": 5}`, http.StatusBadRequest, ""},
		{"bad key", "not-a-key", "application/json", `{"to": "x"}`, http.StatusUnauthorized, ""},
		{"no recipient", f.key, "application/json", `{"data": {"a": "b"}}`, http.StatusOK, "MissingRegistration"},
		{"unknown token", f.key, "application/json", `{"to": "no-such-token", "data": {"a": "b"}}`, http.StatusOK, "InvalidRegistration"},
		{"oversized data", f.key, "application/json", `{"to": "` + f.token + `", "data": {"a": "` + big + `"}}`, http.StatusOK, "MessageTooBig"},
		{"bad ttl", f.key, "application/json", `{"to": "` + f.token + `", "time_to_live": 2419201}`, http.StatusOK, "InvalidTtl"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body, err := f.srv.post(tc.key, tc.contentType, []byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if status != tc.status {
				t.Fatalf("status %d (%s), want %d", status, body, tc.status)
			}
			if tc.status != http.StatusOK && len(strings.TrimSpace(string(body))) == 0 {
				t.Fatalf("status %d with an empty body: the error must say what is wrong", status)
			}
			if tc.want != "" {
				var r sendResponse
				if err := json.Unmarshal(body, &r); err != nil || len(r.Results) != 1 || r.Results[0].Error != tc.want || r.Failure != 1 {
					t.Fatalf("answer %s, want one result with error %s", body, tc.want)
				}
			}
		})
	}
	// The server still serves the device after all that.
	msgs, _ := f.agent.listen(app)
	id := f.sendData(map[string]any{"still": "here"}, nil)
	if d := next(t, msgs); d.MessageID != id {
		t.Fatalf("delivered %s, want %s", d.MessageID, id)
	}
}

func TestBadInputOnSocket(t *testing.T) {
	f := newFleet(t)
	c, err := dialApp(f.agent.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	lines := []struct {
		line string
		code string
	}{
		{`{"op": "register", "app": `, "BadRequest"},
		{`not json at all`, "BadRequest"},
		{`{"op": "explode"}`, "UnknownOp"},
		{`{"op": "send", "app": "` + app + `", "to": "` + f.sender + `", "data": {"n": 1}}`, "InvalidArgument"},
		{`{"op": "send", "app": "` + app + `", "to": "` + f.sender + `", "data": {"big": "` + strings.Repeat("y", 5000) + `"}}`, "MessageTooBig"},
	}
	for _, l := range lines {
		if err := c.writeLine([]byte(l.line)); err != nil {
			t.Fatal(err)
		}
		resp, err := c.readLine(10 * time.Second)
		if err != nil {
			t.Fatalf("after %.40q: %v", l.line, err)
		}
		var r struct {
			OK    bool `json:"ok"`
			Error struct {
				Code    string `json:"code"`
				Message string `json:"message"`
			} `json:"error"`
		}
		if err := json.Unmarshal(resp, &r); err != nil || r.OK || r.Error.Code != l.code || r.Error.Message == "" {
			t.Fatalf("line %.40q answered %s, want error %s with a message", l.line, resp, l.code)
		}
	}
	// The same connection still works.
	if _, err := c.call(map[string]any{"op": "status"}); err != nil {
		t.Fatalf("status after bad lines: %v", err)
	}
	// A line longer than the limit closes that connection, not the daemon.
	long, err := dialApp(f.agent.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer long.close()
	long.writeLine([]byte(`{"op":"status","pad":"` + strings.Repeat("z", 70<<10) + `"}`))
	if resp, err := long.readLine(10 * time.Second); err == nil && !strings.Contains(string(resp), "LineTooLong") {
		t.Fatalf("an over-long line answered %s, want LineTooLong", resp)
	}
	msgs, _ := f.agent.listen(app)
	id := f.sendData(map[string]any{"still": "here"}, nil)
	if d := next(t, msgs); d.MessageID != id {
		t.Fatalf("delivered %s, want %s", d.MessageID, id)
	}
}
