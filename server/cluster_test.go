// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"fmt"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"tether/internal/natstest"
	"tether/internal/testwait"
	"tether/wire"
)

var clusterPrefixes atomic.Int64

// startNodes starts n servers that are nodes of one cluster, each with a
// public URL; mod may change each one's Config.
func startNodes(t *testing.T, n int, mod func(i int, c *Config)) []*testServer {
	t.Helper()
	ports, err := natstest.FreePorts(n)
	if err != nil {
		t.Fatal(err)
	}
	prefix := fmt.Sprintf("c%d", clusterPrefixes.Add(1))
	nodes := make([]*testServer, n)
	for i := range n {
		nodes[i] = startServer(t, func(c *Config) {
			c.Listen = fmt.Sprintf("127.0.0.1:%d", ports[i])
			c.NATS = clusterConfig(t, prefix)
			c.NATS.PublicURL = fmt.Sprintf("ws://127.0.0.1:%d", ports[i])
			if mod != nil {
				mod(i, c)
			}
		})
	}
	// Every partition has a node before the test begins.
	testwait.Until(t, "every partition to have a node", 10*time.Second, func() bool {
		held := 0
		for _, ts := range nodes {
			held += len(ts.node.leases.Held())
		}
		return held == nodes[0].node.st.Shards()
	})
	return nodes
}

// TestClusterMessagesReachDevicesOnAnyNode: a message sent through any node
// reaches a device on any other at once, and an upstream message reaches
// the webhook once.
func TestClusterMessagesReachDevicesOnAnyNode(t *testing.T) {
	hook := newWebhook(t, 0)
	nodes := startNodes(t, 3, nil)
	snd := nodes[0].addSender(hook.URL)
	devices := make([]*device, len(nodes))
	tokens := make([]string, len(nodes))
	for i, ts := range nodes {
		devices[i] = ts.checkIn()
		tokens[i] = devices[i].register(app, snd.ID)
	}
	for from, via := range nodes {
		for to, d := range devices {
			if to == from {
				continue
			}
			id := via.sendOne(snd.ServerKey, tokens[to], map[string]any{"data": map[string]string{"via": fmt.Sprint(from)}})
			m := d.expectMessage()
			if m.ID != id || m.Data["via"] != fmt.Sprint(from) {
				t.Fatalf("device on node %d got %s %v, want %s from node %d", to, m.ID, m.Data, id, from)
			}
			d.ack(m.ID)
		}
	}
	for i, d := range devices {
		sendUp(t, d, snd.ID, fmt.Sprint("up-", i))
	}
	var got []string
	for range devices {
		got = append(got, hook.next(t).MessageID)
	}
	slices.Sort(got)
	if want := []string{"up-0", "up-1", "up-2"}; !slices.Equal(got, want) {
		t.Errorf("webhook got %v, want %v", got, want)
	}
	for _, ts := range nodes {
		waitUpstreamCount(t, ts, 0)
	}
	if n := hook.attemptCount(); n != len(devices) {
		t.Errorf("%d webhook requests for %d messages", n, len(devices))
	}
}

// TestClusterOneSessionPerDevice: a newer session on another node ends the
// older one; a heartbeat probe elsewhere ends nothing.
func TestClusterOneSessionPerDevice(t *testing.T) {
	nodes := startNodes(t, 3, nil)
	snd := nodes[0].addSender("")
	first := nodes[0].checkIn()
	token := first.register(app, snd.ID)

	second := nodes[1].reconnect(first)
	if code := first.expectClosed(); code != closeReplaced {
		t.Fatalf("older session closed with %d, want %d", code, closeReplaced)
	}
	probe := nodes[2].hello(wire.Hello{DeviceID: first.id, DeviceSecret: first.secret, Probe: true})
	defer probe.conn.Close()
	id := nodes[2].sendOne(snd.ServerKey, token, nil)
	if m := second.expectMessage(); m.ID != id {
		t.Fatalf("the newer session got %s, want %s", m.ID, id)
	}
}

