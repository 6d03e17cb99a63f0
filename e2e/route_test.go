// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"tether/internal/netnstest"
	"tether/internal/testwait"
)

// agentStatus is the part of `tetherctl status --json` these tests read.
type agentStatus struct {
	Connected      bool   `json:"connected"`
	PowerMode      string `json:"power_mode"`
	Network        string `json:"network"`
	LastConnect    string `json:"last_connect"`
	LastDisconnect string `json:"last_disconnect"`
	Reconnects     int    `json:"reconnects"`
}

func (a *agent) status() (agentStatus, error) {
	out, err := a.ctl("--json", "status")
	if err != nil {
		return agentStatus{}, err
	}
	var st agentStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return agentStatus{}, fmt.Errorf("tetherctl status --json: %w: %s", err, out)
	}
	return st, nil
}

// TestRouteUpReconnectsAtOnce puts the server and the device in network
// namespaces of their own, the server behind the device's default route.
// With the reconnection backoff at a minute, the route goes away and the
// server restarts (the connection ends); when the route comes back the
// agent reconnects at once and says why: route-up.
func TestRouteUpReconnectsAtOnce(t *testing.T) {
	srvNS, devNS := netnstest.New(t), netnstest.New(t)
	// device 10.77.0.2 ── veth ── 10.77.0.1 server; the server's service
	// address 10.78.0.1 is reachable only through the device's default
	// route.
	veth := "tv" + srvNS.Name[len(srvNS.Name)-6:]
	srvNS.IP(t, "link", "add", veth+"s", "type", "veth", "peer", "name", veth+"d", "netns", devNS.Name)
	srvNS.IP(t, "addr", "add", "10.77.0.1/30", "dev", veth+"s")
	srvNS.IP(t, "link", "set", veth+"s", "up")
	srvNS.IP(t, "link", "set", "lo", "up")
	srvNS.IP(t, "addr", "add", "10.78.0.1/32", "dev", "lo")
	devNS.IP(t, "addr", "add", "10.77.0.2/30", "dev", veth+"d")
	devNS.IP(t, "link", "set", veth+"d", "up")
	devNS.IP(t, "link", "set", "lo", "up")
	devNS.IP(t, "route", "add", "default", "via", "10.77.0.1")

	srv := newServer(t)
	srv.netns, srv.addr = srvNS.Name, "10.78.0.1:8443"
	srv.startListening()
	a := newAgent(t, "ws://"+srv.addr, "--insecure", "--min-backoff", "1m", "--max-backoff", "1m", "--heartbeat", "4m", "--dbus", "off")
	a.netns = devNS.Name
	a.launch()
	a.waitConnected()
	st, err := a.status()
	if err != nil {
		t.Fatal(err)
	}
	if st.Network != veth+"d/10.77.0.1" {
		t.Errorf("network %q, want the default route's interface and gateway", st.Network)
	}

	devNS.IP(t, "route", "del", "default")
	srv.p.kill()
	testwait.For(t, "the agent to see the connection gone", 30*time.Second, func() error {
		if st, err := a.status(); err != nil || st.Connected {
			return fmt.Errorf("still connected (%v)", err)
		}
		return nil
	})
	srv.startListening()
	devNS.IP(t, "route", "add", "default", "via", "10.77.0.1")
	a.waitConnected()
	if st, err = a.status(); err != nil || st.LastConnect != "route-up" || st.Reconnects != 1 {
		t.Fatalf("status after the route came back: %+v, %v; want a reconnection caused by route-up", st, err)
	}
}
