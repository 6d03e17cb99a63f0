// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tether/internal/testwait"
	"tether/store"
)

// copyTree copies the regular files under from to to.
func copyTree(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		target := filepath.Join(to, strings.TrimPrefix(path, from))
		switch {
		case d.IsDir():
			return os.MkdirAll(target, 0o700)
		case !d.Type().IsRegular():
			return nil
		}
		in, err := os.Open(path)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		return out.Close()
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestReenrollAfterTheServerLostTheDevice restores the server's store from
// a backup taken before the device checked in: the server no longer knows
// it. The agent checks in anew with its enrollment key, registers both
// apps again, and each app gets its new token as token_refreshed (the one
// listening at once, the other when it listens, before the message held
// for it); the upstream message sent while the server was away reaches the
// app server, and messages to the new token arrive.
func TestReenrollAfterTheServerLostTheDevice(t *testing.T) {
	const meter = "com.example.meter"
	keyFile := filepath.Join(t.TempDir(), "enroll-key")
	if err := os.WriteFile(keyFile, []byte(e2eEnrollKey+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	hook := startWebhook(t)
	srv := startServer(t, "--enroll-key", e2eEnrollKey)
	sender, key := srv.addSender("thermo-backend", hook.url())
	srv.p.stop()
	backup := filepath.Join(t.TempDir(), "backup")
	copyTree(t, srv.data, backup)
	srv.start()

	a := startAgent(t, srv.url(), "--enroll-key-file", keyFile, "--max-backoff", "1s")
	oldToken := a.register(app, sender)
	oldMeter := a.register(meter, sender)
	msgs, _ := a.listen(app)
	srv.mustSend(key, map[string]any{"to": oldToken, "data": map[string]string{"n": "before"}})
	if got := next(t, msgs); got.Data["n"] != "before" {
		t.Fatalf("got %+v", got)
	}
	srv.mustSend(key, map[string]any{"to": oldMeter, "data": map[string]string{"kwh": "7"}})
	testwait.For(t, "the meter's message to be held", 30*time.Second, func() error { return queued(a, 1) })

	// The server goes away and comes back from the backup; meanwhile the
	// app sends upstream.
	srv.p.stop()
	if _, err := a.ctl("send", "--app", app, "--to", sender, "--id", "while-away", "k=v"); err != nil {
		t.Fatal(err)
	}
	if err := os.RemoveAll(srv.data); err != nil {
		t.Fatal(err)
	}
	copyTree(t, backup, srv.data)
	srv.start()

	refreshed := nextEvent(t, msgs, "token_refreshed")
	if refreshed.App != app || refreshed.Sender != sender || refreshed.Token == "" || refreshed.Token == oldToken {
		t.Fatalf("token_refreshed %+v, want a new token for %s", refreshed, sender)
	}
	up := hook.next(t)
	if up["message_id"] != "while-away" || up["category"] != app {
		t.Fatalf("webhook got %v, want the message sent while the server was away", up)
	}
	srv.mustSend(key, map[string]any{"to": refreshed.Token, "data": map[string]string{"n": "after"}})
	if got := next(t, msgs); got.Data["n"] != "after" {
		t.Fatalf("got %+v", got)
	}
	// The restored server never issued the old token.
	if r, err := srv.send(key, map[string]any{"to": oldToken, "data": map[string]string{"n": "old"}}); err != nil || len(r.Results) != 1 || r.Results[0].Error != "InvalidRegistration" {
		t.Errorf("send to the old token: %+v, %v; want InvalidRegistration", r, err)
	}

	meterMsgs, _ := a.listen(meter)
	meterRefreshed := nextEvent(t, meterMsgs, "token_refreshed")
	if meterRefreshed.Token == "" || meterRefreshed.Token == oldMeter {
		t.Fatalf("meter's token_refreshed %+v", meterRefreshed)
	}
	if got := next(t, meterMsgs); got.Data["kwh"] != "7" {
		t.Fatalf("meter got %+v, want the message held before the loss", got)
	}

	a.p.stop()
	st, err := store.Open(filepath.Join(a.data, "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	creds, err := st.Credentials()
	if err != nil {
		t.Fatal(err)
	}
	regs, err := st.Registrations()
	if err != nil || len(regs) != 2 {
		t.Fatalf("registrations %+v, %v", regs, err)
	}
	for _, r := range regs {
		if r.Stale {
			t.Errorf("registration %s/%s still stale", r.App, r.Sender)
		}
	}
	checkNoSecretsLogged(t, e2eEnrollKey, key, creds.Secret, oldToken, oldMeter, refreshed.Token, meterRefreshed.Token)
}

// queued reports whether the agent holds n messages for apps.
func queued(a *agent, n int) error {
	out, err := a.ctl("status", "--json")
	if err != nil {
		return err
	}
	var st struct {
		QueuedDownstream int `json:"queued_downstream"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return err
	}
	if st.QueuedDownstream != n {
		return errors.New("not yet")
	}
	return nil
}
