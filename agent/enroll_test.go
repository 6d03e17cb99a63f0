// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"reflect"
	"strings"
	"testing"
	"time"

	"tether/internal/logtest"
	"tether/internal/testpki"
	"tether/internal/testwait"
	"tether/ipc"
	"tether/store"
	"tether/wire"
)

const meter = "org.example.meter"

// deviceToken is the peer's token for a registration, one per device, as
// a server gives a device that checked in anew other tokens.
func deviceToken(device, app, sender string) string { return peerToken(app, sender) + "." + device }

// clientTLS trusts the peer's TLS node and presents a client certificate
// with common name cn.
func clientTLS(t *testing.T, node *x509.Certificate, cn string) *tls.Config {
	t.Helper()
	certFile, keyFile, err := testpki.WriteClient(t.TempDir(), cn)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(node)
	return &tls.Config{RootCAs: roots, Certificates: []tls.Certificate{cert}}
}

// A device whose credentials the server no longer accepts checks in anew
// with its enrollment key or its client certificate, registers every app
// again for every sender before it sends upstream, and tells each app its
// new tokens; what it held stays deliverable.
func TestReenrollment(t *testing.T) {
	for _, tt := range []struct {
		name string
		cert bool // a client certificate, and no enrollment key
	}{
		{"enrollment key", false},
		{"client certificate", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			p := newPeer(t)
			p.set(func(p *peer) {
				p.enrollKey = "fleet-key-of-22-characters"
				p.tokens = deviceToken
				p.ackUpstream = false
			})
			url, tweak := p.url, func(c *Config) { c.EnrollKey = "fleet-key-of-22-characters" }
			if tt.cert {
				p.clientAuth = tls.RequireAnyClientCert
				node := p.addNode(nil, true)
				url, tweak = node.URL, func(c *Config) { c.TLS = clientTLS(t, node.Certificate(), "device-42") }
			}
			d := newDevice(t, "", url, nil, tweak).start()
			pc := p.nextConn(t)
			d.waitConnected(t)

			registered := map[[2]string]string{}
			for _, r := range []struct {
				c           ipc.Caller
				app, sender string
			}{{alice, app, sender}, {bob, meter, sender}, {bob, meter, "777"}} {
				reg, err := d.agent.Register(bg, r.c, ipc.RegisterRequest{App: r.app, Sender: r.sender})
				token := reg.Token
				if err != nil || token != deviceToken("dev-1", r.app, r.sender) {
					t.Fatalf("register %s/%s: %q, %v", r.app, r.sender, token, err)
				}
				registered[[2]string{r.app, r.sender}] = token
			}
			l, _ := listen(t, d.agent, alice, app)
			pc.send("", wire.Message{ID: "held-1", App: meter, From: "777", Token: registered[[2]string{meter, "777"}], TTL: 3600})
			pc.waitAck(t)
			if _, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, ID: "up-1", Data: map[string]string{"k": "v"}}); err != nil {
				t.Fatal(err)
			}
			pc.waitFor(t, wire.TypeUpstream)

			// The server loses the device's record.
			lost := time.Now()
			p.set(func(p *peer) { delete(p.devices, "dev-1") })
			pc.drop()
			pc2 := p.nextConn(t)
			if pc2.device != "dev-2" || pc2.hello.DeviceID != "" {
				t.Fatalf("session after the loss: device %q, hello %+v; want a check-in as dev-2", pc2.device, pc2.hello)
			}
			refused := 0
			for _, h := range p.helloLog() {
				if h.at.After(lost) && h.hello.DeviceID == "dev-1" {
					refused++
				}
				if tt.cert && h.cert != "device-42" {
					t.Errorf("hello %+v came without the client certificate", h.hello)
				}
			}
			if refused != confirmRefusals {
				t.Errorf("the old credentials were presented %d times after the loss, want %d", refused, confirmRefusals)
			}
			if key := pc2.hello.EnrollKey; tt.cert != (key == "") {
				t.Errorf("check-in with enrollment key %q", key)
			}

			// Every registration is made again before the upstream
			// message goes.
			for range len(registered) {
				var r wire.Register
				if err := pc2.waitFor(t, wire.TypeRegister).Decode(&r); err != nil {
					t.Fatal(err)
				}
				delete(registered, [2]string{r.App, r.Sender})
			}
			if len(registered) != 0 {
				t.Fatalf("not registered again: %v", registered)
			}
			var up wire.Upstream
			if err := pc2.waitFor(t, wire.TypeUpstream).Decode(&up); err != nil || up.ID != "up-1" {
				t.Fatalf("upstream after the new check-in: %+v, %v", up, err)
			}

			newToken := deviceToken("dev-2", app, sender)
			if e := l.next(t); e != (tokenRefreshed{sender, newToken}) {
				t.Fatalf("the listening app got %#v, want its new token", e)
			}
			regs, err := d.store.Registrations()
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range regs {
				if r.Stale || r.Token != deviceToken("dev-2", r.App, r.Sender) {
					t.Errorf("registration after the new check-in: %+v", r)
				}
			}
			if st, err := d.agent.Status(bg); err != nil || st.DeviceID != "dev-2" {
				t.Errorf("status %+v, %v", st, err)
			}
			// The app that was not listening hears of its tokens when it
			// listens, then gets what was held for it.
			lm, _ := listen(t, d.agent, bob, meter)
			for _, want := range []any{tokenRefreshed{sender, deviceToken("dev-2", meter, sender)}, tokenRefreshed{"777", deviceToken("dev-2", meter, "777")}} {
				if got := lm.next(t); got != want {
					t.Fatalf("meter got %#v, want %#v", got, want)
				}
			}
			if m := lm.nextMessage(t); m.ID != "held-1" {
				t.Fatalf("meter got %q, want the message held before", m.ID)
			}
			// Messages to the new token arrive.
			pc2.send("", wire.Message{ID: "m-new", App: app, From: sender, Token: newToken, TTL: 60})
			if m := l.nextMessage(t); m.ID != "m-new" {
				t.Fatalf("got %q, want the message to the new token", m.ID)
			}
		})
	}
}

