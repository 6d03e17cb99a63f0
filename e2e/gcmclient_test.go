// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"tether/internal/testwait"
)

// nodeGCMResult is node-gcm's view of one send.
type nodeGCMResult struct {
	Err      any              `json:"err"`
	Response *nodeGCMResponse `json:"response"`
}

// nodeGCMResponse is GCM's answer as node-gcm hands it over: multicast
// fields for tokens, message_id or error for a topic or condition.
type nodeGCMResponse struct {
	MulticastID  int64 `json:"multicast_id"`
	Success      int   `json:"success"`
	Failure      int   `json:"failure"`
	CanonicalIDs int   `json:"canonical_ids"`
	Results      []struct {
		MessageID      string `json:"message_id"`
		RegistrationID string `json:"registration_id"`
		Error          string `json:"error"`
	} `json:"results"`
	MessageID json.Number `json:"message_id"`
	Error     string      `json:"error"`
}

// nodeGCMCommand prepares a send with node-gcm, unchanged but for the URI
// it posts to; options are node-gcm's send options (nil: no retries).
func nodeGCMCommand(t *testing.T, ctx context.Context, uri, key string, recipients, message, options any) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	dir, err := filepath.Abs("acceptance")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "node-gcm")); err != nil {
		t.Fatalf("node-gcm is not installed in %s: make test installs it (npm ci there): %v", dir, err)
	}
	r, _ := json.Marshal(recipients)
	m, _ := json.Marshal(message)
	args := []string{filepath.Join(dir, "node-gcm-send.js"), uri, key, string(r), string(m)}
	if options != nil {
		o, _ := json.Marshal(options)
		args = append(args, string(o))
	}
	cmd := exec.CommandContext(ctx, "node", args...)
	cmd.Dir = dir
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	t.Cleanup(func() {
		if cmd.Process != nil && cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
		if t.Failed() && stderr.Len() > 0 {
			t.Logf("node-gcm stderr: %s", stderr.String())
		}
	})
	return cmd, &out
}

func parseNodeGCM(t *testing.T, out []byte) nodeGCMResult {
	t.Helper()
	var res nodeGCMResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("node-gcm printed %q: %v", out, err)
	}
	return res
}

// nodeGCMSend sends with node-gcm without retries and returns its view.
func nodeGCMSend(t *testing.T, uri, key string, recipients, message any) nodeGCMResult {
	t.Helper()
	cmd, out := nodeGCMCommand(t, withTimeout(t, time.Minute), uri, key, recipients, message, nil)
	if err := cmd.Run(); err != nil {
		t.Fatalf("node-gcm send: %v", err)
	}
	return parseNodeGCM(t, out.Bytes())
}

// TestNodeGCMLibraryWorksUnchanged drives tether-server with node-gcm, a GCM
// client library app servers already use: only its URI is changed.
func TestNodeGCMLibraryWorksUnchanged(t *testing.T) {
	f := newFleet(t)
	uri := "http://" + f.srv.addr + "/fcm/send"
	msgs, _ := f.agent.listen(app)

	res := nodeGCMSend(t, uri, f.key, f.token, map[string]any{
		"collapseKey": "setpoint", "priority": "high", "timeToLive": 600,
		"data": map[string]any{"setpoint": "19.5", "zone": 2},
	})
	if res.Err != nil || res.Response == nil || res.Response.Success != 1 || len(res.Response.Results) != 1 {
		t.Fatalf("node-gcm single send: %+v", res)
	}
	d := next(t, msgs)
	if d.MessageID != res.Response.Results[0].MessageID || d.CollapseKey != "setpoint" || d.Data["setpoint"] != "19.5" || d.Data["zone"] != "2" {
		t.Fatalf("delivered %+v after node-gcm's send %+v", d, res.Response)
	}

	// Multicast: results in the order of the tokens, failures named as GCM names them.
	res = nodeGCMSend(t, uri, f.key, map[string]any{"registrationTokens": []string{"no-such-token", f.token}}, map[string]any{"data": map[string]string{"n": "2"}})
	if res.Err != nil || res.Response == nil || res.Response.Success != 1 || res.Response.Failure != 1 || len(res.Response.Results) != 2 ||
		res.Response.Results[0].Error != "InvalidRegistration" || res.Response.Results[1].MessageID == "" {
		t.Fatalf("node-gcm multicast: %+v", res)
	}
	if d := next(t, msgs); d.MessageID != res.Response.Results[1].MessageID {
		t.Fatalf("delivered %s, want %s", d.MessageID, res.Response.Results[1].MessageID)
	}

	// A wrong key is the 401 node-gcm knows.
	res = nodeGCMSend(t, uri, "wrong-key", f.token, map[string]any{"data": map[string]string{"n": "3"}})
	if code, ok := res.Err.(float64); !ok || code != 401 {
		t.Fatalf("node-gcm with a wrong key: %+v, want error 401", res)
	}
}

