// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"errors"
	"net"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"tether/internal/dbustest"
	"tether/internal/testwait"
	"tether/ipc"
	"tether/ipc/dbusdoor"
	"tether/store"
	"tether/wire"
)

// newCluster starts a peer listening on n nodes of 127.0.0.1 and returns
// it with the nodes.
func newCluster(t *testing.T, n int) (*peer, []*httptest.Server) {
	t.Helper()
	p := newPeer(t)
	nodes := []*httptest.Server{p.srv}
	for len(nodes) < n {
		nodes = append(nodes, p.addNode(nil, false))
	}
	return p, nodes
}

func urlsOf(nodes []*httptest.Server) []string {
	urls := make([]string, len(nodes))
	for i, n := range nodes {
		urls[i] = n.URL
	}
	return urls
}

// nodeOf is the index of the node pc reached, or -1.
func nodeOf(nodes []*httptest.Server, pc *peerConn) int {
	return slices.IndexFunc(nodes, func(n *httptest.Server) bool { return n.Listener.Addr().String() == pc.node })
}

func withServers(urls ...string) func(*Config) {
	return func(c *Config) { c.Servers = urls }
}

func mustEndpoint(t *testing.T, server string) string {
	t.Helper()
	endpoint, err := Endpoint(server)
	if err != nil {
		t.Fatal(err)
	}
	return endpoint
}

// The agent starts at a random server, so that a fleet spreads over the
// nodes.
func TestLinkStartsAtRandomServer(t *testing.T) {
	urls := []string{"ws://127.0.0.1:1/device/v1", "ws://127.0.0.1:2/device/v1", "ws://127.0.0.1:3/device/v1"}
	seen := map[string]bool{}
	// Missing one of three in 200 draws: a chance of 3·(2/3)^200, ~1e-35.
	for range 200 {
		l, err := NewLink(LinkConfig{URLs: urls, Heartbeat: time.Minute, PongWait: time.Minute, MinBackoff: time.Second, MaxBackoff: time.Minute})
		if err != nil {
			t.Fatal(err)
		}
		seen[l.nextTarget().url] = true
	}
	if len(seen) != len(urls) {
		t.Errorf("first servers dialled over 200 links: %v, want all of %v", seen, urls)
	}
}

// After a lost session the agent dials the next server of its list, with
// the credentials it got from the first.
func TestServersTakenInTurn(t *testing.T) {
	p, nodes := newCluster(t, 3)
	d := newDevice(t, "", "", nil, withServers(urlsOf(nodes)...)).start()
	pc := p.nextConn(t)
	i := nodeOf(nodes, pc)
	for range 4 {
		d.waitConnected(t)
		if st, err := d.agent.Status(bg); err != nil || st.Server != mustEndpoint(t, nodes[i].URL) || st.DeviceID != "dev-1" {
			t.Fatalf("connected to node %d: status %+v, %v", i, st, err)
		}
		pc.drop()
		pc = p.nextConn(t)
		if got, want := nodeOf(nodes, pc), (i+1)%len(nodes); got != want {
			t.Fatalf("after losing node %d the agent reached node %d, want %d", i, got, want)
		}
		if pc.hello.DeviceID != "dev-1" {
			t.Fatalf("hello on node %d: device %q, want dev-1", nodeOf(nodes, pc), pc.hello.DeviceID)
		}
		i = nodeOf(nodes, pc)
	}
	if n := p.checkinCount(); n != 1 {
		t.Errorf("%d check-ins over the cluster, want 1", n)
	}
}

// When its node goes away the agent reaches another, and a failed attempt
// at the dead node moves it on to the next.
func TestServerGoneAgentReachesAnother(t *testing.T) {
	p, nodes := newCluster(t, 2)
	d := newDevice(t, "", "", nil, withServers(urlsOf(nodes)...)).start()
	pc := p.nextConn(t)
	gone := nodeOf(nodes, pc)
	d.waitConnected(t)
	nodes[gone].Close()
	pc.drop()
	for range 3 { // the agent dials the dead node between these
		pc = p.nextConn(t)
		if got := nodeOf(nodes, pc); got != 1-gone {
			t.Fatalf("the agent reached node %d, want the survivor %d", got, 1-gone)
		}
		d.waitConnected(t)
		pc.drop()
	}
}