// enrolledWithApp starts a peer and an agent with an enrollment key,
// connected, with app registered by alice; the peer gives each device
// tokens of its own.
func enrolledWithApp(t *testing.T) (*peer, *device, *peerConn) {
	t.Helper()
	p := newPeer(t)
	p.set(func(p *peer) { p.tokens = deviceToken })
	d := newDevice(t, "", p.url, nil, func(c *Config) { c.EnrollKey = "k" }).start()
	pc := p.nextConn(t)
	d.waitConnected(t)
	if _, err := d.agent.Register(bg, alice, ipc.RegisterRequest{App: app, Sender: sender}); err != nil {
		t.Fatal(err)
	}
	return p, d, pc
}

// An app that sends while the agent registers the apps again waits for
// it: the server would refuse the message for a registration it does not
// have yet.
func TestUpstreamWaitsForRegistrations(t *testing.T) {
	p, d, pc := enrolledWithApp(t)
	gate := make(chan struct{})
	p.set(func(p *peer) {
		delete(p.devices, "dev-1")
		p.registerGate = gate
	})
	pc.drop()
	pc = p.nextConn(t)
	pc.waitFor(t, wire.TypeRegister)
	if _, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, ID: "up-1", Data: map[string]string{"k": "v"}}); err != nil {
		t.Fatal(err)
	}
	select {
	case f := <-pc.frames:
		t.Fatalf("the agent sent a %s frame before its registration was answered", f.Type)
	case <-time.After(300 * time.Millisecond):
	}
	close(gate)
	var up wire.Upstream
	if err := pc.waitFor(t, wire.TypeUpstream).Decode(&up); err != nil || up.ID != "up-1" {
		t.Fatalf("upstream %+v, %v", up, err)
	}
}

// A kill while the device checks in anew loses nothing: the registrations
// stay marked until they are made again, by the next run.
func TestReenrollmentSurvivesRestart(t *testing.T) {
	p, d, pc := enrolledWithApp(t)
	// The credentials are forgotten, and the agent stops before its new
	// check-in: the server is away.
	if err := d.store.ForgetCredentials("dev-1"); err != nil {
		t.Fatal(err)
	}
	d.stop()
	pc.drop()

	d = newDevice(t, d.path, p.url, nil, func(c *Config) { c.EnrollKey = "k" }).start()
	pc = p.nextConn(t)
	var r wire.Register
	if err := pc.waitFor(t, wire.TypeRegister).Decode(&r); err != nil || r.App != app || r.Sender != sender {
		t.Fatalf("register after restart: %+v, %v", r, err)
	}
	l, _ := listen(t, d.agent, alice, app)
	if e := l.next(t); e != (tokenRefreshed{sender, deviceToken("dev-2", app, sender)}) {
		t.Fatalf("the app got %#v, want its new token", e)
	}
}

