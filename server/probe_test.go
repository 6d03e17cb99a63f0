// SPDX-License-Identifier: Apache-2.0

package server

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"tether/internal/testwait"
	"tether/wire"
)

// TestProbeLeavesTheSessionAlone: a probe gets a welcome with its own
// heartbeat, neither replaces nor disturbs the device's session, gets no
// messages, and ends with an invalid error at its first frame.
func TestProbeLeavesTheSessionAlone(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)

	p := ts.probe(d, 420)
	if p.welcome.DeviceID != d.id || p.welcome.DeviceSecret != "" || p.welcome.Heartbeat != 420 {
		t.Errorf("probe welcome %+v", p.welcome)
	}
	if ss := ts.hub.session(d.id); ss == nil {
		t.Fatal("the probe took the session's place")
	}
	stored := ts.sendOne(snd.ServerKey, token, map[string]any{"time_to_live": 3600})
	d.expectMessages(stored)
	marker(t, ts, d, snd.ServerKey, token)

	// The probe's first frame is answered with invalid, not preceded by
	// any message, and ends the probe.
	p.send("r1", wire.Register{App: app, Sender: snd.ID})
	p.expectError("r1", wire.CodeInvalid)
	if code := p.expectClosed(); code != websocket.CloseProtocolError {
		t.Errorf("probe closed with %d", code)
	}
	marker(t, ts, d, snd.ServerKey, token)
}

// TestProbeWithoutSession: a probe of a device that has no session gets
// nothing; the message waits for the session.
func TestProbeWithoutSession(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.conn.Close()
	testwait.Until(t, "session gone", 10*time.Second, func() bool { return ts.hub.session(d.id) == nil })

	p := ts.probe(d, 0)
	if p.welcome.Heartbeat != 300 {
		t.Errorf("probe welcome heartbeat %d, want the server's default", p.welcome.Heartbeat)
	}
	ts.sendOne(snd.ServerKey, token, map[string]any{"time_to_live": 0, "priority": "high"})
	stored := ts.sendOne(snd.ServerKey, token, map[string]any{"time_to_live": 3600, "priority": "high"})
	if ts.hub.session(d.id) != nil {
		t.Fatal("the probe counts as the device's session")
	}
	p.state(wire.ModeBattery, 60)
	p.expectError("", wire.CodeInvalid)
	p.expectClosed()

	d = ts.reconnect(d)
	d.expectMessages(stored)
	marker(t, ts, d, snd.ServerKey, token)
}

func TestNewerProbeReplacesOlder(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	first := ts.probe(d, 60)
	second := ts.probe(d, 120)
	if code := first.expectClosed(); code != closeReplaced {
		t.Errorf("older probe closed with %d", code)
	}
	pong := make(chan string, 1)
	second.conn.SetPongHandler(func(data string) error { pong <- data; return nil })
	second.conn.WriteControl(websocket.PingMessage, []byte("probe"), time.Now().Add(time.Second))
	go second.read() // runs the pong handler
	select {
	case got := <-pong:
		if got != "probe" {
			t.Errorf("pong %q", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the newer probe answers no ping")
	}
	marker(t, ts, d, snd.ServerKey, token)
}

// TestProbeTimeout: a probe lives as long as its heartbeat plus the grace
// allows, and pings keep it open. It runs in a synctest bubble: the
// probe's seconds pass on the bubble's clock.
func TestProbeTimeout(t *testing.T) { synctest.Test(t, testProbeTimeout) }

func testProbeTimeout(t *testing.T) {
	ts := startServerInBubble(t, func(c *Config) { c.HeartbeatGrace = 200 * time.Millisecond })
	d := ts.checkIn()

	silent := ts.probe(d, 1)
	silent.expectServerClosed()

	live := ts.probe(d, 1)
	ended := make(chan error, 1)
	go func() {
		for {
			if _, err := live.read(); err != nil {
				ended <- err
				return
			}
		}
	}()
	for range 5 {
		live.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(time.Second))
		time.Sleep(400 * time.Millisecond)
	}
	select {
	case err := <-ended:
		t.Fatalf("a probe that pings was closed: %v", err)
	default:
	}
	// Silent from now on, it is closed by the server, well before the
	// device's own read deadline.
	if err := <-ended; isTimeout(err) {
		t.Errorf("the silent probe was not closed: %v", err)
	}
}

func TestProbeCredentials(t *testing.T) {
	ts := startServer(t, nil)
	good := ts.checkIn()
	tests := []struct {
		name  string
		hello string
		code  string
		close int
	}{
		{"wrong secret", `{"version":1,"device_id":"` + good.id + `","device_secret":"` + good.secret + `x","probe":true}`, wire.CodeUnauthorized, websocket.ClosePolicyViolation},
		{"unknown device", `{"version":1,"device_id":"0000000000000000","device_secret":"` + good.secret + `","probe":true}`, wire.CodeUnauthorized, websocket.ClosePolicyViolation},
		{"no credentials", `{"version":1,"probe":true}`, wire.CodeBadFrame, websocket.CloseProtocolError},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := &device{t: t, conn: ts.dial()}
			p.sendRaw([]byte(`{"type":"hello","body":` + tt.hello + `}`))
			p.expectError("", tt.code)
			if code := p.expectClosed(); code != tt.close {
				t.Errorf("close code %d, want %d", code, tt.close)
			}
		})
	}
	// The session of the device never noticed.
	snd := ts.addSender("")
	marker(t, ts, good, snd.ServerKey, good.register(app, snd.ID))
}
