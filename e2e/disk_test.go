// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"tether/internal/disktest"
	"tether/internal/testwait"
)

// diskPad is data that makes a message take a page or so of a store.
var diskPad = strings.Repeat("p", 3000)

// sendForAnswer posts one GCM JSON message and returns the HTTP answer
// whatever its status.
func sendForAnswer(t *testing.T, s *server, key string, msg map[string]any) (*http.Response, sendResponse) {
	t.Helper()
	body, err := json.Marshal(msg)
	if err != nil {
		t.Fatal(err)
	}
	req, err := http.NewRequest(http.MethodPost, s.scheme+"://"+s.addr+"/gcm/send", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "key="+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := s.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var r sendResponse
	if err := json.Unmarshal(out, &r); err != nil {
		t.Fatalf("status %d with a body that is not GCM's JSON answer: %q", resp.StatusCode, out)
	}
	return resp, r
}

// collectDistinct reads n messages from the listener and fails on one
// that comes twice.
func collectDistinct(t *testing.T, msgs <-chan delivered, n int) []string {
	t.Helper()
	var ids []string
	for range n {
		d := next(t, msgs)
		if slices.Contains(ids, d.MessageID) {
			t.Fatalf("message %s delivered twice", d.MessageID)
		}
		ids = append(ids, d.MessageID)
	}
	return ids
}

// With the server's data dir full, sends are refused with GCM's Unavailable
// and a Retry-After while the server goes on delivering what it holds; with
// room again, sends are taken and delivered, and nothing was lost.
func TestDiskFullServer(t *testing.T) {
	disk := disktest.Small(t, "2m")
	srv := newServer(t)
	srv.data = filepath.Join(disk, "server")
	srv.start()
	sender, key := srv.addSender("thermo-backend", "")
	a := startAgent(t, srv.url())
	token := a.register(app, sender)

	// Held for the device while it is away, before the disk fills.
	a.p.stop()
	want := []string{srv.mustSend(key, map[string]any{"to": token, "data": map[string]any{"n": "before"}})}
	filler := disktest.Fill(t, disk)

	var refused map[string]any
	for i := 0; i < 200 && refused == nil; i++ {
		msg := map[string]any{"to": token, "data": map[string]any{"n": fmt.Sprint(i), "pad": diskPad}}
		resp, r := sendForAnswer(t, srv, key, msg)
		switch resp.StatusCode {
		case http.StatusOK:
			// It fitted in room the store had inside its file.
			if r.Success != 1 {
				t.Fatalf("send %d: 200 with %+v", i, r)
			}
			want = append(want, r.Results[0].MessageID)
		case http.StatusServiceUnavailable:
			if len(r.Results) != 1 || r.Results[0].Error != "Unavailable" || r.Results[0].MessageID != "" {
				t.Errorf("send %d: 503 with %+v, want the result's error Unavailable", i, r)
			}
			if resp.Header.Get("Retry-After") == "" {
				t.Errorf("send %d: 503 without Retry-After", i)
			}
			refused = msg
		default:
			t.Fatalf("send %d: status %d, %+v", i, resp.StatusCode, r)
		}
	}
	if refused == nil {
		t.Fatal("200 sends fitted on a full disk")
	}
	if srv.p.exited() {
		t.Fatalf("tether-server exited on a full disk: %v\n%s", srv.p.err, srv.p.log())
	}

	// What the server holds still reaches the device, disk full or not.
	a.start()
	msgs, _ := a.listen(app)
	if got := collectDistinct(t, msgs, len(want)); !sameIDs(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	resp, r := sendForAnswer(t, srv, key, refused)
	if resp.StatusCode != http.StatusOK || r.Success != 1 {
		t.Fatalf("the refused send again, with room: status %d, %+v", resp.StatusCode, r)
	}
	if got := next(t, msgs); got.MessageID != r.Results[0].MessageID {
		t.Fatalf("delivered %s, want %s", got.MessageID, r.Results[0].MessageID)
	}
}

// With the agent's data dir full, a downstream message it cannot store is
// not acknowledged, so the server keeps it; an app's upstream send is
// refused with StorageUnavailable; the agent keeps running, and once there
// is room everything arrives, nothing lost and nothing twice.
func TestDiskFullAgent(t *testing.T) {
	disk := disktest.Small(t, "2m")
	hook := startWebhook(t)
	srv := startServer(t)
	sender, key := srv.addSender("thermo-backend", hook.url())
	// A short backoff, for the reconnection that brings the messages
	// back once there is room.
	a := newAgent(t, srv.url(), "--max-backoff", "1s")
	a.data = filepath.Join(disk, "agent")
	a.start()
	token := a.register(app, sender)
	filler := disktest.Fill(t, disk)

	// No app listens: the agent must hold each message it takes. Enough
	// of them to outgrow whatever room its file had inside.
	var want []string
	for i := range 30 {
		want = append(want, srv.mustSend(key, map[string]any{"to": token, "data": map[string]any{"n": fmt.Sprint(i), "pad": diskPad}}))
	}
	testwait.For(t, "tetherd to fail to store a message", 30*time.Second, func() error {
		if !strings.Contains(a.p.log(), "not stored, not acknowledged") {
			return errors.New("not yet")
		}
		return nil
	})

	c, err := dialApp(a.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	var sent []string
	refused := ""
	for i := 0; i < 100 && refused == ""; i++ {
		id := fmt.Sprintf("up-%d", i)
		_, err := c.call(map[string]any{"op": "send", "app": app, "to": sender, "message_id": id, "data": map[string]any{"pad": diskPad}})
		var ce *callError
		switch {
		case err == nil:
			sent = append(sent, id)
		case errors.As(err, &ce):
			if ce.Code != "StorageUnavailable" {
				t.Fatalf("send %s refused with %v, want StorageUnavailable", id, err)
			}
			t.Logf("send %s: %v", id, err)
			refused = id
		default:
			t.Fatal(err)
		}
	}
	if refused == "" {
		t.Fatal("100 upstream messages fitted on a full disk")
	}
	if a.p.exited() {
		t.Fatalf("tetherd exited on a full disk: %v\n%s", a.p.err, a.p.log())
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	msgs, _ := a.listen(app)
	if got := collectDistinct(t, msgs, len(want)); !sameIDs(got, want) {
		t.Fatalf("delivered %v, want %v", got, want)
	}
	if _, err := c.call(map[string]any{"op": "send", "app": app, "to": sender, "message_id": refused, "data": map[string]any{"pad": diskPad}}); err != nil {
		t.Fatalf("the refused send again, with room: %v", err)
	}
	sent = append(sent, refused)
	var got []string
	for range sent {
		body := hook.next(t)
		id, _ := body["message_id"].(string)
		if slices.Contains(got, id) {
			t.Fatalf("upstream %s reached the app server twice", id)
		}
		got = append(got, id)
	}
	if !sameIDs(got, sent) {
		t.Fatalf("the app server got %v, want %v", got, sent)
	}
}

func sameIDs(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// A store file found damaged at start stops tetherd and tether-server with
// an error that names the file and says it was kept, and the file is left
// as it was.
func TestDiskDamagedStore(t *testing.T) {
	srv := startServer(t)
	sender, _ := srv.addSender("thermo-backend", "")
	a := startAgent(t, srv.url())
	a.register(app, sender)
	a.p.stop()
	srv.p.stop()

	for _, c := range []struct {
		name, store string
		args        []string
	}{
		{"tetherd", filepath.Join(a.data, "agent.db"), []string{"--server", srv.url(), "--data", a.data, "--socket", a.sock}},
		{"tether-server", filepath.Join(srv.data, "server.db"), []string{"serve", "--listen", srv.addr, "--data", srv.data}},
	} {
		t.Run(c.name, func(t *testing.T) {
			// Shorter than the four pages a new bbolt file starts with.
			if err := os.Truncate(c.store, 12<<10); err != nil {
				t.Fatal(err)
			}
			before, err := os.ReadFile(c.store)
			if err != nil {
				t.Fatal(err)
			}
			p := startProc(t, c.name, nil, c.args...)
			select {
			case <-p.done:
			case <-time.After(30 * time.Second):
				t.Fatalf("%s still runs on a damaged store:\n%s", c.name, p.log())
			}
			var ee *exec.ExitError
			if !errors.As(p.err, &ee) || ee.ExitCode() != 1 {
				t.Errorf("%s exited with %v, want status 1", c.name, p.err)
			}
			out := p.log()
			for _, want := range []string{c.store, "file is damaged", "cut short", "left unchanged for inspection"} {
				if !strings.Contains(out, want) {
					t.Errorf("%s's output does not say %q:\n%s", c.name, want, out)
				}
			}
			if after, err := os.ReadFile(c.store); err != nil || !bytes.Equal(after, before) {
				t.Errorf("%s changed the damaged store (%v)", c.name, err)
			}
		})
	}
}
