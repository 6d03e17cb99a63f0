// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"tether/server/store"
	"tether/wire"
)

// exerciseAdmin adds, lists and removes senders through admin and checks
// each step; sendStatus, when not nil, checks a key against the live server.
func exerciseAdmin(t *testing.T, admin *Admin, sendStatus func(key string) int) {
	t.Helper()
	ctx := context.Background()
	a, err := admin.AddSender(ctx, "thermo backend", "https://backend.example/tether")
	if err != nil {
		t.Fatal(err)
	}
	b, err := admin.AddSender(ctx, "other", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(a.ID) != 12 || len(a.ServerKey) < 40 || a.ServerKey == b.ServerKey || a.ID == b.ID {
		t.Fatalf("senders %+v %+v", a, b)
	}
	if sendStatus != nil && sendStatus(a.ServerKey) != http.StatusOK {
		t.Error("new key refused by the running server")
	}
	for _, bad := range []struct{ name, webhook string }{{"", ""}, {"x", "ftp://a/b"}, {"x", "/relative"}, {"bad\nname", ""}} {
		if _, err := admin.AddSender(ctx, bad.name, bad.webhook); err == nil {
			t.Errorf("sender %q with webhook %q accepted", bad.name, bad.webhook)
		}
	}

	// Key rotation: with a grace period both keys work; a second rotation
	// without one stops the key it replaces and the one replaced before.
	b1, err := admin.RotateSenderKey(ctx, b.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if b1.ID != b.ID || b1.ServerKey == b.ServerKey || b1.OldKeyUntil.IsZero() {
		t.Fatalf("rotated %+v from %+v", b1, b)
	}
	b2, err := admin.RotateSenderKey(ctx, b.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !b2.OldKeyUntil.IsZero() {
		t.Errorf("rotation without grace: old key until %v", b2.OldKeyUntil)
	}
	if _, err := admin.RotateSenderKey(ctx, "404404404404", time.Hour); !errors.Is(err, ErrNoSender) {
		t.Errorf("rotating a missing sender: %v, want ErrNoSender", err)
	}
	if _, err := admin.RotateSenderKey(ctx, b.ID, -time.Second); err == nil {
		t.Error("negative grace accepted")
	}

	list, err := admin.Senders(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := []string{a.ID, b.ID}
	slices.Sort(ids)
	if len(list) != 2 || list[0].ID != ids[0] || list[1].ID != ids[1] {
		t.Fatalf("list %+v", list)
	}
	for _, s := range list {
		if s.ID == a.ID && (s.Name != "thermo backend" || s.Webhook != "https://backend.example/tether" || s.Created.IsZero()) {
			t.Errorf("listed %+v", s)
		}
	}

	if err := admin.RemoveSender(ctx, a.ID); err != nil {
		t.Fatal(err)
	}
	if err := admin.RemoveSender(ctx, a.ID); !errors.Is(err, ErrNoSender) {
		t.Errorf("second remove: %v, want ErrNoSender", err)
	}
	if sendStatus != nil && sendStatus(a.ServerKey) != http.StatusUnauthorized {
		t.Error("removed sender's key still works")
	}
	if list, _ := admin.Senders(ctx); len(list) != 1 || list[0].ID != b.ID {
		t.Errorf("after remove: %+v", list)
	}
}

func TestAdminThroughSocket(t *testing.T) {
	ts := startServer(t, nil)
	sock := filepath.Join(ts.dir, adminSocketFile)
	for path, want := range map[string]os.FileMode{ts.dir: 0o700, sock: 0o600, filepath.Join(ts.dir, storeFile): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s has mode %v, want %v", filepath.Base(path), fi.Mode().Perm(), want)
		}
	}
	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if !admin.ViaSocket() {
		t.Fatal("admin opened the store of a running server")
	}
	exerciseAdmin(t, admin, func(key string) int {
		return ts.post("/gcm/send", key, "application/json", `{"to": "x"}`).status
	})
	logs := ts.logs.String()
	if !strings.Contains(logs, "sender added") || !strings.Contains(logs, "sender removed") {
		t.Error("sender changes are not logged")
	}
}

func TestAdminDirect(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	ctx := context.Background()
	if _, err := OpenAdmin(ctx, AdminConfig{DataDir: dir}); !errors.Is(err, ErrNoStore) {
		t.Fatalf("without a store: %v", err)
	}
	admin, err := OpenAdmin(ctx, AdminConfig{DataDir: dir, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	if admin.ViaSocket() {
		t.Fatal("no server runs, yet admin used a socket")
	}
	exerciseAdmin(t, admin, nil)
	if err := admin.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("data dir: %v %v", fi.Mode(), err)
	}

	// A sender added while no server ran works once one does.
	admin, err = OpenAdmin(ctx, AdminConfig{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	snd, err := admin.AddSender(ctx, "later", "")
	admin.Close()
	if err != nil {
		t.Fatal(err)
	}
	ts := startServerIn(t, dir, nil)
	if st := ts.post("/gcm/send", snd.ServerKey, "application/json", `{"to": "x"}`).status; st != http.StatusOK {
		t.Errorf("key added offline: status %d", st)
	}
}

func TestAdminLockedStoreFailsFast(t *testing.T) {
	dir := t.TempDir()
	// A process holding the store without an admin socket: a server that
	// hangs, or one starting up.
	st, err := store.Open(filepath.Join(dir, storeFile), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	start := time.Now()
	_, err = OpenAdmin(context.Background(), AdminConfig{DataDir: dir})
	if !errors.Is(err, store.ErrLocked) {
		t.Fatalf("OpenAdmin on a locked store: %v", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v", d)
	}
	// And a second server on the same directory refuses to start.
	if _, err := New(Config{DataDir: dir}); !errors.Is(err, store.ErrLocked) {
		t.Errorf("second server: %v", err)
	}
}

func TestStaleAdminSocketReplaced(t *testing.T) {
	dir := t.TempDir()
	ts := startServerIn(t, dir, nil)
	ts.stop()
	// A server killed with -9 leaves its socket file behind.
	ln, err := listenAdmin(filepath.Join(dir, adminSocketFile))
	if err != nil {
		t.Fatal(err)
	}
	ln.(interface{ SetUnlinkOnClose(bool) }).SetUnlinkOnClose(false)
	ln.Close()
	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: dir})
	if err != nil {
		t.Fatalf("admin with a stale socket: %v", err)
	}
	if admin.ViaSocket() {
		t.Error("a stale socket answered")
	}
	admin.Close()
	startServerIn(t, dir, nil)
	admin, err = OpenAdmin(context.Background(), AdminConfig{DataDir: dir})
	if err != nil || !admin.ViaSocket() {
		t.Fatalf("restarted server's socket: %v", err)
	}
	admin.Close()
}

func TestNoSecretsInLogs(t *testing.T) {
	hook := newWebhook(t, 1)
	ts := startServer(t, nil)
	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
	if err != nil {
		t.Fatal(err)
	}
	snd, err := admin.AddSender(context.Background(), "hooked", hook.URL)
	admin.Close()
	if err != nil {
		t.Fatal(err)
	}
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	id := ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"x": "1"}})
	d.expectMessage()
	d.ack(id)
	sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: "u", TTL: 60})
	hook.next(t)
	ts.post("/gcm/send", snd.ServerKey+"x", "application/json", `{"to": "x"}`)
	bad := &device{t: t, conn: ts.dial()}
	bad.send("", wire.Hello{Version: 1, DeviceID: d.id, DeviceSecret: d.secret + "x"})
	bad.expectError("", wire.CodeUnauthorized)
	d.conn.Close()
	ts.stop()

	logs := ts.logs.String()
	for name, secret := range map[string]string{"server key": snd.ServerKey, "device secret": d.secret,
		"token": token, "enroll key": ts.cfg.EnrollKey} {
		if strings.Contains(logs, secret) {
			t.Errorf("the %s is in the log", name)
		}
	}
	for _, want := range []string{snd.ID, d.id, id} {
		if !strings.Contains(logs, want) {
			t.Errorf("the log does not name %s", want)
		}
	}
}

// TestSenderKeyRotation: through the running server, the replaced key
// works for its grace period and stops after it, the new one works, and a
// rotation without grace stops the old key at once.
func TestSenderKeyRotation(t *testing.T) {
	ts := startServer(t, nil)
	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	ctx := context.Background()
	first, err := admin.AddSender(ctx, "rotating", "")
	if err != nil {
		t.Fatal(err)
	}
	status := func(key string) int { return ts.post("/gcm/send", key, "application/json", `{"to": "x"}`).status }
	second, err := admin.RotateSenderKey(ctx, first.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name    string
		advance time.Duration
		key     string
		want    int
	}{
		{"new key", 0, second.ServerKey, http.StatusOK},
		{"old key within grace", 0, first.ServerKey, http.StatusOK},
		{"old key after grace", time.Hour, first.ServerKey, http.StatusUnauthorized},
		{"new key after grace", 0, second.ServerKey, http.StatusOK},
	} {
		ts.clock.Advance(tt.advance)
		if got := status(tt.key); got != tt.want {
			t.Errorf("%s: status %d, want %d", tt.name, got, tt.want)
		}
	}
	third, err := admin.RotateSenderKey(ctx, first.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if status(second.ServerKey) != http.StatusUnauthorized || status(third.ServerKey) != http.StatusOK {
		t.Error("a rotation without grace left the old key working, or the new one not")
	}
	if strings.Contains(ts.logs.String(), third.ServerKey) {
		t.Error("the new server key is in the log")
	}
}

// TestFailedAuthenticationsAreLimited: past the limit an address's
// failures are slowed and answered 429, but a valid key from it is still
// served: app servers behind one proxy share its address. Other addresses
// are not affected. It runs in a synctest bubble: the second each
// throttled failure waits passes on the bubble's clock.
func TestFailedAuthenticationsAreLimited(t *testing.T) {
	synctest.Test(t, testFailedAuthenticationsAreLimited)
}

func testFailedAuthenticationsAreLimited(t *testing.T) {
	ts := startServerInBubble(t, func(c *Config) { c.AuthFailureLimit = 3 })
	snd := ts.addSender("")
	for i := range 3 {
		if a := ts.post("/gcm/send", "wrong-key", "application/json", `{"to": "x"}`); a.status != http.StatusUnauthorized {
			t.Fatalf("failure %d: status %d, want 401", i+1, a.status)
		}
	}
	for i, tc := range []struct {
		key    string
		status int
	}{{"wrong-key", http.StatusTooManyRequests}, {snd.ServerKey, http.StatusOK}, {"wrong-key", http.StatusTooManyRequests}, {snd.ServerKey, http.StatusOK}} {
		a := ts.post("/gcm/send", tc.key, "application/json", `{"to": "x"}`)
		if a.status != tc.status || tc.status == http.StatusTooManyRequests && !strings.Contains(a.body, "failed authentications") {
			t.Errorf("%d over the limit: %d %q, want %d", i, a.status, a.body, tc.status)
		}
	}
	// Thousands of failures make a line a minute, with their count.
	if n := strings.Count(ts.logs.String(), "app server refused"); n != 1 {
		t.Errorf("%d log lines for 5 failures from one address, want 1", n)
	}
}