// TestClusterXMPPTakesUpstreamFromAnyNode: a sender's XMPP connection on
// one node receives the upstream messages of a device on another, and the
// webhook none of them.
func TestClusterXMPPTakesUpstreamFromAnyNode(t *testing.T) {
	hook := newWebhook(t, 0)
	nodes := startNodes(t, 3, func(i int, c *Config) {
		if i == 0 {
			c.XMPPListen, c.XMPPPlaintext, c.XMPPAckTimeout = "127.0.0.1:0", true, 5*time.Second
		}
	})
	snd := nodes[0].addSender(hook.URL)
	xc := nodes[0].dialCCS(snd)
	d := nodes[2].checkIn()
	token := d.register(app, snd.ID)
	sendUp(t, d, snd.ID, "up-1")
	got := nextStanza(t, xc)
	if got.MessageID != "up-1" || got.From != token {
		t.Fatalf("stanza %+v", got)
	}
	sendStanza(t, xc, map[string]string{"to": token, "message_id": "up-1", "message_type": "ack"})
	for _, ts := range nodes {
		waitUpstreamCount(t, ts, 0)
	}
	if hook.attemptCount() != 0 {
		t.Error("the webhook got a message while the sender had an XMPP connection")
	}
}

// TestClusterWorkMovesWithTheNodes: a node that stops gives its partitions
// up, and the others deliver what waited in them.
func TestClusterWorkMovesWithTheNodes(t *testing.T) {
	hook := newWebhook(t, -1) // refuses until told otherwise
	nodes := startNodes(t, 2, nil)
	snd := nodes[0].addSender(hook.URL)
	// The device is on the node that does not deliver its upstream
	// messages, which stops.
	d := nodes[0].checkIn()
	part := nodes[0].node.st.ShardOf(d.id)
	owner, other := nodes[0], nodes[1]
	if !owner.node.leases.Holds(part) {
		owner, other = other, owner
		d.conn.Close()
		d = other.reconnect(d)
	}
	d.register(app, snd.ID)
	for i := range 6 {
		sendUp(t, d, snd.ID, fmt.Sprint("up-", i))
	}
	testwait.Until(t, "attempts", 10*time.Second, func() bool { return hook.attemptCount() >= 6 })
	owner.stop()
	testwait.Until(t, "the other node to take every partition", 10*time.Second, func() bool {
		return len(other.node.leases.Held()) == other.node.st.Shards()
	})
	hook.setFailures(0)
	var got []string
	for range 6 {
		got = append(got, hook.next(t).MessageID)
	}
	slices.Sort(got)
	if want := []string{"up-0", "up-1", "up-2", "up-3", "up-4", "up-5"}; !slices.Equal(got, want) {
		t.Errorf("delivered %v, want %v", got, want)
	}
}

// TestClusterAdminReachesTheSession: a token rotated through another
// node's admin socket reaches the device's session at once.
func TestClusterAdminReachesTheSession(t *testing.T) {
	nodes := startNodes(t, 2, nil)
	snd := nodes[0].addSender("")
	d := nodes[0].checkIn()
	token := d.register(app, snd.ID)
	a, err := OpenAdmin(context.Background(), AdminConfig{DataDir: nodes[1].dir})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	rotated, err := a.RotateToken(context.Background(), token, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	var tr wire.TokenRefresh
	f, err := d.read()
	if err != nil || f.Type != wire.TypeTokenRefresh || f.Decode(&tr) != nil || tr.Token != rotated.Token {
		t.Fatalf("got %s %s, %v; want a token refresh", f.Type, f.Body, err)
	}
}

// TestClusterLimitsHoldAcrossNodes: a device's rate limit counts the sends
// of every node.
func TestClusterLimitsHoldAcrossNodes(t *testing.T) {
	nodes := startNodes(t, 2, func(_ int, c *Config) { c.DeviceRateLimit = 3 })
	snd := nodes[0].addSender("")
	d := nodes[0].checkIn()
	token := d.register(app, snd.ID)
	var errs []string
	for i := range 4 {
		resp := nodes[i%2].send(snd.ServerKey, map[string]any{"to": token})
		errs = append(errs, resp.Results[0].Error)
	}
	if want := []string{"", "", "", errDeviceRate}; !slices.Equal(errs, want) {
		t.Errorf("results %v, want %v", errs, want)
	}
}

// TestClusterShutdownNamesAnotherNode: a node that shuts down sends its
// devices to another node.
func TestClusterShutdownNamesAnotherNode(t *testing.T) {
	nodes := startNodes(t, 2, nil)
	testwait.Until(t, "the nodes to know each other", 10*time.Second, func() bool { return nodes[1].node.cl.Members() == 2 })
	d := nodes[1].checkIn()
	go nodes[1].stop()
	var g wire.GoAway
	for {
		f, err := d.read()
		if err != nil {
			t.Fatalf("no goaway: %v", err)
		}
		if f.Type == wire.TypeGoAway {
			if err := f.Decode(&g); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
	if want := nodes[0].cfg.NATS.PublicURL; g.Server != want {
		t.Errorf("goaway names %q, want %q", g.Server, want)
	}
}