// A goaway that names another node sends the agent there next, once;
// then it goes on with its own list. The node need not be in the list:
// it is of the same cluster, and the credentials are good there.
func TestGoAwayNamesNextServer(t *testing.T) {
	p, nodes := newCluster(t, 3)
	listed, named := nodes[:2], nodes[2]
	d := newDevice(t, "", "", nil, withServers(urlsOf(listed)...)).start()
	pc := p.nextConn(t)
	from := nodeOf(listed, pc)
	d.waitConnected(t)
	pc.send("", wire.GoAway{Reason: "draining", Server: named.URL})
	testwait.Until(t, "the agent to take the goaway", waitLimit, func() bool {
		d.agent.link.mu.Lock()
		defer d.agent.link.mu.Unlock()
		return d.agent.link.redirect != ""
	})
	pc.drop()
	pc = p.nextConn(t)
	if pc.node != named.Listener.Addr().String() || pc.hello.DeviceID != "dev-1" {
		t.Fatalf("after the goaway the agent reached %s as %q, want %s as dev-1", pc.node, pc.hello.DeviceID, named.Listener.Addr())
	}
	d.waitConnected(t)
	if st, _ := d.agent.Status(bg); st.Server != mustEndpoint(t, named.URL) || st.DeviceID != "dev-1" {
		t.Errorf("status on the named node: %+v", st)
	}
	pc.drop()
	pc = p.nextConn(t)
	if got, want := nodeOf(listed, pc), 1-from; got != want {
		t.Fatalf("after the named node the agent reached listed node %d (%s), want %d", got, pc.node, want)
	}
	if n := p.checkinCount(); n != 1 {
		t.Errorf("%d check-ins, want 1", n)
	}
}

// A goaway in place of the welcome may name the node to go to; a device
// that checks in there keeps its credentials for its own list.
func TestGoAwayInsteadOfWelcomeNamesServer(t *testing.T) {
	p, nodes := newCluster(t, 2)
	p.set(func(p *peer) { p.goAway = &wire.GoAway{Reason: "full", Server: nodes[1].URL} })
	d := newDevice(t, "", "", nil, withServers(nodes[0].URL)).start()
	pc := p.nextConn(t) // only node 1 welcomes
	if pc.node != nodes[1].Listener.Addr().String() {
		t.Fatalf("the agent reached %s, want the named node %s", pc.node, nodes[1].Listener.Addr())
	}
	d.waitConnected(t)
	creds, err := d.store.Credentials()
	if err != nil || creds.Server != mustEndpoint(t, nodes[0].URL) {
		t.Fatalf("credentials from the named node: %+v, %v; want them for the configured server", creds, err)
	}
	p.set(func(p *peer) { p.goAway = nil })
	pc.drop()
	if pc = p.nextConn(t); pc.node != nodes[0].Listener.Addr().String() || pc.hello.DeviceID != creds.DeviceID {
		t.Fatalf("back on its own server: %s as %q, want %s as %q", pc.node, pc.hello.DeviceID, nodes[0].Listener.Addr(), creds.DeviceID)
	}
}

// A goaway naming a server the agent would not dial as one of its own is
// not followed: the agent goes on with its list.
func TestGoAwayToUnsafeServerNotFollowed(t *testing.T) {
	p, nodes := newCluster(t, 2)
	d := newDevice(t, "", "", nil, withServers(urlsOf(nodes)...)).start()
	pc := p.nextConn(t)
	from := nodeOf(nodes, pc)
	d.waitConnected(t)
	// A documentation address: were it dialled, nothing would answer.
	pc.send("", wire.GoAway{Reason: "draining", Server: "ws://192.0.2.1:8080"})
	testwait.Until(t, "the agent to take the goaway", waitLimit, func() bool {
		d.agent.link.mu.Lock()
		defer d.agent.link.mu.Unlock()
		return !d.agent.link.notBefore.IsZero()
	})
	pc.drop()
	if pc = p.nextConn(t); nodeOf(nodes, pc) != 1-from {
		t.Fatalf("the agent reached %s, want the next listed node", pc.node)
	}
}

