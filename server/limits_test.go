// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/gorilla/websocket"

	"tether/internal/testwait"
	"tether/server/xmpp/xmpptest"
	"tether/wire"
)

// The limits on one client address: check-ins, refused credentials,
// device connections, HTTP connections, and the address itself behind a
// trusted proxy.

// TestCheckInLimit: past the check-in rate an address's check-ins get a
// goaway, and an enrollment key is not spent on them; devices enrolled
// before keep their sessions.
func TestCheckInLimit(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.CheckInLimit = 3 })
	var first *device
	for i := range 3 {
		d := ts.checkIn()
		if i == 0 {
			first = d
		}
		d.conn.Close()
	}
	key, err := addEnrollKey(context.Background(), ts.store, 1, 0, ts.now())
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range []wire.Hello{{EnrollKey: testEnrollKey}, {EnrollKey: key.Key}} {
		if answer, code := ts.refusedHello(h); answer != "goaway: too many check-ins from this address" || code != websocket.CloseTryAgainLater {
			t.Errorf("check-in over the rate: %q, close %d", answer, code)
		}
	}
	if keys, _ := listEnrollKeys(context.Background(), ts.store, ts.now()); len(keys) != 1 || keys[0].Used != 0 {
		t.Errorf("the key after refused check-ins: %+v, want unspent", keys)
	}
	ts.reconnect(first)
	ts.clock.Advance(time.Minute) // the rate runs on the server's clock
	ts.hello(wire.Hello{EnrollKey: key.Key})
}

// TestEnrollFailuresSlowed: past its budget of refused credentials an
// address's refusals are goaways that ask for a wait, the right key still
// enrolls, and thousands of attempts make one log line a minute.
func TestEnrollFailuresSlowed(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.EnrollFailureLimit = 3 })
	for i := range 3 {
		if answer, _ := ts.refusedHello(wire.Hello{EnrollKey: fmt.Sprintf("guess-%d-of-the-fleet-key", i)}); answer != wire.CodeUnauthorized {
			t.Fatalf("guess %d answered %q", i, answer)
		}
	}
	for range 20 {
		answer, code := ts.refusedHello(wire.Hello{EnrollKey: "another-guess-of-the-fleet-key"})
		if answer != "goaway: too many refused attempts from this address" || code != websocket.CloseTryAgainLater {
			t.Fatalf("guess over the budget: %q, close %d", answer, code)
		}
	}
	ts.checkIn()
	if n := strings.Count(ts.logs.String(), `msg="device refused"`); n != 1 {
		t.Errorf("%d log lines for 23 refusals from one address, want 1", n)
	}
}

// TestSessionsPerAddress: one address holds at most SessionsPerIP device
// connections; the next gets a goaway, and a place comes back when one
// closes.
func TestSessionsPerAddress(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.SessionsPerIP = 2 })
	a := ts.checkIn()
	ts.checkIn()
	over := &device{t: t, conn: ts.dial()}
	e := <-readToEnd(over)
	if len(e.goAways) != 1 || e.goAways[0].Reason != "too many connections from this address" || e.code != websocket.CloseTryAgainLater {
		t.Errorf("third connection read %+v", e)
	}
	a.conn.Close()
	testwait.Until(t, "the closed session's place", 10*time.Second, func() bool { return ts.sessions.Count(netip.MustParseAddr("127.0.0.1")) == 1 })
	ts.checkIn()
}