// registerApps registers apps for sender through the agent's socket and
// returns their tokens.
func registerApps(t *testing.T, a *agent, sender string, apps []string) []string {
	t.Helper()
	c, err := dialApp(a.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	var tokens []string
	for _, name := range apps {
		resp, err := c.call(map[string]any{"op": "register", "app": name, "sender": sender})
		if err != nil {
			t.Fatalf("register %s: %v", name, err)
		}
		var r struct {
			Token string `json:"token"`
		}
		if err := json.Unmarshal(resp, &r); err != nil || r.Token == "" {
			t.Fatalf("register %s answered %s", name, resp)
		}
		tokens = append(tokens, r.Token)
	}
	return tokens
}

// TestNodeGCMMulticastOf1000 sends node-gcm's largest multicast, 1000
// tokens, 300 of them bad in three ways: every result is in the place of
// its token with GCM's error, and the good ones reach the apps.
func TestNodeGCMMulticastOf1000(t *testing.T) {
	f := newFleet(t)
	uri := "http://" + f.srv.addr + "/gcm/send"
	apps := []string{app}
	for i := range 19 {
		apps = append(apps, fmt.Sprintf("com.example.app%02d", i))
	}
	good := append([]string{f.token}, registerApps(t, f.agent, f.sender, apps[1:])...)
	otherSender, _ := f.srv.addSender("other-backend", "")
	mismatched := f.agent.register("com.example.other", otherSender)
	gone := registerApps(t, f.agent, f.sender, []string{"com.example.gone"})[0]
	if _, err := f.agent.ctl("unregister", "--app", "com.example.gone", "--sender", f.sender); err != nil {
		t.Fatal(err)
	}

	tokens := make([]string, 1000)
	want := make([]string, 1000) // "" for a message ID
	for i := range tokens {
		switch i % 10 {
		case 3:
			tokens[i], want[i] = fmt.Sprintf("bad-token-%d", i), "InvalidRegistration"
		case 6:
			tokens[i], want[i] = mismatched, "MismatchSenderId"
		case 9:
			tokens[i], want[i] = gone, "NotRegistered"
		default:
			tokens[i] = good[i%len(good)]
		}
	}
	msgs, _ := f.agent.listen(app)
	res := nodeGCMSend(t, uri, f.key, map[string]any{"registrationTokens": tokens}, map[string]any{"data": map[string]string{"batch": "1000"}})
	if res.Err != nil || res.Response == nil {
		t.Fatalf("node-gcm multicast of 1000: %+v", res)
	}
	r := res.Response
	if r.Success != 700 || r.Failure != 300 || r.CanonicalIDs != 0 || len(r.Results) != 1000 || r.MulticastID <= 0 {
		t.Fatalf("multicast of 1000: success %d failure %d canonical %d, %d results", r.Success, r.Failure, r.CanonicalIDs, len(r.Results))
	}
	var forApp []string
	for i, got := range r.Results {
		switch {
		case want[i] != "" && (got.Error != want[i] || got.MessageID != ""):
			t.Errorf("result %d = %+v, want error %s", i, got, want[i])
		case want[i] == "" && (got.Error != "" || got.MessageID == ""):
			t.Errorf("result %d = %+v, want a message ID", i, got)
		case want[i] == "" && tokens[i] == f.token:
			forApp = append(forApp, got.MessageID)
		}
	}
	var delivered []string
	for range forApp {
		d := next(t, msgs)
		if d.Data["batch"] != "1000" {
			t.Errorf("delivered %+v", d)
		}
		delivered = append(delivered, d.MessageID)
	}
	slices.Sort(forApp)
	slices.Sort(delivered)
	if !slices.Equal(delivered, forApp) {
		t.Errorf("the app got %d messages that differ from the %d answered for its token", len(delivered), len(forApp))
	}
}

// TestNodeGCMTopicSend subscribes apps to topics the way app servers do
// (the Instance ID API) and sends to a topic and a condition with node-gcm.
func TestNodeGCMTopicSend(t *testing.T) {
	f := newFleet(t)
	uri := "http://" + f.srv.addr + "/fcm/send"
	subscribe := func(topic string, tokens ...string) {
		t.Helper()
		body, _ := json.Marshal(map[string]any{"to": "/topics/" + topic, "registration_tokens": tokens})
		status, out, err := f.srv.postTo("/iid/v1:batchAdd", f.key, "application/json", body)
		if err != nil || status != http.StatusOK || strings.Contains(string(out), "error") {
			t.Fatalf("batchAdd to %s: %d %s %v", topic, status, out, err)
		}
	}
	other := registerApps(t, f.agent, f.sender, []string{"com.example.other"})[0]
	subscribe("alerts", f.token, other)
	subscribe("eu", f.token)
	msgs, _ := f.agent.listen(app)

	res := nodeGCMSend(t, uri, f.key, map[string]any{"topic": "/topics/alerts"}, map[string]any{"data": map[string]string{"alert": "storm"}})
	if res.Err != nil || res.Response == nil || res.Response.MessageID == "" || res.Response.Error != "" || res.Response.Results != nil {
		t.Fatalf("node-gcm topic send: %+v", res)
	}
	if d := next(t, msgs); d.Data["alert"] != "storm" || d.From != f.sender {
		t.Fatalf("topic message delivered as %+v", d)
	}

	res = nodeGCMSend(t, uri, f.key, map[string]any{"condition": "'alerts' in topics && 'eu' in topics"}, map[string]any{"data": map[string]string{"alert": "eu storm"}})
	if res.Err != nil || res.Response == nil || res.Response.MessageID == "" {
		t.Fatalf("node-gcm condition send: %+v", res)
	}
	if d := next(t, msgs); d.Data["alert"] != "eu storm" {
		t.Fatalf("condition message delivered as %+v", d)
	}

	// A topic message's data is limited to 2048 bytes.
	res = nodeGCMSend(t, uri, f.key, map[string]any{"topic": "/topics/alerts"}, map[string]any{"data": map[string]string{"big": strings.Repeat("x", 2048)}})
	if res.Err != nil || res.Response == nil || res.Response.Error != "MessageTooBig" {
		t.Fatalf("node-gcm topic send over 2048 bytes: %+v", res)
	}
}

// TestNodeGCMRetriesUnavailable fills the server's store so that it answers
// 503 Unavailable, lets node-gcm send with its usual retries, then lets the
// device drain the store: node-gcm's retry is accepted and delivered.
func TestNodeGCMRetriesUnavailable(t *testing.T) {
	srv := startServer(t, "--max-store-size", "262144")
	sender, key := srv.addSender("full-backend", "")
	a := startAgent(t, srv.url())
	token := a.register(app, sender)
	a.p.stop()

	fill := strings.Repeat("x", 4000)
	big := map[string]any{"to": token, "data": map[string]string{"fill": fill}}
	filled := 0
	for ; ; filled++ {
		body, _ := json.Marshal(big)
		status, out, err := srv.post(key, "application/json", body)
		if err != nil {
			t.Fatal(err)
		}
		if status == http.StatusServiceUnavailable {
			if !strings.Contains(string(out), "Unavailable") {
				t.Fatalf("full store answered 503 with %s", out)
			}
			break
		}
		if status != http.StatusOK || filled == 99 {
			t.Fatalf("filling the store: %d %s after %d messages", status, out, filled)
		}
	}
	refusals := func() int { return strings.Count(srv.p.log(), `msg="store downstream messages"`) }
	before := refusals()

	cmd, out := nodeGCMCommand(t, withTimeout(t, 2*time.Minute), "http://"+srv.addr+"/gcm/send", key, token,
		map[string]any{"data": map[string]string{"n": "retried", "fill": fill}}, map[string]any{"retries": 6, "backoff": 500})
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "node-gcm's first attempt to be refused", 30*time.Second, func() error {
		if refusals() == before {
			return fmt.Errorf("no refusal yet")
		}
		return nil
	})
	a.start() // the device takes its messages, which frees the store
	if err := cmd.Wait(); err != nil {
		t.Fatalf("node-gcm: %v", err)
	}
	res := parseNodeGCM(t, out.Bytes())
	if res.Err != nil || res.Response == nil || res.Response.Success != 1 || res.Response.Results[0].MessageID == "" {
		t.Fatalf("node-gcm after its retries: %+v", res)
	}
	msgs, _ := a.listen(app)
	for i := 0; ; i++ {
		if i > filled {
			t.Fatalf("the retried message is not among the first %d delivered", i)
		}
		if d := next(t, msgs); d.MessageID == res.Response.Results[0].MessageID {
			if d.Data["n"] != "retried" {
				t.Errorf("delivered %+v", d)
			}
			break
		}
	}
}