func TestNextEndpoint(t *testing.T) {
	for _, tt := range []struct {
		name, from, server string
		insecure           bool
		want, err          string
	}{
		{"wss to wss", "wss://a/device/v1", "wss://b:8443", false, "wss://b:8443/device/v1", ""},
		{"https means wss", "wss://a/device/v1", "https://b/tether", false, "wss://b/tether/device/v1", ""},
		{"ws on loopback", "ws://127.0.0.1:1/device/v1", "ws://127.0.0.1:2", false, "ws://127.0.0.1:2/device/v1", ""},
		{"ws to wss", "ws://127.0.0.1:1/device/v1", "wss://b", false, "wss://b/device/v1", ""},
		{"ws off loopback", "ws://127.0.0.1:1/device/v1", "ws://192.0.2.1", false, "", "in the clear"},
		{"ws off loopback, insecure", "ws://192.0.2.1/device/v1", "http://192.0.2.2", true, "ws://192.0.2.2/device/v1", ""},
		{"wss to ws", "wss://a/device/v1", "ws://127.0.0.1:2", false, "", "may not send the device to ws://"},
		{"wss to ws, insecure", "wss://a/device/v1", "ws://b", true, "", "may not send the device to ws://"},
		{"bad form", "wss://a/device/v1", "wss://u@b", false, "", "no user, query or fragment"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := nextEndpoint(tt.from, tt.server, tt.insecure)
			if got != tt.want || (err == nil) != (tt.err == "") || (err != nil && !strings.Contains(err.Error(), tt.err)) {
				t.Errorf("nextEndpoint(%q, %q, %v) = %q, %v; want %q, error with %q", tt.from, tt.server, tt.insecure, got, err, tt.want, tt.err)
			}
		})
	}
}

func TestEndpointsNameTheEntry(t *testing.T) {
	for _, tt := range []struct {
		servers  []string
		insecure bool
		err      string
	}{
		{nil, false, "no server URL"},
		{[]string{"ftp://a"}, false, `server URL "ftp://a": scheme`},
		{[]string{"wss://a", "ftp://b"}, false, `entry 2: server URL "ftp://b": scheme`},
		{[]string{"wss://a", "wss://b", "ws://192.0.2.1"}, false, `entry 3: server URL "ws://192.0.2.1": ws:// would send`},
		{[]string{"wss://a", "ws://192.0.2.1"}, true, ""},
	} {
		got, err := Endpoints(tt.servers, tt.insecure)
		switch {
		case tt.err == "" && (err != nil || len(got) != len(tt.servers)):
			t.Errorf("Endpoints(%q) = %q, %v", tt.servers, got, err)
		case tt.err != "" && (err == nil || !strings.HasPrefix(err.Error(), tt.err)):
			t.Errorf("Endpoints(%q): %v, want an error starting %q", tt.servers, err, tt.err)
		}
	}
	if _, err := Endpoints([]string{"ws://192.0.2.1"}, false); !errors.Is(err, ErrInsecure) {
		t.Errorf("an insecure server: %v, want ErrInsecure", err)
	}
}

// Credentials belong to the list of servers stored with them: they stay
// while the configured list still names one of them (a store from before
// lists names one), and a wholly different list is another server, where
// the device checks in anew.
func TestCredentialsBelongToTheCluster(t *testing.T) {
	a := &Agent{endpoints: []string{"wss://b/device/v1", "wss://c/device/v1"}}
	for _, tt := range []struct {
		stored string
		owns   bool
	}{
		{"wss://b/device/v1", true}, // one server, as stores before lists hold it
		{"wss://a/device/v1\nwss://b/device/v1", true},
		{"wss://a/device/v1", false},
		{"wss://a/device/v1\nwss://d/device/v1", false},
		{"wss://b/device/v1/x", false},
	} {
		if got := a.ownsCredentials(store.Credentials{Server: tt.stored, DeviceID: "d", Secret: "s"}); got != tt.owns {
			t.Errorf("credentials for %q with servers %q: owned %v, want %v", tt.stored, a.endpoints, got, tt.owns)
		}
	}

	// Through restarts with other lists.
	p, nodes := newCluster(t, 2)
	d := newDevice(t, "", nodes[0].URL, nil).start()
	p.nextConn(t)
	d.waitConnected(t)
	d.stop()
	d = newDevice(t, d.path, "", nil, withServers(nodes[1].URL, nodes[0].URL)).start()
	if pc := p.nextConn(t); pc.hello.DeviceID != "dev-1" {
		t.Fatalf("with the check-in server still listed, hello as %q, want dev-1", pc.hello.DeviceID)
	}
	d.waitConnected(t)
	d.stop()

	other := newPeer(t)
	other.set(func(p *peer) { p.checkins = 100 })
	d = newDevice(t, d.path, other.url, nil).start()
	if pc := other.nextConn(t); pc.hello.DeviceID != "" {
		t.Fatalf("at another server, hello as %q, want a check-in", pc.hello.DeviceID)
	}
	d.waitConnected(t)
	if st, _ := d.agent.Status(bg); st.DeviceID != "dev-101" || st.Server != mustEndpoint(t, other.url) {
		t.Errorf("status after checking in at another server: %+v", st)
	}
	if creds, err := d.store.Credentials(); err != nil || creds.Server != mustEndpoint(t, other.url) {
		t.Errorf("credentials after checking in at another server: %+v, %v", creds, err)
	}
	if n := p.checkinCount(); n != 1 {
		t.Errorf("%d check-ins on the first cluster, want 1", n)
	}
}

