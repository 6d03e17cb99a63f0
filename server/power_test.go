// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"tether/internal/testwait"
	"tether/wire"
)

// TestPowerModeDecidesWhatGoesAtOnce: each message is followed by a
// high-priority marker with time to live 0. A message that goes at once
// comes before the marker; one held on battery comes right behind it; one
// held in low mode comes only once the device is on mains.
func TestPowerModeDecidesWhatGoesAtOnce(t *testing.T) {
	tests := []struct {
		mode   string
		fields map[string]any
		atOnce bool
	}{
		{mode: "", fields: nil, atOnce: true},
		{mode: wire.ModeMains, fields: map[string]any{"priority": "normal"}, atOnce: true},
		{mode: wire.ModeMains, fields: map[string]any{"priority": "high", "delay_while_idle": true}, atOnce: true},
		{mode: wire.ModeBattery, fields: nil, atOnce: false},
		{mode: wire.ModeBattery, fields: map[string]any{"priority": "normal"}, atOnce: false},
		{mode: wire.ModeBattery, fields: map[string]any{"priority": "high"}, atOnce: true},
		{mode: wire.ModeBattery, fields: map[string]any{"priority": "high", "delay_while_idle": true}, atOnce: false},
		{mode: wire.ModeLow, fields: nil, atOnce: false},
		{mode: wire.ModeLow, fields: map[string]any{"priority": "high"}, atOnce: true},
		{mode: wire.ModeLow, fields: map[string]any{"priority": "high", "delay_while_idle": true}, atOnce: false},
	}
	ts := startServer(t, nil)
	snd := ts.addSender("")
	for _, tt := range tests {
		t.Run(powerMode(tt.mode)+"/"+fmtFields(tt.fields), func(t *testing.T) {
			d := ts.checkIn()
			token := d.register(app, snd.ID)
			d.conn.Close()
			d = ts.helloMode(d, tt.mode)
			fields := map[string]any{"time_to_live": 3600, "data": map[string]string{"x": "1"}}
			for k, v := range tt.fields {
				fields[k] = v
			}
			id := ts.sendOne(snd.ServerKey, token, fields)
			switch {
			case tt.atOnce:
				d.expectMessages(id)
				highMarker(t, ts, d, snd.ServerKey, token)
			case tt.mode == wire.ModeBattery:
				highMarker(t, ts, d, snd.ServerKey, token)
				d.expectMessages(id)
			default:
				highMarker(t, ts, d, snd.ServerKey, token)
				highMarker(t, ts, d, snd.ServerKey, token)
				d.state(wire.ModeMains, 0)
				d.expectMessages(id)
			}
			highMarker(t, ts, d, snd.ServerKey, token)
		})
	}
}

func fmtFields(m map[string]any) string {
	if len(m) == 0 {
		return "default"
	}
	var b strings.Builder
	for _, k := range []string{"priority", "delay_while_idle"} {
		if v, ok := m[k]; ok {
			if b.Len() > 0 {
				b.WriteString(",")
			}
			b.WriteString(k)
			if s, ok := v.(string); ok {
				b.WriteString("=" + s)
			}
		}
	}
	return b.String()
}

// TestBatteryFlushesBehindHighPriority: held messages go in one batch
// right behind a stored high-priority message, in their order.
func TestBatteryFlushesBehindHighPriority(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.state(wire.ModeBattery, 0)
	n1 := ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"n": "1"}})
	n2 := ts.sendOne(snd.ServerKey, token, map[string]any{"priority": "normal", "collapse_key": "c", "data": map[string]string{"n": "2"}})
	high := ts.sendOne(snd.ServerKey, token, map[string]any{"priority": "high", "data": map[string]string{"h": "1"}})
	d.expectMessages(high, n1, n2)
	highMarker(t, ts, d, snd.ServerKey, token)

	// Held again afterwards, and still stored until acked.
	n3 := ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"n": "3"}})
	highMarker(t, ts, d, snd.ServerKey, token)
	d.expectMessages(n3)
	d.ack(high, n1, n2)
	waitPending(t, ts, d.id, 1)
}

