// SPDX-License-Identifier: Apache-2.0

package server

import (
	"errors"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"tether/wire"
)

// ending is what a device read until its connection ended.
type ending struct {
	goAways []wire.GoAway
	others  []wire.Type
	code    int // close code; -1 when the connection ended without one
}

// readToEnd reads d's frames in a goroutine until the connection ends.
func readToEnd(d *device) <-chan ending {
	out := make(chan ending, 1)
	go func() {
		var e ending
		for {
			f, err := d.read()
			if err != nil {
				e.code = -1
				if ce, ok := errors.AsType[*websocket.CloseError](err); ok {
					e.code = ce.Code
				}
				out <- e
				return
			}
			var g wire.GoAway
			if f.Type == wire.TypeGoAway && f.Decode(&g) == nil {
				e.goAways = append(e.goAways, g)
			} else {
				e.others = append(e.others, f.Type)
			}
		}
	}()
	return out
}

// TestShutdownSendsGoAway: on shutdown every session gets a goaway with a
// random wait within the spread, then the close; a probe only the close.
func TestShutdownSendsGoAway(t *testing.T) {
	tests := []struct {
		name   string
		spread time.Duration
		most   int // the longest retry_after allowed
	}{
		{"spread", 5 * time.Second, 5},
		{"none", -1, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ts := startServer(t, func(c *Config) { c.ShutdownSpread = tt.spread })
			var sessions []<-chan ending
			for range 3 {
				sessions = append(sessions, readToEnd(ts.checkIn()))
			}
			d := ts.checkIn()
			sessions = append(sessions, readToEnd(d))
			probe := readToEnd(ts.probe(d, 60))
			ts.stop()
			for i, ch := range sessions {
				e := <-ch
				if len(e.goAways) != 1 || len(e.others) != 0 || e.code != websocket.CloseGoingAway {
					t.Fatalf("session %d read %+v, want one goaway and close %d", i, e, websocket.CloseGoingAway)
				}
				if g := e.goAways[0]; g.RetryAfter < 0 || g.RetryAfter > tt.most || g.Reason == "" {
					t.Errorf("session %d goaway %+v, want retry_after 0..%d and a reason", i, g, tt.most)
				}
			}
			if e := <-probe; len(e.goAways)+len(e.others) != 0 || e.code != websocket.CloseGoingAway {
				t.Errorf("probe read %+v, want only the close", e)
			}
		})
	}
}

// TestStoreTroubleSendsGoAway: a hello the server cannot serve because
// its store is unavailable is answered with a goaway of the configured
// wait, spread, and close 1013.
func TestStoreTroubleSendsGoAway(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.StoreRetryAfter = 20 * time.Second })
	known := ts.checkIn()
	known.conn.Close()
	if err := ts.store.Close(); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name  string
		hello wire.Hello
	}{
		{"check-in", wire.Hello{Version: 1, EnrollKey: testEnrollKey}},
		{"session", wire.Hello{Version: 1, DeviceID: known.id, DeviceSecret: known.secret}},
		{"probe", wire.Hello{Version: 1, DeviceID: known.id, DeviceSecret: known.secret, Probe: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := &device{t: t, conn: ts.dial()}
			d.send("", tt.hello)
			e := <-readToEnd(d)
			if len(e.goAways) != 1 || len(e.others) != 0 || e.code != websocket.CloseTryAgainLater {
				t.Fatalf("read %+v, want one goaway and close %d", e, websocket.CloseTryAgainLater)
			}
			if g := e.goAways[0]; g.RetryAfter < 10 || g.RetryAfter > 30 || g.Reason == "" {
				t.Errorf("goaway %+v, want retry_after 10..30 and a reason", g)
			}
		})
	}
}

// TestReconnectLimit: a device that opens more sessions a minute than
// the limit gets a goaway, and its live session stays.
func TestReconnectLimit(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.ReconnectLimit = 3 })
	snd := ts.addSender("")
	d := ts.checkIn() // a check-in is not counted
	token := d.register(app, snd.ID)
	for range 2 {
		d = ts.reconnect(d)
	}
	ts.probe(d, 60)
	flood := &device{t: t, conn: ts.dial()}
	flood.send("", wire.Hello{Version: 1, DeviceID: d.id, DeviceSecret: d.secret})
	e := <-readToEnd(flood)
	if len(e.goAways) != 1 || len(e.others) != 0 || e.code != websocket.CloseTryAgainLater {
		t.Fatalf("fourth connection in a minute read %+v, want one goaway and close %d", e, websocket.CloseTryAgainLater)
	}
	if g := e.goAways[0]; g.RetryAfter < 30 || g.RetryAfter > 90 {
		t.Errorf("goaway %+v, want retry_after 30..90", g)
	}
	marker(t, ts, d, snd.ServerKey, token)

	// Wrong credentials do not use up the device's connections.
	ts.clock.Advance(time.Minute)
	for range 5 {
		bad := &device{t: t, conn: ts.dial()}
		bad.send("", wire.Hello{Version: 1, DeviceID: d.id, DeviceSecret: d.secret + "x"})
		bad.expectError("", wire.CodeUnauthorized)
	}
	d = ts.reconnect(d)
	marker(t, ts, d, snd.ServerKey, token)
}