// The servers stored with the credentials follow the configured list once
// a node of it has taken them, so that a fleet can move to wholly new
// nodes a step at a time: [a,b], then [b,c], then [c,d] is one device,
// and its registrations stay.
func TestCredentialsFollowTheServers(t *testing.T) {
	p, nodes := newCluster(t, 4)
	path := ""
	for i, list := range [][]*httptest.Server{nodes[0:2], nodes[1:3], nodes[2:4]} {
		d := newDevice(t, path, "", nil, withServers(urlsOf(list)...)).start()
		path = d.path
		pc := p.nextConn(t)
		if nodeOf(list, pc) < 0 || (i > 0 && pc.hello.DeviceID != "dev-1") {
			t.Fatalf("list %d: the agent reached %s as %q, want a listed node as dev-1", i, pc.node, pc.hello.DeviceID)
		}
		d.waitConnected(t) // the welcome is adopted
		if i == 0 {
			if _, err := d.agent.Register(bg, alice, ipc.RegisterRequest{App: app, Sender: sender}); err != nil {
				t.Fatal(err)
			}
		}
		want := make([]string, len(list))
		for j, n := range list {
			want[j] = mustEndpoint(t, n.URL)
		}
		if creds, err := d.store.Credentials(); err != nil || creds.DeviceID != "dev-1" || creds.Server != strings.Join(want, "\n") {
			t.Errorf("list %d: credentials %+v, %v; want dev-1 for %q", i, creds, err, want)
		}
		if tok, err := d.store.Token(app, sender); err != nil || tok != peerToken(app, sender) {
			t.Errorf("list %d: token %q, %v; want the registration kept", i, tok, err)
		}
		if st, err := d.agent.Status(bg); err != nil || st.DeviceID != "dev-1" {
			t.Errorf("list %d: status %+v, %v; want device dev-1", i, st, err)
		}
		d.stop()
	}
	if n := p.checkinCount(); n != 1 {
		t.Errorf("%d check-ins over three lists, want 1", n)
	}
}

// listenPair listens on one port of both 127.0.0.1 and 127.0.0.2: two
// nodes behind one host name.
func listenPair(t *testing.T) (net.Listener, net.Listener) {
	t.Helper()
	for range 20 {
		a, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(a.Addr().String())
		b, err := net.Listen("tcp", "127.0.0.2:"+port)
		if err == nil {
			return a, b
		}
		a.Close()
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Skipf("cannot listen on 127.0.0.2: %v", err)
		}
	}
	t.Fatal("no port free on both 127.0.0.1 and 127.0.0.2")
	return nil, nil
}

// resolveTo is a resolver that knows one name.
func resolveTo(name string, addrs ...string) func(context.Context, string) ([]string, error) {
	return func(_ context.Context, host string) ([]string, error) {
		if host != name {
			return nil, &net.DNSError{Err: "no such host", Name: host, IsNotFound: true}
		}
		return slices.Clone(addrs), nil
	}
}