// TestBatteryFlushOutlastsTheWindow: a flush larger than the window goes
// on as the device acks, instead of holding the rest again.
func TestBatteryFlushOutlastsTheWindow(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.Window = 2 })
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.conn.Close()
	d = ts.helloMode(d, wire.ModeBattery)
	var held []string
	for i := range 3 {
		held = append(held, ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"n": string(rune('a' + i))}}))
	}
	high := ts.sendOne(snd.ServerKey, token, map[string]any{"priority": "high"})
	d.expectMessages(high, held[0])
	d.ack(high)
	d.expectMessages(held[1])
	d.ack(held[0], held[1])
	d.expectMessages(held[2])
}

func TestBatteryFlushesOnMains(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	// A session that starts on mains and moves to battery.
	marker(t, ts, d, snd.ServerKey, token)
	d.state(wire.ModeBattery, 0)
	// The state frame has no answer: the next frame answers this.
	d.register(app, snd.ID)
	n1 := ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"n": "1"}})
	n2 := ts.sendOne(snd.ServerKey, token, map[string]any{"delay_while_idle": true, "priority": "high"})
	d.state(wire.ModeMains, 0)
	d.expectMessages(n1, n2)
	marker(t, ts, d, snd.ServerKey, token)
}

// TestBatteryMaxDelay fires the timer of held messages by hand: it is
// armed for the maximum delay of the oldest, and firing it sends them.
func TestBatteryMaxDelay(t *testing.T) {
	var timers manualTimers
	ts := startServer(t, func(c *Config) { timers = useManualTimers(c); c.BatteryMaxDelay = 10 * time.Minute })
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.conn.Close()
	d = ts.helloMode(d, wire.ModeBattery)
	n1 := ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"n": "1"}})
	timer := timers.next(t)
	if timer.d <= 9*time.Minute || timer.d > 10*time.Minute {
		t.Fatalf("timer armed for %v, want the 10 min maximum delay", timer.d)
	}
	if left, _, _ := ts.store.Pending(context.Background(), d.id, 0, 0, nil); len(left) != 1 || left[0].ID != n1 {
		t.Fatalf("held message not stored: %v", left)
	}
	timer.fire()
	d.expectMessages(n1)
	highMarker(t, ts, d, snd.ServerKey, token)
	testwait.Until(t, "the timer stopped once nothing is held", 10*time.Second, func() bool { return timer.stopped.Load() })
}

// TestBatteryMaxDelayRealTimer runs the real timer with a short maximum
// delay.
func TestBatteryMaxDelayRealTimer(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.BatteryMaxDelay = 300 * time.Millisecond })
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.state(wire.ModeBattery, 0)
	d.register(app, snd.ID)
	n1 := ts.sendOne(snd.ServerKey, token, nil)
	d.expectMessages(n1)
	if !strings.Contains(ts.logs.String(), "held messages reached their maximum delay") {
		t.Error("the message was not held until its maximum delay")
	}
}

// TestBatteryReconnect: a new session on battery holds what is stored,
// except what has waited longer than the maximum delay already.
func TestBatteryReconnect(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.BatteryMaxDelay = 10 * time.Minute })
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.conn.Close()

	young := ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"age": "young"}})
	d2 := ts.helloMode(d, wire.ModeBattery)
	highMarker(t, ts, d2, snd.ServerKey, token)
	d2.expectMessages(young)
	d2.ack(young)
	waitPending(t, ts, d.id, 0)
	d2.conn.Close()

	old := ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"age": "old"}})
	ts.clock.Advance(11 * time.Minute)
	d3 := ts.helloMode(d, wire.ModeBattery)
	d3.expectMessages(old)
	highMarker(t, ts, d3, snd.ServerKey, token)
}

func TestLowModeHoldsUntilTheModeChanges(t *testing.T) {
	var timers manualTimers
	ts := startServer(t, func(c *Config) { timers = useManualTimers(c) })
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.conn.Close()
	d = ts.helloMode(d, wire.ModeLow)
	n1 := ts.sendOne(snd.ServerKey, token, map[string]any{"time_to_live": 3600})
	ts.sendOne(snd.ServerKey, token, map[string]any{"time_to_live": 60})
	high := ts.sendOne(snd.ServerKey, token, map[string]any{"priority": "high"})
	d.expectMessages(high)
	highMarker(t, ts, d, snd.ServerKey, token)
	if len(timers) != 0 {
		t.Error("a maximum delay was armed in low mode")
	}

	// Time to live still runs: the short one expires while held.
	ts.clock.Advance(61 * time.Second)
	d.state(wire.ModeBattery, 0)
	timer := timers.next(t)
	timer.fire()
	d.expectMessages(n1)
	highMarker(t, ts, d, snd.ServerKey, token)
}

