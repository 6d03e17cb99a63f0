// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"tether/internal/testwait"
)

// TestDrainDevices: a drain sends every live session a goaway naming the
// node to go to, or a wait when there is none, then the close; from then
// on a new connection gets the goaway before its handshake, until the
// server restarts. The device's messages wait for it.
func TestDrainDevices(t *testing.T) {
	tests := []struct {
		name          string
		drain         DeviceDrain
		server        string
		least, most   int // the retry_after allowed
		sessionsCount int
	}{
		{"to another node", DeviceDrain{To: "wss://node-2.example.com", Over: 2 * time.Second, RetryAfter: time.Minute}, "wss://node-2.example.com", 0, 0, 3},
		{"nowhere to go", DeviceDrain{RetryAfter: time.Minute}, "", 30, 90, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := t.TempDir()
			ts := startServerIn(t, dir, func(c *Config) { c.NATS = nil })
			snd := ts.addSender("")
			var devs []*device
			var tokens []string
			var endings []<-chan ending
			for range tt.sessionsCount {
				d := ts.checkIn()
				tokens = append(tokens, d.register(app, snd.ID))
				devs = append(devs, d)
				endings = append(endings, readToEnd(d))
			}
			admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: dir})
			if err != nil {
				t.Fatal(err)
			}
			defer admin.Close()
			res, err := admin.DrainDevices(context.Background(), tt.drain)
			if err != nil {
				t.Fatal(err)
			}
			if res.Sessions != tt.sessionsCount {
				t.Errorf("drain of %d sessions, want %d", res.Sessions, tt.sessionsCount)
			}
			check := func(what string, e ending) {
				t.Helper()
				if len(e.goAways) != 1 || e.code != websocket.CloseGoingAway {
					t.Fatalf("%s: goaways %+v, close %d, then %v; want one goaway and 1001", what, e.goAways, e.code, e.others)
				}
				g := e.goAways[0]
				if g.Server != tt.server || g.RetryAfter < tt.least || g.RetryAfter > tt.most || g.Reason != "server draining" {
					t.Errorf("%s: goaway %+v, want server %q and retry_after %d to %d", what, g, tt.server, tt.least, tt.most)
				}
			}
			for i, end := range endings {
				select {
				case e := <-end:
					check("session", e)
				case <-time.After(30 * time.Second):
					t.Fatalf("session %d not drained", i)
				}
			}
			// A device that comes back meanwhile is sent away before its
			// hello; its messages wait for it, and after a restart the
			// server takes it again.
			select {
			case e := <-readToEnd(&device{t: t, conn: ts.dial()}):
				check("new connection", e)
			case <-time.After(30 * time.Second):
				t.Fatal("new connection not sent away")
			}
			id := ts.sendOne(snd.ServerKey, tokens[0], map[string]any{"data": map[string]string{"after": "drain"}})
			ts.stop()
			again := startServerIn(t, dir, func(c *Config) { c.NATS = nil })
			again.reconnect(devs[0]).expectMessages(id)
		})
	}
}

// TestDrainDevicesRefused: a drain needs a running server, and settings
// in range.
func TestDrainDevicesRefused(t *testing.T) {
	dir := t.TempDir()
	ts := startServerIn(t, dir, func(c *Config) { c.NATS = nil })
	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		drain DeviceDrain
	}{
		{"not a server URL", DeviceDrain{To: "ftp://node-2"}},
		{"negative spread", DeviceDrain{Over: -time.Second}},
		{"wait beyond the wire's", DeviceDrain{RetryAfter: 25 * time.Hour}},
	} {
		if _, err := admin.DrainDevices(context.Background(), tc.drain); !errors.Is(err, errBadDrain) {
			t.Errorf("%s: %v", tc.name, err)
		}
	}
	admin.Close()
	// Nothing was drained: a device still gets its welcome.
	ts.checkIn()
	ts.stop()
	admin, err = OpenAdmin(context.Background(), AdminConfig{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.DrainDevices(context.Background(), DeviceDrain{}); !errors.Is(err, ErrNotServing) {
		t.Errorf("drain with no server: %v", err)
	}
}

// TestClusterDrainNamesAnotherNode: a node drained with no URL sends its
// devices to another live node, where they open their sessions. A
// cluster's admin refuses to drain: drains are node by node.
func TestClusterDrainNamesAnotherNode(t *testing.T) {
	nodes := startNodes(t, 2, nil)
	testwait.Until(t, "the nodes to know each other", 10*time.Second, func() bool { return nodes[1].node.cl.Members() == 2 })
	d := nodes[1].checkIn()
	ended := readToEnd(d)
	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: nodes[1].dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.DrainDevices(context.Background(), DeviceDrain{RetryAfter: time.Minute}); err != nil {
		t.Fatal(err)
	}
	var e ending
	select {
	case e = <-ended:
	case <-time.After(30 * time.Second):
		t.Fatal("session not drained")
	}
	if want := nodes[0].cfg.NATS.PublicURL; len(e.goAways) != 1 || e.goAways[0].Server != want || e.goAways[0].RetryAfter != 0 {
		t.Fatalf("goaways %+v, want one naming %q with no wait", e.goAways, want)
	}
	nodes[0].reconnect(d)

	cluster, err := OpenAdmin(context.Background(), AdminConfig{NATS: nodes[0].cfg.NATS})
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	if _, err := cluster.DrainDevices(context.Background(), DeviceDrain{}); !errors.Is(err, ErrPerNode) {
		t.Errorf("drain of a cluster: %v", err)
	}
}
