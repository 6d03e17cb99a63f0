package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// nodeGCMResult is node-gcm's view of one send.
type nodeGCMResult struct {
	Err      any           `json:"err"`
	Response *sendResponse `json:"response"`
}

// nodeGCMSend sends with node-gcm, unchanged but for the URI it posts to.
func nodeGCMSend(t *testing.T, uri, key string, recipients, message any) nodeGCMResult {
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
	cmd := exec.Command("node", filepath.Join(dir, "node-gcm-send.js"), uri, key, string(r), string(m))
	cmd.Dir = dir
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node-gcm send: %v: %s", err, exitStderr(err))
	}
	var res nodeGCMResult
	if err := json.Unmarshal(out, &res); err != nil {
		t.Fatalf("node-gcm printed %q: %v", out, err)
	}
	return res
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