// TestTTLZeroToIdleDevice: a normal-priority message with time to live 0
// cannot wait for an idle device, so it is dropped; a high-priority one
// goes, and the held messages with it.
func TestTTLZeroToIdleDevice(t *testing.T) {
	for _, mode := range []string{wire.ModeBattery, wire.ModeLow} {
		t.Run(mode, func(t *testing.T) {
			ts := startServer(t, nil)
			snd := ts.addSender("")
			d := ts.checkIn()
			token := d.register(app, snd.ID)
			d.conn.Close()
			d = ts.helloMode(d, mode)
			held := ts.sendOne(snd.ServerKey, token, nil)
			ts.sendOne(snd.ServerKey, token, map[string]any{"time_to_live": 0, "data": map[string]string{"dropped": "1"}})
			highMarker(t, ts, d, snd.ServerKey, token)
			if mode == wire.ModeLow {
				highMarker(t, ts, d, snd.ServerKey, token)
				d.state(wire.ModeMains, 0)
			}
			d.expectMessages(held)
			highMarker(t, ts, d, snd.ServerKey, token)
		})
	}
}

// TestNoticesAreNotHeld: a deleted_messages notice reaches a device on
// battery at once.
func TestNoticesAreNotHeld(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.conn.Close()
	var last string
	for range 101 {
		last = ts.sendOne(snd.ServerKey, token, map[string]any{"time_to_live": 3600})
	}
	d = ts.helloMode(d, wire.ModeBattery)
	if n := d.expectDeleted(); n.Count != 100 {
		t.Errorf("deleted_messages %+v", n)
	}
	highMarker(t, ts, d, snd.ServerKey, token)
	d.expectMessages(last)
}

// TestStateRearmsTimeout: the session's timeout follows the heartbeat of
// the latest state frame at once; heartbeat 0 leaves it as it was. Each
// case runs in a synctest bubble: the silences pass on the bubble's clock.
func TestStateRearmsTimeout(t *testing.T) {
	const silence = 2500 * time.Millisecond
	tests := []struct {
		name         string
		hello, state int // heartbeats, s
		open         bool
	}{
		{name: "longer", hello: 1, state: 4, open: true},
		{name: "unchanged", hello: 1, state: 0, open: false},
		{name: "shorter", hello: 4, state: 1, open: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				ts := startServerInBubble(t, func(c *Config) { c.HeartbeatGrace = 300 * time.Millisecond })
				snd := ts.addSender("")
				d := ts.hello(wire.Hello{Heartbeat: tt.hello})
				d.state(wire.ModeBattery, tt.state)
				time.Sleep(silence)
				if !tt.open {
					d.expectServerClosed()
					return
				}
				// Open after the hello's timeout, and closed after the new one.
				d.register(app, snd.ID)
				d.expectServerClosed()
			})
		})
	}
}

func TestBadStateFramesKeepSession(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	for i, body := range []string{
		`{"mode":"solar","heartbeat":60}`,
		`{"heartbeat":60}`,
		`{"mode":"battery","heartbeat":-1}`,
		`{"mode":"battery","heartbeat":86401}`,
		`"battery"`,
		``,
	} {
		ref := "s" + string(rune('0'+i))
		frame := `{"type":"state","ref":"` + ref + `"`
		if body != "" {
			frame += `,"body":` + body
		}
		d.sendRaw([]byte(frame + "}"))
		if e := d.expectError(ref, wire.CodeBadFrame); !strings.Contains(e.Message, "state") {
			t.Errorf("%s: error %q does not name the frame", body, e.Message)
		}
	}
	// Still on mains: a normal message goes at once.
	marker(t, ts, d, snd.ServerKey, token)
}
