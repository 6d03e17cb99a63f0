// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tether/internal/testwait"
)

// xmppAppServer is e2e/acceptance/xmpp-ccs.js: an app server on the CCS
// endpoint built on the unchanged @xmpp/client library from npm.
type xmppAppServer struct {
	t      *testing.T
	stdin  io.WriteCloser
	events chan map[string]any
}

func startXMPPAppServer(t *testing.T, service, caFile, sender, key string) *xmppAppServer {
	t.Helper()
	dir, err := filepath.Abs("acceptance")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "node_modules", "@xmpp", "client")); err != nil {
		t.Fatalf("@xmpp/client is not installed in %s: make test installs it (npm ci there): %v", dir, err)
	}
	cmd := exec.Command("node", filepath.Join(dir, "xmpp-ccs.js"), service, sender, key)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NODE_EXTRA_CA_CERTS="+caFile)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	logFile, err := os.Create(filepath.Join(t.TempDir(), "xmpp-ccs.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logFile
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	x := &xmppAppServer{t: t, stdin: stdin, events: make(chan map[string]any, 100)}
	go func() {
		defer close(x.events)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev map[string]any
			if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
				t.Errorf("xmpp-ccs.js printed a line that is not JSON: %q", sc.Text())
				continue
			}
			x.events <- ev
		}
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logFile.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logFile.Name())
			t.Logf("xmpp-ccs.js stderr:\n%s", b)
		}
	})
	return x
}

func (x *xmppAppServer) command(cmd map[string]any) {
	x.t.Helper()
	b, _ := json.Marshal(cmd)
	if _, err := x.stdin.Write(append(b, '\n')); err != nil {
		x.t.Fatalf("command xmpp-ccs.js: %v", err)
	}
}

// next waits for the next event matching match, passing over others.
func (x *xmppAppServer) next(what string, match func(map[string]any) bool) map[string]any {
	x.t.Helper()
	timeout := time.After(30 * time.Second)
	for {
		select {
		case ev, ok := <-x.events:
			if !ok {
				x.t.Fatalf("xmpp-ccs.js ended before %s", what)
			}
			if ev["event"] == "error" {
				x.t.Fatalf("xmpp-ccs.js: %v (waiting for %s)", ev["error"], what)
			}
			if match(ev) {
				return ev
			}
		case <-timeout:
			x.t.Fatalf("no %s from xmpp-ccs.js within 30 s", what)
		}
	}
}

// stanza waits for a stanza from the server with the given message_type
// ("" for an upstream message) and message_id.
func (x *xmppAppServer) stanza(messageType, id string) map[string]any {
	x.t.Helper()
	ev := x.next(fmt.Sprintf("a %q stanza for %s", messageType, id), func(ev map[string]any) bool {
		g, _ := ev["gcm"].(map[string]any)
		mt, _ := g["message_type"].(string)
		return ev["event"] == "stanza" && mt == messageType && g["message_id"] == id
	})
	return ev["gcm"].(map[string]any)
}

// TestXMPPClientLibraryWorksUnchanged drives the CCS endpoint with
// @xmpp/client, over TLS with SASL PLAIN as SENDER_ID@gcm.googleapis.com:
// a downstream message reaches the app and is acked, its delivery receipt
// and an upstream message from the app reach the app server, which acks
// them, and a bad token is nacked.
func TestXMPPClientLibraryWorksUnchanged(t *testing.T) {
	xmppAddr := freeAddr(t)
	srv, caFile := tlsServer(t, "--xmpp-listen", xmppAddr)
	sender, key := srv.addSender("ccs-backend", "")
	a := startAgent(t, "https://"+srv.addr, "--ca-file", caFile)
	token := a.register(app, sender)
	msgs, _ := a.listen(app)
	t.Cleanup(func() { checkNoSecretsLogged(t, key, token) })

	x := startXMPPAppServer(t, "xmpps://"+xmppAddr, caFile, sender, key)
	x.next("online", func(ev map[string]any) bool { return ev["event"] == "online" })

	// Downstream: acked once stored, delivered, and receipted.
	x.command(map[string]any{"op": "send", "message": map[string]any{
		"to": token, "message_id": "m-1", "delivery_receipt_requested": true,
		"data": map[string]any{"setpoint": "19.5 <&> °C"},
	}})
	ack := x.stanza("ack", "m-1")
	if ack["from"] != token {
		t.Errorf("ack of m-1 is from %v, want the token", ack["from"])
	}
	d := next(t, msgs)
	if d.Data["setpoint"] != "19.5 <&> °C" {
		t.Fatalf("delivered %+v", d)
	}
	receipt := x.stanza("receipt", "dr2:m-1")
	data, _ := receipt["data"].(map[string]any)
	if receipt["from"] != "gcm.googleapis.com" || receipt["category"] != app || data["original_message_id"] != "m-1" ||
		data["message_status"] != "MESSAGE_SENT_TO_DEVICE" || data["device_registration_id"] != token {
		t.Errorf("receipt %v", receipt)
	}
	x.next("the receipt's ack", func(ev map[string]any) bool { return ev["event"] == "acked" && ev["message_id"] == "dr2:m-1" })

	// Upstream: from the app, through the agent, to the app server.
	if _, err := a.ctl("send", "--app", app, "--to", sender, "--id", "up-1", "--wait", "temp=21"); err != nil {
		t.Fatal(err)
	}
	up := x.stanza("", "up-1")
	upData, _ := up["data"].(map[string]any)
	if up["from"] != token || up["category"] != app || upData["temp"] != "21" {
		t.Errorf("upstream stanza %v", up)
	}
	x.next("the upstream message's ack", func(ev map[string]any) bool { return ev["event"] == "acked" && ev["message_id"] == "up-1" })
	testwait.For(t, "the server to settle up-1 on the app server's ack", 30*time.Second, func() error {
		if log := srv.p.log(); strings.Contains(log, "message_id=up-1 route=xmpp") {
			return nil
		}
		return fmt.Errorf("not settled yet")
	})

	// A token that is not one is nacked, naming the problem.
	x.command(map[string]any{"op": "send", "message": map[string]any{"to": "not-a-token", "message_id": "m-2", "data": map[string]any{"a": "b"}}})
	nack := x.stanza("nack", "m-2")
	if nack["error"] != "BAD_REGISTRATION" || nack["error_description"] == "" {
		t.Errorf("nack %v", nack)
	}
	x.command(map[string]any{"op": "stop"})
}
