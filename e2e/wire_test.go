// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"tether/wire"
)

// rawDevice is a device speaking the wire protocol by hand, to send what a
// well-behaved agent never would.
type rawDevice struct {
	t *testing.T
	c *websocket.Conn
}

func dialRaw(t *testing.T, srv *server) *rawDevice {
	t.Helper()
	d := websocket.Dialer{Subprotocols: []string{wire.Subprotocol}, HandshakeTimeout: 10 * time.Second}
	c, resp, err := d.Dial(srv.url()+wire.Path, nil)
	if err != nil {
		t.Fatalf("dial %s: %v (%v)", srv.url(), err, resp)
	}
	t.Cleanup(func() { c.Close() })
	return &rawDevice{t: t, c: c}
}

func (d *rawDevice) write(b []byte) {
	d.t.Helper()
	d.c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if err := d.c.WriteMessage(websocket.TextMessage, b); err != nil {
		d.t.Fatalf("write: %v", err)
	}
}

func (d *rawDevice) send(ref string, b wire.Body) {
	d.t.Helper()
	raw, err := wire.Encode(ref, b)
	if err != nil {
		d.t.Fatal(err)
	}
	d.write(raw)
}

func (d *rawDevice) read() (wire.Frame, error) {
	d.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, raw, err := d.c.ReadMessage()
	if err != nil {
		return wire.Frame{}, err
	}
	return wire.Decode(raw)
}

func (d *rawDevice) expectError(what, code string) {
	d.t.Helper()
	f, err := d.read()
	if err != nil {
		d.t.Fatalf("after %s: %v", what, err)
	}
	var e wire.Error
	if err := f.Decode(&e); err != nil {
		d.t.Fatalf("after %s the server sent a %s frame, want an error: %v", what, f.Type, err)
	}
	if e.Code != code || e.Message == "" {
		d.t.Fatalf("after %s: error %q %q, want code %s with a message", what, e.Code, e.Message, code)
	}
}

func TestBadInputOnWire(t *testing.T) {
	f := newFleet(t)
	d := dialRaw(t, f.srv)
	d.send("", wire.Hello{Version: 1, Agent: "e2e-raw", EnrollKey: e2eEnrollKey})
	fr, err := d.read()
	if err != nil {
		t.Fatal(err)
	}
	var w wire.Welcome
	if err := fr.Decode(&w); err != nil || w.DeviceSecret == "" {
		t.Fatalf("check-in answered %s %v: %+v", fr.Type, err, w)
	}

	d.write([]byte(`{"type": "register", "body": {`))
	d.expectError("a truncated frame", wire.CodeBadFrame)
	d.write([]byte(`{"type": "teleport", "body": {}}`))
	d.expectError("an unknown frame type", wire.CodeUnknownType)
	d.write([]byte(`{"type": "register", "ref": "r0", "body": {"app": "", "sender": "1"}}`))
	d.expectError("a register without app", wire.CodeBadFrame)

	// The session still works.
	d.send("r1", wire.Register{App: "com.example.raw", Sender: f.sender})
	fr, err = d.read()
	if err != nil {
		t.Fatal(err)
	}
	var reg wire.Registered
	if err := fr.Decode(&reg); err != nil || fr.Ref != "r1" || reg.Token == "" {
		t.Fatalf("register after bad frames answered %s ref %q: %v", fr.Type, fr.Ref, err)
	}

	// An oversized frame ends that session with a close frame saying so.
	d.write([]byte(`{"type":"ack","body":{"ids":["` + strings.Repeat("i", wire.MaxFrameSize) + `"]}}`))
	for {
		_, err := d.read()
		if err == nil {
			continue // an error frame may come before the close
		}
		var ce *websocket.CloseError
		if errors.As(err, &ce) && ce.Code != websocket.CloseMessageTooBig {
			t.Fatalf("an oversized frame closed the session with %v, want %d", ce, websocket.CloseMessageTooBig)
		}
		break
	}

	// A stranger with made-up credentials is turned away.
	stranger := dialRaw(t, f.srv)
	stranger.send("", wire.Hello{Version: 1, DeviceID: w.DeviceID, DeviceSecret: "guessed"})
	stranger.expectError("wrong credentials", wire.CodeUnauthorized)

	// The server and the real device are unharmed.
	if resp, err := http.Get("http://" + f.srv.addr + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("healthz after bad frames: %v %v", resp, err)
	}
	msgs, _ := f.agent.listen(app)
	id := f.sendData(map[string]any{"still": "here"}, nil)
	if got := next(t, msgs); got.MessageID != id {
		t.Fatalf("delivered %s, want %s", got.MessageID, id)
	}
}

