// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"bytes"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"tether/internal/vapidtest"
)

// TestWebPush: an app on the socket door registers with the Web Push
// sender and the VAPID key of its app server; the app server pushes a
// binary body with a VAPID JWT to the endpoint it was handed, and the app
// gets the exact bytes in raw. Once the app unregisters, the endpoint
// answers 410.
func TestWebPush(t *testing.T) {
	srv := newServer(t)
	origin := "http://" + srv.addr
	srv.args = []string{"--public-url", origin}
	srv.start()
	a := startAgent(t, srv.url())
	key := vapidtest.New(t)

	c, err := dialApp(a.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	resp, err := c.call(map[string]any{"op": "register", "app": app, "sender": "webpush", "vapid": key.Public})
	if err != nil {
		t.Fatal(err)
	}
	var reg struct{ Token, Endpoint string }
	if err := json.Unmarshal(resp, &reg); err != nil {
		t.Fatal(err)
	}
	if reg.Token == "" || reg.Endpoint != origin+"/up/"+reg.Token {
		t.Fatalf("register answered %s, want the endpoint %s/up/TOKEN", resp, origin)
	}
	if _, err := c.call(map[string]any{"op": "listen", "app": app}); err != nil {
		t.Fatal(err)
	}

	body := make([]byte, 4096)
	rand.Read(body)
	push := func(auth string) *http.Response {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, reg.Endpoint, bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("TTL", "3600")
		req.Header.Set("Topic", "inbox")
		req.Header.Set("Content-Encoding", "aes128gcm")
		if auth != "" {
			req.Header.Set("Authorization", auth)
		}
		resp, err := srv.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp
	}
	if resp := push(""); resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("push without VAPID: %s, want 401", resp.Status)
	}
	resp201 := push(key.Authorization(t, origin))
	if resp201.StatusCode != http.StatusCreated || !strings.HasPrefix(resp201.Header.Get("Location"), reg.Endpoint+"/m/") {
		t.Fatalf("push: %s, Location %q; want 201 under the endpoint", resp201.Status, resp201.Header.Get("Location"))
	}

	var ev struct {
		Event   string `json:"event"`
		Message struct {
			ID          string            `json:"message_id"`
			From        string            `json:"from"`
			CollapseKey string            `json:"collapse_key"`
			Data        map[string]string `json:"data"`
			Raw         []byte            `json:"raw"`
		} `json:"message"`
	}
	line := []byte(nil)
	if len(c.events) > 0 {
		line = c.events[0]
	} else if line, err = c.readLine(30 * time.Second); err != nil {
		t.Fatalf("no message for the app: %v", err)
	}
	if err := json.Unmarshal(line, &ev); err != nil || ev.Event != "message" {
		t.Fatalf("the app got %q, %v; want a message", line, err)
	}
	m := ev.Message
	if !bytes.Equal(m.Raw, body) || m.From != "webpush" || m.CollapseKey != "inbox" || len(m.Data) != 0 {
		t.Fatalf("message from %q, collapse key %q, data %v, %d raw bytes; want the %d bytes pushed", m.From, m.CollapseKey, m.Data, len(m.Raw), len(body))
	}
	if _, err := c.call(map[string]any{"op": "ack", "app": app, "ids": []string{m.ID}}); err != nil {
		t.Fatal(err)
	}

	u, err := dialApp(a.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer u.close()
	if _, err := u.call(map[string]any{"op": "unregister", "app": app, "sender": "webpush"}); err != nil {
		t.Fatal(err)
	}
	if resp := push(key.Authorization(t, origin)); resp.StatusCode != http.StatusGone {
		t.Fatalf("push after unregister: %s, want 410", resp.Status)
	}
	// The endpoint is the capability to push to the app: its token is in
	// no log, at debug level.
	for _, p := range []*proc{srv.p, a.p} {
		if strings.Contains(p.log(), reg.Token) {
			t.Errorf("%s's log holds the Web Push token", p.name)
		}
	}
}