// A host name with several addresses is one server: when the node at one
// address goes away, the agent reaches the other through the same name.
func TestServerNameWithSeveralAddresses(t *testing.T) {
	ln1, ln2 := listenPair(t)
	p := newPeer(t)
	nodes := []*httptest.Server{p.addNode(ln1, false), p.addNode(ln2, false)}
	_, port, _ := net.SplitHostPort(ln1.Addr().String())
	d := newDevice(t, "", "ws://push.test:"+port, nil, func(c *Config) { c.Insecure = true })
	d.agent.link.hosts.lookup = resolveTo("push.test", "127.0.0.1", "127.0.0.2")
	d.start()
	pc := p.nextConn(t)
	gone := nodeOf(nodes, pc)
	d.waitConnected(t)
	nodes[gone].Close()
	pc.drop()
	for range 3 {
		pc = p.nextConn(t)
		if got := nodeOf(nodes, pc); got != 1-gone {
			t.Fatalf("the agent reached node %d (%s), want the survivor %d", got, pc.node, 1-gone)
		}
		d.waitConnected(t)
		if st, _ := d.agent.Status(bg); st.Server != "ws://push.test:"+port+wire.Path {
			t.Errorf("status server %q", st.Server)
		}
		pc.drop()
	}
}

// A connection the agent itself closed (a new route, a resume) was not
// the node's fault: the agent dials the same node again.
func TestWakeRedialsTheSameServer(t *testing.T) {
	p, nodes := newCluster(t, 2)
	d := newDevice(t, "", "", nil, withServers(urlsOf(nodes)...)).start()
	pc := p.nextConn(t)
	d.waitConnected(t)
	for range 3 {
		d.agent.Link().Wake("route-up")
		next := p.nextConn(t)
		if next.node != pc.node {
			t.Fatalf("after a wake the agent reached %s, want %s again", next.node, pc.node)
		}
		d.waitConnected(t)
	}
}

// A D-Bus client watching the properties sees the agent move to another
// node as soon as it dials there, before any session: Server changes
// while Connected is still false.
func TestDBusAnnouncesTheServer(t *testing.T) {
	bus := dbustest.Start(t)
	p, nodes := newCluster(t, 2)
	var door *dbusdoor.Server // set before the agent runs, as tetherd does
	d := newDevice(t, "", "", nil, withServers(urlsOf(nodes)...), func(c *Config) {
		c.OnStatusChange = func() { door.StatusChanged() }
	})
	door, err := dbusdoor.New(dbusdoor.Config{Bus: bus.Address, Backend: d.agent, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- door.Serve(bg) }()
	t.Cleanup(func() {
		if err := door.Close(); err != nil {
			t.Errorf("close the door: %v", err)
		}
		if err := <-served; err != nil {
			t.Errorf("serve the door: %v", err)
		}
	})

	client, err := dbus.Connect(bus.Address, dbus.WithSignalHandler(dbus.NewSequentialSignalHandler()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	if err := client.AddMatchSignal(dbus.WithMatchObjectPath(ipc.DBusPath), dbus.WithMatchInterface("org.freedesktop.DBus.Properties"), dbus.WithMatchMember("PropertiesChanged")); err != nil {
		t.Fatal(err)
	}
	signals := make(chan *dbus.Signal, 64)
	client.Signal(signals)
	// changed waits for the PropertiesChanged that sets name to value and
	// returns everything it announces.
	changed := func(name string, value any) map[string]dbus.Variant {
		t.Helper()
		for {
			select {
			case s := <-signals:
				props, ok := s.Body[1].(map[string]dbus.Variant)
				if v, found := props[name]; ok && found && v.Value() == value {
					return props
				}
			case <-time.After(waitLimit):
				t.Fatalf("no PropertiesChanged setting %s to %v", name, value)
			}
		}
	}

	d.start()
	pc := p.nextConn(t)
	d.waitConnected(t)
	gate := make(chan struct{})
	release := sync.OnceFunc(func() { close(gate) })
	t.Cleanup(release) // a held handler would keep its node from closing
	p.set(func(p *peer) { p.gate = gate })
	pc.drop()
	next := p.nextConn(t) // held before its welcome
	if nodeOf(nodes, next) != 1-nodeOf(nodes, pc) {
		t.Fatalf("after losing %s the agent reached %s, want the other node", pc.node, next.node)
	}
	server := mustEndpoint(t, nodes[nodeOf(nodes, next)].URL)
	if props := changed("Server", server); props["Connected"].Value() == true {
		t.Errorf("Server announced with %v, want it before the session", props)
	}
	release()
	changed("Connected", true)
	var got string
	if err := client.Object(ipc.DBusName, ipc.DBusPath).StoreProperty(ipc.DBusInterface+".Server", &got); err != nil || got != server {
		t.Errorf("Server = %q, %v; want %q", got, err, server)
	}
}
