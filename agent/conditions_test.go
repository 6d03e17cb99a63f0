// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"errors"
	"testing"
	"time"

	"tether/internal/testwait"
	"tether/ipc"
	"tether/store"
	"tether/wire"
)

// With a backoff of an hour, only the route coming back can explain a
// prompt reconnection, and the status says so.
func TestRouteDownHoldsRouteUpReconnects(t *testing.T) {
	p := newPeer(t)
	d := newDevice(t, "", p.url, nil, func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Hour, time.Hour })
	d.start()
	pc := p.nextConn(t)
	d.waitConnected(t)

	d.agent.NetworkChanged(false, "")
	pc.drop() // the route is gone: the connection dies with it
	testwait.Until(t, "the agent sees the connection gone", waitLimit, func() bool {
		st, _ := d.agent.Status(bg)
		return !st.Connected
	})
	d.agent.NetworkChanged(true, "eth0/192.0.2.1")
	p.nextConn(t)
	d.waitConnected(t)
	st, err := d.agent.Status(bg)
	if err != nil {
		t.Fatal(err)
	}
	if st.LastConnect != "route-up" || st.Network != "eth0/192.0.2.1" || st.Reconnects != 1 {
		t.Fatalf("status after the route came back: %+v", st)
	}
}

// A new network brings the heartbeat learned for it; the first report of
// the network the agent is already on does not reconnect.
func TestNetworkBringsItsLearnedHeartbeat(t *testing.T) {
	p := newPeer(t)
	policy := DefaultHeartbeatPolicy
	d := newDevice(t, "", p.url, nil, func(c *Config) { c.HeartbeatPolicy = &policy })
	learned := store.Heartbeat{Good: 7 * time.Minute, Bad: 8 * time.Minute}
	if err := d.store.SetHeartbeat("wlan0/192.0.2.1", learned); err != nil {
		t.Fatal(err)
	}
	d.start()
	p.nextConn(t)
	d.waitConnected(t)
	if st := d.agent.Link().Stats(); st.Heartbeat != policy.Start {
		t.Fatalf("heartbeat before any network is known: %v, want %v", st.Heartbeat, policy.Start)
	}

	d.agent.NetworkChanged(true, "wlan0/192.0.2.1")
	st, err := d.agent.Status(bg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Heartbeat != 420 || st.HeartbeatHeld != 420 || st.HeartbeatFailed != 480 || st.Reconnects != 0 {
		t.Fatalf("status on a known network: %+v", st)
	}

	d.agent.NetworkChanged(true, "wwan0/198.51.100.1")
	p.nextConn(t)
	d.waitConnected(t)
	if st, _ = d.agent.Status(bg); st.Heartbeat != 60 || st.LastConnect != "route-changed" || st.HeartbeatFailed != 0 {
		t.Fatalf("status on a new network: %+v", st)
	}
}

// In low power mode normal-priority upstream messages wait; a
// high-priority one takes them along, and so does leaving low mode.
func TestLowPowerDefersNormalUpstream(t *testing.T) {
	_, d, pc := onlineWithApp(t, nil)
	d.waitConnected(t)
	if err := d.agent.SetPowerMode("asleep"); !errors.Is(err, ErrPowerMode) {
		t.Fatalf("unknown mode: %v", err)
	}
	if err := d.agent.SetPowerMode(PowerLow); err != nil {
		t.Fatal(err)
	}
	if st, _ := d.agent.Status(bg); st.PowerMode != PowerLow {
		t.Fatalf("power mode %q", st.PowerMode)
	}
	send := func(id, priority string) {
		t.Helper()
		if _, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, ID: id, Priority: priority}); err != nil {
			t.Fatal(err)
		}
	}
	upstreamID := func() string {
		t.Helper()
		var up wire.Upstream
		if err := pc.waitFor(t, wire.TypeUpstream).Decode(&up); err != nil {
			t.Fatal(err)
		}
		return up.ID
	}

	// Had the normal ones gone at once, they would come first: the
	// session's single writer keeps the order.
	send("normal-1", "normal")
	send("normal-2", "")
	send("urgent", "high")
	if first := upstreamID(); first != "urgent" {
		t.Fatalf("first upstream message %q, want the high-priority one", first)
	}
	got := map[string]bool{upstreamID(): true, upstreamID(): true}
	if !got["normal-1"] || !got["normal-2"] {
		t.Fatalf("after a high-priority send the server got %v, want both deferred ones", got)
	}

	send("normal-3", "normal")
	send("normal-4", "normal")
	if err := d.agent.SetPowerMode(PowerBattery); err != nil {
		t.Fatal(err)
	}
	got = map[string]bool{upstreamID(): true, upstreamID(): true}
	if !got["normal-3"] || !got["normal-4"] {
		t.Fatalf("after leaving low mode the server got %v", got)
	}
}

