// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestTopicThroughTheAgent: an app subscribes to a topic with tetherctl,
// and a send to /topics/NAME reaches it, marked with its topic.
func TestTopicThroughTheAgent(t *testing.T) {
	f := newFleet(t)
	if out, err := f.agent.ctl("subscribe", "--app", app, "--sender", f.sender, "--topic", "frost-warnings"); err != nil {
		t.Fatalf("subscribe: %v: %s", err, out)
	}
	msgs, _ := f.agent.listen(app)
	resp, err := f.srv.send(f.key, map[string]any{"to": "/topics/frost-warnings", "data": map[string]string{"level": "2"}})
	if err != nil {
		t.Fatal(err)
	}
	got := next(t, msgs)
	if got.Topic != "frost-warnings" || got.Data["level"] != "2" {
		t.Fatalf("got %+v from a topic send answered %+v", got, resp)
	}
	if out, err := f.agent.ctl("unsubscribe", "--app", app, "--sender", f.sender, "--topic", "frost-warnings"); err != nil {
		t.Fatalf("unsubscribe: %v: %s", err, out)
	}
}

// TestTokenRotationReachesTheApp: the server rotates a token; the listening
// app is told the new one, register answers with it, and the app server's
// sends to the old token still arrive and answer with the new one as the
// canonical registration ID.
func TestTokenRotationReachesTheApp(t *testing.T) {
	f := newFleet(t)
	msgs, _ := f.agent.listen(app)
	// A refresh reaches only an app that listens (a later register gives
	// the new token): a first message shows the listener is in place.
	f.sendData(map[string]any{"ready": "1"}, nil)
	next(t, msgs)
	cmd := exec.Command(filepath.Join(binDir, "tether-server"), "token", "rotate", "--data", f.srv.data, "--token", "-", "--json")
	cmd.Stdin = strings.NewReader(f.token + "\n")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("token rotate: %v: %s", err, exitStderr(err))
	}
	var rotated struct {
		Token string `json:"token"`
	}
	if err := json.Unmarshal(out, &rotated); err != nil || rotated.Token == "" || rotated.Token == f.token {
		t.Fatalf("token rotate printed %q: %v", out, err)
	}
	if ev := nextEvent(t, msgs, "token_refreshed"); ev.Token != rotated.Token || ev.Sender != f.sender {
		t.Fatalf("the app was told %+v, want the new token for sender %s", ev, f.sender)
	}
	if token := f.agent.register(app, f.sender); token != rotated.Token {
		t.Fatal("register still answers with the old token")
	}
	resp, err := f.srv.send(f.key, map[string]any{"to": f.token, "data": map[string]string{"via": "old token"}})
	if err != nil || resp.CanonicalIDs != 1 || len(resp.Results) != 1 || resp.Results[0].RegistrationID != rotated.Token {
		t.Fatalf("send to the old token: %+v, %v; want the new token as the canonical ID", resp, err)
	}
	if got := next(t, msgs); got.Data["via"] != "old token" {
		t.Fatalf("got %+v", got)
	}
	checkNoSecretsLogged(t, rotated.Token)
}

// TestOverflowToldAsDeletedMessages: with the device away, more than 100
// messages pile up for the app; the server drops them as GCM did and the
// app is told how many, once.
func TestOverflowToldAsDeletedMessages(t *testing.T) {
	f := newFleet(t)
	f.agent.p.stop()
	for i := range 101 {
		f.srv.mustSend(f.key, map[string]any{"to": f.token, "data": map[string]string{"n": string(rune('a' + i%26))}})
	}
	f.agent.start()
	msgs, _ := f.agent.listen(app)
	ev := nextEvent(t, msgs, "deleted_messages")
	if ev.Count != 100 {
		t.Fatalf("deleted_messages %+v, want 100", ev)
	}
	if got := next(t, msgs); got.Data["n"] != "w" { // the 101st, kept
		t.Fatalf("after the notice got %+v, want the message that overflowed", got)
	}
}