// TestConnectionsPerAddress: one address holds at most ConnsPerIP HTTP
// connections, idle or slow; device sessions are not among them.
func TestConnectionsPerAddress(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.ConnsPerIP = 2 })
	idle := func() net.Conn {
		t.Helper()
		c, err := net.Dial("tcp", ts.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	first := idle()
	// Sessions leave the count once upgraded.
	for range 3 {
		ts.checkIn()
	}
	idle() // the second
	third := idle()
	third.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := third.Read(make([]byte, 1)); n != 0 || err == nil || isTimeout(err) {
		t.Errorf("third idle connection: read %d, %v; want it closed", n, err)
	}
	first.Close()
	testwait.Until(t, "the closed connection's place", 10*time.Second, func() bool { return ts.conns.Count(netip.MustParseAddr("127.0.0.1")) == 1 })
	if resp, err := http.Get(ts.base + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Errorf("a request after a place came back: %v", err)
	} else {
		resp.Body.Close()
	}
}

// TestTrustedProxy: behind a trusted proxy the limits count the client
// the proxy names, in X-Forwarded-For or a PROXY protocol header, on the
// HTTP and the XMPP listeners; from anyone else those are not believed.
func TestTrustedProxy(t *testing.T) {
	loopback := []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}
	// fail sends with a wrong key from the client forwardedFor names.
	fail := func(t *testing.T, ts *testServer, forwardedFor string) int {
		t.Helper()
		req, _ := http.NewRequest(http.MethodPost, ts.base+"/gcm/send", strings.NewReader(`{"to": "x"}`))
		req.Header.Set("Authorization", "key=wrong")
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Forwarded-For", forwardedFor)
		resp, err := ts.client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	// Each case runs in a synctest bubble: the second each throttled
	// failure waits passes on the bubble's clock.
	t.Run("X-Forwarded-For", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ts := startServerInBubble(t, func(c *Config) { c.TrustedProxies, c.AuthFailureLimit = loopback, 1 })
			for i, tc := range []struct {
				client string
				want   int
			}{{"192.0.2.1", 401}, {"192.0.2.2", 401}, {"192.0.2.1", 429}, {"203.0.113.9, 192.0.2.3", 401}, {"192.0.2.3", 429}} {
				if got := fail(t, ts, tc.client); got != tc.want {
					t.Errorf("%d: failure for %s answered %d, want %d", i, tc.client, got, tc.want)
				}
			}
		})
	})
	t.Run("untrusted X-Forwarded-For", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ts := startServerInBubble(t, func(c *Config) { c.AuthFailureLimit = 1 })
			if got := []int{fail(t, ts, "192.0.2.1"), fail(t, ts, "192.0.2.2")}; got[1] != 429 {
				t.Errorf("failures naming two clients from one untrusted peer answered %v; want the second 429", got)
			}
		})
	})
	t.Run("PROXY protocol", func(t *testing.T) {
		synctest.Test(t, func(t *testing.T) {
			ts := startCCSInBubble(t, func(c *Config) { c.TrustedProxies, c.SessionsPerIP, c.AuthFailureLimit = loopback, 1, 1 })
			proxied := func(client string) *device {
				t.Helper()
				dialer := websocket.Dialer{Subprotocols: []string{wire.Subprotocol}, HandshakeTimeout: 5 * time.Second,
					NetDialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
						c, err := ts.dialContext(ctx, network, addr)
						if err == nil {
							_, err = fmt.Fprintf(c, "PROXY TCP4 %s 192.0.2.200 40000 443\r\n", client)
						}
						return c, err
					}}
				conn, _, err := dialer.Dial("ws://"+ts.Addr().String()+wire.Path, nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { conn.Close() })
				return &device{t: t, conn: conn}
			}
			// One session for each of two clients: the cap counts each.
			for _, client := range []string{"198.51.100.7", "198.51.100.8"} {
				d := proxied(client)
				d.send("", wire.Hello{Version: wire.Version, EnrollKey: testEnrollKey})
				var w wire.Welcome
				d.expect(wire.TypeWelcome, "", &w)
			}
			if !strings.Contains(ts.logs.String(), "remote=198.51.100.7") {
				t.Error("the session's log does not name the client of the PROXY header")
			}
			if e := <-readToEnd(proxied("198.51.100.7")); len(e.goAways) != 1 {
				t.Errorf("a second session of 198.51.100.7 read %+v, want a goaway", e)
			}
			// XMPP: failures count against the client the header names.
			login := func(client string) error {
				snd := ts.addSender("")
				cfg := ts.xmppConfig(snd.ID, "wrong")
				cfg.Preamble = []byte("PROXY TCP4 " + client + " 192.0.2.200 40000 5235\r\n")
				c, err := xmpptest.Dial(context.Background(), cfg)
				if err == nil {
					c.Close()
				}
				return err
			}
			for i, tc := range []struct{ client, want string }{{"198.51.100.7", "not-authorized"}, {"198.51.100.8", "not-authorized"}, {"198.51.100.7", "temporary-auth-failure"}} {
				if err := login(tc.client); err == nil || !strings.Contains(err.Error(), tc.want) {
					t.Errorf("%d: login from %s: %v, want %s", i, tc.client, err, tc.want)
				}
			}
		})
	})
}