// The server learns the power mode and heartbeat in every hello, and from
// a state frame when they change during a session.
func TestPowerModeAndHeartbeatAnnounced(t *testing.T) {
	p, d, pc := onlineWithApp(t, nil)
	d.waitConnected(t)
	if pc.hello.Mode != PowerMains {
		t.Fatalf("hello mode %q", pc.hello.Mode)
	}
	if err := d.agent.SetPowerMode(PowerBattery); err != nil {
		t.Fatal(err)
	}
	var st wire.State
	if err := pc.waitFor(t, wire.TypeState).Decode(&st); err != nil || st.Mode != PowerBattery || st.Heartbeat != int(d.agent.Link().Stats().Heartbeat/time.Second) {
		t.Fatalf("state frame %+v, %v", st, err)
	}
	pc.drop()
	if pc = p.nextConn(t); pc.hello.Mode != PowerBattery {
		t.Fatalf("hello after a reconnection has mode %q", pc.hello.Mode)
	}
}

// The server learns whether the device is on Wi-Fi from a state frame
// when the platform tells, and from every hello after; the agent says
// nothing of a link it was not told.
func TestLinkAnnounced(t *testing.T) {
	p, d, pc := onlineWithApp(t, nil)
	d.waitConnected(t)
	if pc.hello.Link != "" {
		t.Fatalf("hello link %q before the platform told any", pc.hello.Link)
	}
	for _, tt := range []struct {
		wifi bool
		want string
	}{{true, wire.LinkWiFi}, {false, wire.LinkOther}} {
		d.agent.SetWiFi(tt.wifi)
		var st wire.State
		if err := pc.waitFor(t, wire.TypeState).Decode(&st); err != nil || st.Link != tt.want || st.Mode != PowerMains {
			t.Fatalf("state frame %+v, %v; want link %s", st, err, tt.want)
		}
	}
	d.agent.SetWiFi(true)
	pc.waitFor(t, wire.TypeState)
	pc.drop()
	if pc = p.nextConn(t); pc.hello.Link != wire.LinkWiFi {
		t.Fatalf("hello after a reconnection has link %q", pc.hello.Link)
	}
}

// A server that goes away with a delay is not dialled again before it.
func TestGoAwayObeyed(t *testing.T) {
	p, d, pc := onlineWithApp(t, nil)
	d.waitConnected(t)
	pc.send("", wire.GoAway{RetryAfter: 1, Reason: "draining"})
	var notBefore time.Time
	testwait.Until(t, "the agent to take the go-away", waitLimit, func() bool {
		d.agent.link.mu.Lock()
		defer d.agent.link.mu.Unlock()
		notBefore = d.agent.link.notBefore
		return !notBefore.IsZero()
	})
	pc.drop()
	p.nextConn(t)
	d.waitConnected(t)
	st := d.agent.Link().Stats()
	if st.LastDisconnect != "goaway" || st.LastConnectAt.Before(notBefore) {
		t.Fatalf("after a go-away until %v: %+v", notBefore, st)
	}
}

// A server that refuses the session with a go-away instead of a welcome
// is not dialled again before the delay it gave.
func TestGoAwayInsteadOfWelcome(t *testing.T) {
	p := newPeer(t)
	p.set(func(p *peer) { p.goAway = &wire.GoAway{RetryAfter: 1, Reason: "store unavailable"} })
	d := newDevice(t, "", p.url, nil, func(c *Config) { c.MinBackoff, c.MaxBackoff = time.Millisecond, time.Millisecond })
	d.start()
	var notBefore time.Time
	testwait.Until(t, "the agent to take the go-away", waitLimit, func() bool {
		d.agent.link.mu.Lock()
		defer d.agent.link.mu.Unlock()
		notBefore = d.agent.link.notBefore
		return !notBefore.IsZero()
	})
	p.set(func(p *peer) { p.goAway = nil })
	p.nextConn(t)
	d.waitConnected(t)
	if st := d.agent.Link().Stats(); st.LastConnectAt.Before(notBefore) {
		t.Fatalf("connected at %v, before the go-away's %v", st.LastConnectAt, notBefore)
	}
}
