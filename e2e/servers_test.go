// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"encoding/json"
	"testing"
)

// TestAgentWithSeveralServers gives tetherd a list of servers of which one
// never answers: the agent reaches the live one whichever it starts at,
// checks in, gets messages, and comes back to it after it restarts, past
// the dead one.
func TestAgentWithSeveralServers(t *testing.T) {
	srv := startServer(t)
	hook := startWebhook(t)
	sender, key := srv.addSender("thermo-backend", hook.url())
	dead := "ws://" + freeAddr(t)
	a := startAgent(t, dead+","+srv.url())
	token := a.register(app, sender)
	msgs, _ := a.listen(app)

	out, err := a.ctl("--json", "status")
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Server string `json:"server"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.Server != srv.url()+"/device/v1" {
		t.Fatalf("status %s (%v): want the live server, %s/device/v1", out, err, srv.url())
	}

	srv.p.stop()
	srv.start()
	id := srv.mustSend(key, map[string]any{"to": token, "data": map[string]any{"n": "1"}})
	if d := next(t, msgs); d.MessageID != id {
		t.Fatalf("delivered %s, want %s", d.MessageID, id)
	}
}
