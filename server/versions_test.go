// SPDX-License-Identifier: Apache-2.0

package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"tether/wire"
)

// TestVersionsSideBySide: an agent of protocol version 1, as in the
// field, and one of version 2 hold sessions on one server at once. Each
// gets its messages in its own encoding (JSON text, compact binary) for
// two registrations, acks them, and sends upstream; neither session
// minds the other's frames.
func TestVersionsSideBySide(t *testing.T) {
	hook := newWebhook(t, 0)
	ts := startServer(t, nil)
	snd := ts.addSender(hook.URL)
	apps := []string{app, app + ".other"}
	devices := []struct {
		version     int
		messageType int // of the message frames
		d           *device
		tokens      []string
	}{
		{version: 1, messageType: websocket.TextMessage},
		{version: 2, messageType: websocket.BinaryMessage},
	}
	for i := range devices {
		dv := &devices[i]
		dv.d = ts.hello(wire.Hello{Version: dv.version, EnrollKey: ts.cfg.EnrollKey})
		if dv.d.welcome.Version != dv.version {
			t.Fatalf("hello of version %d welcomed with version %d", dv.version, dv.d.welcome.Version)
		}
		for _, a := range apps {
			dv.tokens = append(dv.tokens, dv.d.register(a, snd.ID))
		}
	}
	for round := range 4 {
		for _, dv := range devices {
			n := round % len(apps)
			data := map[string]string{"round": fmt.Sprint(round)}
			id := ts.sendOne(snd.ServerKey, dv.tokens[n], map[string]any{"data": data, "time_to_live": 3600})
			dv.d.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			typ, frame, err := dv.d.conn.ReadMessage()
			if err != nil {
				t.Fatalf("version %d, round %d: %v", dv.version, round, err)
			}
			f, err := dv.d.codec.Decode(frame)
			var m wire.Message
			if err == nil {
				err = f.Decode(&m)
			}
			if err != nil || typ != dv.messageType || m.ID != id || m.Token != dv.tokens[n] || m.App != apps[n] || m.From != snd.ID || m.Data["round"] != data["round"] {
				t.Fatalf("version %d, round %d: WebSocket message type %d, %+v, %v; want type %d, message %s to %s",
					dv.version, round, typ, m, err, dv.messageType, id, apps[n])
			}
			dv.d.ack(id)

			up := wire.Upstream{App: apps[n], To: snd.ID, ID: fmt.Sprintf("up-%d-%d", dv.version, round), TTL: 600, Data: data}
			if ack := sendUpstream(t, dv.d, up); ack.Error != "" {
				t.Fatalf("version %d: upstream refused: %s", dv.version, ack.Error)
			}
			if got := hook.next(t); got.MessageID != up.ID || got.From != dv.tokens[n] || got.Category != apps[n] {
				t.Fatalf("version %d: the app server got %+v for %s", dv.version, got, up.ID)
			}
		}
	}
	for _, dv := range devices {
		waitPending(t, ts, dv.d.id, 0)
	}

	// A compact frame is a bad frame in a version 1 session, and an ack
	// of a number never sent one in a version 2 session; both go on.
	for _, dv := range devices {
		dv.d.sendRaw([]byte("\x02\x04\x63"))
		dv.d.expectError("", wire.CodeBadFrame)
		marker(t, ts, dv.d, snd.ServerKey, dv.tokens[0])
	}
}