// When checking in anew is not the answer (revoked, no key, a key the
// server refuses), the agent says what is wrong once, keeps what it has,
// and dials no more often than about its longest backoff.
func TestRefusalHoldsOff(t *testing.T) {
	const maxBackoff = 600 * time.Millisecond
	tests := []struct {
		name string
		// key is the agent's enrollment key, serverKey the server's.
		key, serverKey string
		// after the first session, if any.
		after     func(p *peer)
		wantError string
	}{
		{"unknown device, no key", "", "", func(p *peer) { delete(p.devices, "dev-1") }, "no longer knows this device"},
		{"revoked device with a key", "k", "", func(p *peer) { p.revoked = map[string]bool{"dev-1": true} }, "revoked this device"},
		{"check-in with a wrong key", "wrong", "right", nil, "refused the check-in"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newPeer(t)
			p.set(func(p *peer) { p.enrollKey = tt.serverKey })
			logs := &logtest.Buffer{}
			d := newDevice(t, "", p.url, nil, func(c *Config) {
				c.EnrollKey = tt.key
				c.MaxBackoff = maxBackoff
				c.Logger = slog.New(slog.NewTextHandler(logs, nil))
			}).start()
			var before store.Credentials
			if tt.after != nil {
				pc := p.nextConn(t)
				d.waitConnected(t)
				registerDirect(t, d, app, sender, alice.UID)
				var err error
				if before, err = d.store.Credentials(); err != nil {
					t.Fatal(err)
				}
				p.set(tt.after)
				pc.drop()
			}
			start := time.Now()
			const attempts = 4
			testwait.Until(t, "refused attempts", waitLimit, func() bool { return len(p.helloLog()) >= attempts+1 })
			hellos := p.helloLog()
			var gaps []time.Duration
			for i := len(hellos) - attempts + 1; i < len(hellos); i++ {
				gaps = append(gaps, hellos[i].at.Sub(hellos[i-1].at))
			}
			// The first two may be quick (a refusal of credentials is
			// asked again once); the ones after the error are held off.
			for _, g := range gaps[1:] {
				if g < maxBackoff/2 {
					t.Errorf("attempts %v apart after the refusal (all gaps %v), want at least %v", g, gaps, maxBackoff/2)
				}
			}
			if n := strings.Count(logs.String(), "level=ERROR"); n != 1 || !strings.Contains(logs.String(), tt.wantError) {
				t.Errorf("%d errors logged in %v, want one saying %q:\n%s", n, time.Since(start), tt.wantError, logs)
			}
			if n := p.checkinCount(); tt.after != nil && n != 1 {
				t.Errorf("%d check-ins, want the one of the first session only", n)
			}
			creds, err := d.store.Credentials()
			if err != nil && tt.after != nil || creds != before {
				t.Errorf("credentials %+v, %v; want them kept: %+v", creds, err, before)
			}
			regs, err := d.store.Registrations()
			want := []store.Registration(nil)
			if tt.after != nil {
				want = []store.Registration{{App: app, Sender: sender, Token: peerToken(app, sender), Owner: alice.UID}}
			}
			if err != nil || !reflect.DeepEqual(regs, want) {
				t.Errorf("registrations %+v, %v; want %+v", regs, err, want)
			}
		})
	}
}

// A route that comes back does not hurry a device that is held off: it
// would be refused the same way.
func TestRefusalHoldOffOutlastsWake(t *testing.T) {
	p := newPeer(t)
	p.set(func(p *peer) { p.revoked = map[string]bool{"dev-1": true} })
	p.devices["dev-1"] = "secret-1"
	logs := &logtest.Buffer{}
	d := newDevice(t, "", p.url, nil, func(c *Config) {
		c.MaxBackoff = 10 * time.Second
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	endpoint, err := Endpoint(p.url)
	if err != nil {
		t.Fatal(err)
	}
	if err := d.store.SetCredentials(store.Credentials{Server: endpoint, DeviceID: "dev-1", Secret: "secret-1"}); err != nil {
		t.Fatal(err)
	}
	d.start()
	testwait.Until(t, "the refusal to be taken", waitLimit, func() bool { return strings.Contains(logs.String(), "revoked this device") })
	for range 5 {
		d.agent.NetworkChanged(false, "")
		d.agent.NetworkChanged(true, "wlan0")
	}
	ctx, cancel := context.WithTimeout(bg, time.Second)
	defer cancel()
	<-ctx.Done()
	if n := len(p.helloLog()); n != 1 {
		t.Errorf("%d hellos within a second of a refusal for revocation, want 1", n)
	}
}