func TestEnrollKeyGuardsCheckIn(t *testing.T) {
	const key = "let-me-in-with-this-long-key"
	srv := startServer(t, "--enroll-key", key)
	d := dialRaw(t, srv)
	d.send("", wire.Hello{Version: 1})
	d.expectError("a check-in without the enrollment key", wire.CodeUnauthorized)

	d = dialRaw(t, srv)
	d.send("", wire.Hello{Version: 1, EnrollKey: key})
	fr, err := d.read()
	if err != nil {
		t.Fatal(err)
	}
	if fr.Type != wire.TypeWelcome {
		t.Fatalf("a check-in with the enrollment key answered %s", fr.Type)
	}

	// tetherd checks in with the key (read from a file, out of ps), and
	// after a restart reuses its credentials instead of checking in again.
	keyFile := filepath.Join(t.TempDir(), "enroll-key")
	if err := os.WriteFile(keyFile, []byte(key+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	a := startAgent(t, srv.url(), "--enroll-key-file", keyFile)
	before, err := a.ctl("status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	a.p.stop()
	a.start()
	after, err := a.ctl("status", "--json")
	if err != nil {
		t.Fatal(err)
	}
	var st1, st2 struct {
		DeviceID string `json:"device_id"`
	}
	if json.Unmarshal([]byte(before), &st1) != nil || json.Unmarshal([]byte(after), &st2) != nil || st1.DeviceID == "" || st1.DeviceID != st2.DeviceID {
		t.Fatalf("device ID before restart %q, after %q: want the same, non-empty", before, after)
	}
}

// TestVersion1DeviceBesideVersion2Agent: a device of protocol version 1,
// as in the field (here spoken by hand), and tetherd, which speaks
// version 2, share one server. Each gets messages down and sends
// upstream, and the server's log names the version of each session.
func TestVersion1DeviceBesideVersion2Agent(t *testing.T) {
	f := newFleet(t)
	msgs, _ := f.agent.listen(app)
	old := dialRaw(t, f.srv)
	old.send("", wire.Hello{Version: 1, Agent: "tetherd/1.0", EnrollKey: e2eEnrollKey})
	fr, err := old.read()
	var w wire.Welcome
	if err == nil {
		err = fr.Decode(&w)
	}
	if err != nil || w.Version != 1 {
		t.Fatalf("a version 1 hello answered %s %+v, %v; want a welcome of version 1", fr.Type, w, err)
	}
	const oldApp = "com.example.legacy"
	old.send("r1", wire.Register{App: oldApp, Sender: f.sender})
	var reg wire.Registered
	if fr, err = old.read(); err == nil {
		err = fr.Decode(&reg)
	}
	if err != nil {
		t.Fatalf("register: %v", err)
	}

	for round := range 3 {
		data := map[string]any{"round": fmt.Sprint(round)}
		id := f.sendData(data, nil)
		oldID := f.srv.mustSend(f.key, map[string]any{"to": reg.Token, "data": data})
		if got := next(t, msgs); got.MessageID != id || got.Data["round"] != data["round"] {
			t.Fatalf("round %d: tetherd's app got %+v, want %s", round, got, id)
		}
		old.c.SetReadDeadline(time.Now().Add(10 * time.Second))
		typ, raw, err := old.c.ReadMessage()
		var m wire.Message
		if err == nil {
			if fr, err = wire.Decode(raw); err == nil {
				err = fr.Decode(&m)
			}
		}
		if err != nil || typ != websocket.TextMessage || m.ID != oldID || m.Token != reg.Token || m.Data["round"] != data["round"] {
			t.Fatalf("round %d: the version 1 device got message type %d %q, %v; want the JSON frame of %s", round, typ, raw, err, oldID)
		}
		old.send("", wire.Ack{IDs: []string{m.ID}})

		upID := fmt.Sprint("up-", round)
		if _, err := f.agent.ctl("send", "--app", app, "--to", f.sender, "--id", upID, "--wait", "round="+fmt.Sprint(round)); err != nil {
			t.Fatal(err)
		}
		if got := f.hook.next(t); got["message_id"] != upID || got["from"] != f.token {
			t.Fatalf("round %d: the webhook got %v from tetherd, want %s", round, got, upID)
		}
		old.send(upID, wire.Upstream{App: oldApp, To: f.sender, ID: upID, TTL: 60, Data: map[string]string{"round": fmt.Sprint(round)}})
		var ack wire.UpstreamAck
		if fr, err = old.read(); err == nil {
			err = fr.Decode(&ack)
		}
		if err != nil || ack.ID != upID || ack.Error != "" {
			t.Fatalf("round %d: upstream from the version 1 device answered %+v, %v", round, ack, err)
		}
		if got := f.hook.next(t); got["message_id"] != upID || got["from"] != reg.Token {
			t.Fatalf("round %d: the webhook got %v from the version 1 device, want %s", round, got, upID)
		}
	}
	versions := map[string]bool{}
	for line := range strings.Lines(f.srv.p.log()) {
		if strings.Contains(line, "session open") {
			for _, v := range []string{"version=1", "version=2"} {
				versions[v] = versions[v] || strings.Contains(line, v)
			}
		}
	}
	if !versions["version=1"] || !versions["version=2"] {
		t.Fatalf("sessions of versions %v in the server's log, want 1 and 2", versions)
	}
}
