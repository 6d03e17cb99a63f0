// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"tether/internal/logtest"
	"tether/internal/testpki"
	"tether/internal/testwait"
	"tether/server/store"
	"tether/wire"
)

// refusedHello sends h on a new connection and returns the error frame's
// code, or the goaway's reason, and the close code.
func (ts *testServer) refusedHello(h wire.Hello) (answer string, closeCode int) {
	ts.t.Helper()
	d := &device{t: ts.t, conn: ts.dial()}
	if h.Version == 0 {
		h.Version = wire.Version
	}
	d.send("", h)
	f, err := d.read()
	if err != nil {
		ts.t.Fatalf("waiting for the answer to hello: %v", err)
	}
	switch f.Type {
	case wire.TypeError:
		var e wire.Error
		f.Decode(&e)
		answer = e.Code
	case wire.TypeGoAway:
		var g wire.GoAway
		f.Decode(&g)
		answer = "goaway: " + g.Reason
	default:
		ts.t.Fatalf("hello answered %s, want a refusal", f.Type)
	}
	return answer, d.expectClosed()
}

func TestEnrollment(t *testing.T) {
	const fleet = "fleet-key-of-at-least-22-characters"
	type step struct {
		key     string // "fleet", "single", "batch", "expired", "revoked", or a literal
		refused string // the error code, or "" for a welcome
		by      string // enrolled_by of the device, with "key:" for a key's
	}
	tests := []struct {
		name  string
		fleet string
		open  bool
		steps []step
	}{
		{name: "fleet key", fleet: fleet, steps: []step{{key: "fleet", by: "fleet"}, {key: "fleet", by: "fleet"}}},
		{name: "fleet key wrong", fleet: fleet, steps: []step{{key: fleet[:len(fleet)-1] + "X", refused: wire.CodeUnauthorized}}},
		{name: "fleet key prefix", fleet: fleet, steps: []step{{key: fleet[:10], refused: wire.CodeUnauthorized}}},
		{name: "no key", fleet: fleet, steps: []step{{key: "", refused: wire.CodeUnauthorized}}},
		{name: "single-use key spent at the first", fleet: fleet, steps: []step{{key: "single", by: "key:"}, {key: "single", refused: wire.CodeUnauthorized}}},
		{name: "batch key", fleet: fleet, steps: []step{{key: "batch", by: "key:"}, {key: "batch", by: "key:"}, {key: "batch", by: "key:"}, {key: "batch", refused: wire.CodeUnauthorized}}},
		{name: "expired key", fleet: fleet, steps: []step{{key: "expired", refused: wire.CodeUnauthorized}}},
		{name: "revoked key", fleet: fleet, steps: []step{{key: "revoked", refused: wire.CodeUnauthorized}}},
		{name: "per-device keys without a fleet key", steps: []step{{key: "single", by: "key:"}, {key: fleet, refused: wire.CodeUnauthorized}}},
		{name: "open enrollment", open: true, steps: []step{{key: "", by: "open"}, {key: "single", by: "key:"}}},
		{name: "open enrollment refuses a wrong key", open: true, steps: []step{{key: "not-a-key-of-this-server", refused: wire.CodeUnauthorized}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// The keys are made before the server starts, as an operator
			// does who enrolls with them alone.
			dir := t.TempDir()
			a, err := OpenAdmin(context.Background(), AdminConfig{DataDir: dir, Create: true})
			if err != nil {
				t.Fatal(err)
			}
			keys := map[string]string{"fleet": fleet}
			for name, k := range map[string]struct {
				uses     int
				lifetime time.Duration
			}{"single": {1, 0}, "batch": {3, 0}, "expired": {5, time.Hour}, "revoked": {5, 0}} {
				nk, err := a.CreateEnrollKey(context.Background(), k.uses, k.lifetime)
				if err != nil {
					t.Fatal(err)
				}
				keys[name] = nk.Key
				if name == "revoked" {
					if err := a.RevokeEnrollKey(context.Background(), nk.ID); err != nil {
						t.Fatal(err)
					}
				}
			}
			a.Close()
			ts := startServerIn(t, dir, func(c *Config) { c.EnrollKey, c.OpenEnrollment = tt.fleet, tt.open })
			ts.clock.Advance(2 * time.Hour) // the expired key's lifetime is over
			for i, st := range tt.steps {
				key, ok := keys[st.key]
				if !ok {
					key = st.key
				}
				if st.refused != "" {
					if code, closeCode := ts.refusedHello(wire.Hello{EnrollKey: key}); code != st.refused || closeCode != websocket.ClosePolicyViolation {
						t.Errorf("step %d: refused with %q, close %d; want %s, 1008", i, code, closeCode, st.refused)
					}
					continue
				}
				d := ts.hello(wire.Hello{EnrollKey: key})
				if d.id == "" || len(d.secret) < 40 || d.welcome.Version != wire.Version || d.welcome.Heartbeat != 300 {
					t.Fatalf("step %d: welcome %+v", i, d.welcome)
				}
				dev, err := ts.store.Device(context.Background(), d.id)
				if err != nil || !strings.HasPrefix(dev.EnrolledBy, st.by) || !sameHash(dev.SecretHash, hashSecret(d.secret)) {
					t.Errorf("step %d: stored device %+v, %v; want enrolled by %s, and the hash of the secret", i, dev, err, st.by)
				}
				d.conn.Close()
				// The credentials open later sessions; the secret is not
				// sent again.
				if again := ts.reconnect(d); again.welcome.DeviceID != d.id || again.welcome.DeviceSecret != "" {
					t.Errorf("step %d: second welcome %+v", i, again.welcome)
				}
			}
		})
	}
}

// TestNoEnrollmentMethod: as Mosquitto 2.0 does anonymous access, a server
// that no device could enroll with does not start unless told; a fleet key
// too short to be one does not start either.
func TestNoEnrollmentMethod(t *testing.T) {
	dir := t.TempDir()
	if _, err := New(Config{DataDir: dir, Listen: "127.0.0.1:0"}); !errors.Is(err, ErrNoEnrollment) {
		t.Fatalf("New without an enrollment method: %v, want ErrNoEnrollment", err)
	}
	if _, err := New(Config{DataDir: t.TempDir(), EnrollKey: strings.Repeat("k", MinEnrollKeyLen-1)}); err == nil || !strings.Contains(err.Error(), "use at least 22") {
		t.Errorf("New with a 21-character fleet key: %v", err)
	}
	// Per-device keys made before the first start are a way to enroll.
	a, err := OpenAdmin(context.Background(), AdminConfig{DataDir: dir, Create: true})
	if err != nil {
		t.Fatal(err)
	}
	k, err := a.CreateEnrollKey(context.Background(), 1, 0)
	a.Close()
	if err != nil {
		t.Fatal(err)
	}
	ts := startServerIn(t, dir, func(c *Config) { c.EnrollKey = "" })
	d := ts.hello(wire.Hello{EnrollKey: k.Key})
	if d.id == "" {
		t.Error("no check-in with a key made before the start")
	}
	ts.stop()

	logs := &logtest.Buffer{}
	open := startServer(t, func(c *Config) {
		c.EnrollKey, c.OpenEnrollment = "", true
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	open.hello(wire.Hello{})
	if !strings.Contains(logs.String(), "level=WARN msg=\"open enrollment") {
		t.Errorf("an open server did not warn at start:\n%s", logs)
	}
}

// TestDeviceRevokedAndRemoved: revoking a device over the admin socket
// ends its live session at once, refuses its next hellos and makes its
// tokens answer NotRegistered; removing one deletes it.
func TestDeviceRevokedAndRemoved(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	for _, remove := range []bool{false, true} {
		t.Run(fmt.Sprintf("remove=%v", remove), func(t *testing.T) {
			d := ts.checkIn()
			token := d.register(app, snd.ID)
			other := ts.checkIn()
			otherToken := other.register(app, snd.ID)
			end := admin.RevokeDevice
			if remove {
				end = admin.RemoveDevice
			}
			if err := end(context.Background(), d.id); err != nil {
				t.Fatal(err)
			}
			if e := d.expectError("", wire.CodeRevoked); e.Message == "" {
				t.Error("no message with the revoked error")
			}
			if code := d.expectClosed(); code != websocket.ClosePolicyViolation {
				t.Errorf("live session closed with %d, want 1008", code)
			}
			want := wire.CodeRevoked
			if remove {
				want = wire.CodeUnauthorized
			}
			if code, _ := ts.refusedHello(wire.Hello{DeviceID: d.id, DeviceSecret: d.secret}); code != want {
				t.Errorf("next hello refused with %q, want %s", code, want)
			}
			resp := ts.send(snd.ServerKey, map[string]any{"registration_ids": []string{token, otherToken}})
			if resp.Results[0].Error != "NotRegistered" || resp.Results[1].MessageID == "" {
				t.Errorf("send after the end of one device: %+v", resp.Results)
			}
			other.expectMessage()
			info, err := admin.Device(context.Background(), d.id)
			switch {
			case remove && !errors.Is(err, ErrNoDevice):
				t.Errorf("removed device shown: %+v, %v", info, err)
			case !remove && (err != nil || !info.Revoked || info.Registrations != 0):
				t.Errorf("revoked device shown as %+v, %v", info, err)
			}
		})
	}
	if err := admin.RevokeDevice(context.Background(), "0123456789abcdef"); !errors.Is(err, ErrNoDevice) {
		t.Errorf("revoking an unknown device: %v", err)
	}
}

// TestDeviceCertificates: a device with a certificate from the device CA
// checks in without a key, and is bound to it; after a factory reset it
// replaces its old record; a revoked certificate is refused.
func TestDeviceCertificates(t *testing.T) {
	pki, err := testpki.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, func(c *Config) { c.TLSCert, c.TLSKey, c.DeviceCA = pki.Cert, pki.Key, pki.CA })
	ts.base = "https://" + ts.Addr().String()
	ts.client = &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}}}
	snd := ts.addSender("")
	dial := func(cert, key string) *device {
		t.Helper()
		cfg := &tls.Config{RootCAs: pki.Pool}
		if cert != "" {
			pair, err := tls.LoadX509KeyPair(cert, key)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		dialer := websocket.Dialer{TLSClientConfig: cfg, Subprotocols: []string{wire.Subprotocol}, HandshakeTimeout: 5 * time.Second}
		conn, _, err := dialer.Dial("wss://"+ts.Addr().String()+wire.Path, nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return &device{t: t, conn: conn}
	}
	hello := func(d *device, h wire.Hello) (wire.Frame, wire.Welcome) {
		t.Helper()
		h.Version = wire.Version
		d.send("", h)
		f, err := d.read()
		if err != nil {
			t.Fatal(err)
		}
		var w wire.Welcome
		if f.Type == wire.TypeWelcome {
			f.Decode(&w)
			d.id, d.secret = w.DeviceID, w.DeviceSecret
		}
		return f, w
	}
	certA, keyA := mustClient(t, &pki, "thermostat-0042", "a")
	certB, keyB := mustClient(t, &pki, "thermostat-0043", "b")

	d := dial(certA, keyA)
	if f, w := hello(d, wire.Hello{}); f.Type != wire.TypeWelcome || w.DeviceSecret == "" {
		t.Fatalf("check-in with a certificate answered %s", f.Type)
	}
	dev, err := ts.store.Device(context.Background(), d.id)
	if err != nil || dev.CertID != "cn:thermostat-0042" || dev.EnrolledBy != "cert" {
		t.Fatalf("device %+v, %v", dev, err)
	}
	token := d.register(app, snd.ID)
	other := d.register("com.example.other", snd.ID)
	d.conn.Close()

	// The credentials alone, or with another device's certificate, do not
	// open a session of a device bound to its certificate.
	for _, c := range [][2]string{{"", ""}, {certB, keyB}} {
		if f, _ := hello(dial(c[0], c[1]), wire.Hello{DeviceID: dev.ID, DeviceSecret: d.secret}); f.Type != wire.TypeError {
			t.Errorf("session of a bound device without its certificate answered %s", f.Type)
		}
	}
	again := dial(certA, keyA)
	if f, _ := hello(again, wire.Hello{DeviceID: dev.ID, DeviceSecret: d.secret}); f.Type != wire.TypeWelcome {
		t.Fatalf("session with the certificate answered %s", f.Type)
	}
	again.conn.Close()

	// A factory reset: the same certificate, no credentials.
	reset := dial(certA, keyA)
	if f, _ := hello(reset, wire.Hello{}); f.Type != wire.TypeWelcome {
		t.Fatalf("check-in after a reset answered %s", f.Type)
	}
	if reset.id == dev.ID {
		t.Fatal("the reset device kept its ID")
	}
	if _, err := ts.store.Device(context.Background(), dev.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the replaced record is still there: %v", err)
	}
	fresh := reset.register(app, snd.ID)
	resp := ts.send(snd.ServerKey, map[string]any{"registration_ids": []string{token, other}})
	if resp.Results[0].RegistrationID != fresh || resp.Results[0].MessageID == "" || resp.Results[1].Error != "NotRegistered" {
		t.Errorf("sends to the old tokens: %+v; want the first answered with the new token, the second NotRegistered", resp.Results)
	}
	reset.expectMessage()

	// Revoked: the certificate is refused, for a session and a check-in.
	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.RemoveDevice(context.Background(), dev.ID); !errors.Is(err, ErrNoDevice) {
		t.Errorf("removing the replaced record: %v", err)
	}
	if err := admin.RevokeDevice(context.Background(), reset.id); err != nil {
		t.Fatal(err)
	}
	reset.expectError("", wire.CodeRevoked)
	if err := admin.RemoveDevice(context.Background(), reset.id); err != nil {
		t.Fatal(err)
	}
	if f, _ := hello(dial(certA, keyA), wire.Hello{}); f.Type != wire.TypeError || !strings.Contains(string(f.Body), wire.CodeRevoked) {
		t.Errorf("check-in with a revoked certificate answered %s %s", f.Type, f.Body)
	}
	if f, _ := hello(dial(certB, keyB), wire.Hello{}); f.Type != wire.TypeWelcome {
		t.Errorf("another certificate of the CA answered %s", f.Type)
	}
}

func mustClient(t *testing.T, pki *testpki.Files, name, file string) (cert, key string) {
	t.Helper()
	cert, key, err := pki.Client(name, file)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestHeartbeatCapped: a device may not hold a connection open for a day
// with one ping: the welcome tells it the cap, and the session keeps to it.
func TestHeartbeatCapped(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.MaxHeartbeat = 20 * time.Minute })
	for _, tc := range []struct{ asked, want int }{{0, 300}, {600, 600}, {1200, 1200}, {86400, 1200}} {
		d := ts.hello(wire.Hello{EnrollKey: testEnrollKey, Heartbeat: tc.asked})
		if d.welcome.Heartbeat != tc.want {
			t.Errorf("heartbeat %d: welcome says %d, want %d", tc.asked, d.welcome.Heartbeat, tc.want)
		}
		d.conn.Close()
	}
	if !strings.Contains(ts.logs.String(), "msg=\"session open\"") || strings.Contains(ts.logs.String(), "heartbeat=24h") {
		t.Error("a session kept to a heartbeat over the cap")
	}
}

// TestLastSeen: a device's last seen time is written when a session opens
// and then at most once every SeenInterval, not on every heartbeat.
func TestLastSeen(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.SeenInterval = time.Hour })
	d := ts.hello(wire.Hello{EnrollKey: testEnrollKey, Agent: "tetherd/9.9", Mode: wire.ModeBattery})
	seen := func() time.Time {
		t.Helper()
		dev, err := ts.store.Device(context.Background(), d.id)
		if err != nil {
			t.Fatal(err)
		}
		if dev.Agent != "tetherd/9.9" {
			t.Errorf("agent %q", dev.Agent)
		}
		return dev.LastSeen
	}
	first := seen()
	snd := ts.addSender("")
	reconnect := func() {
		d.conn.Close()
		d = ts.hello(wire.Hello{DeviceID: d.id, DeviceSecret: d.secret, Agent: "tetherd/9.9", Mode: wire.ModeBattery})
		// The session reads frames once it has opened, seen noted.
		d.register(app, snd.ID)
	}
	ts.clock.Advance(10 * time.Minute)
	reconnect()
	if got := seen(); !got.Equal(first) {
		t.Errorf("last seen written again within the interval: %v, then %v", first, got)
	}
	ts.clock.Advance(time.Hour)
	reconnect()
	second := seen()
	if !second.After(first) {
		t.Errorf("last seen not written after the interval: %v, then %v", first, second)
	}
	// A session that stays open is noted seen on its heartbeats, once an
	// interval has gone by. The server handles the ping before the frame
	// after it.
	ts.clock.Advance(time.Hour + time.Minute)
	d.conn.WriteControl(websocket.PingMessage, []byte("hb"), time.Now().Add(5*time.Second))
	d.register(app, snd.ID)
	if got := seen(); !got.After(second) {
		t.Errorf("a heartbeat after the interval did not note the device seen: %v, then %v", second, got)
	}
}

// TestStaleDevicesRemoved: a device not seen for DeviceExpiry is removed
// by the server itself, and its tokens answer NotRegistered; one seen
// lately stays.
func TestStaleDevicesRemoved(t *testing.T) {
	dir := t.TempDir()
	ts := startServerIn(t, dir, nil)
	snd := ts.addSender("")
	stale, fresh := ts.checkIn(), ts.checkIn()
	token := stale.register(app, snd.ID)
	stale.conn.Close()
	ts.clock.Advance(100 * 24 * time.Hour)
	fresh.conn.Close()
	ts.reconnect(fresh).conn.Close() // seen 100 days after the stale one
	ts.stop()

	// Back 271 days after both checked in: the server looks at once.
	later := startServerIn(t, dir, func(c *Config) {
		offset := 271 * 24 * time.Hour
		c.Now = func() time.Time { return time.Now().Add(offset) }
	})
	testwait.Until(t, "the stale device to go", 10*time.Second, func() bool {
		_, err := later.store.Device(context.Background(), stale.id)
		return errors.Is(err, store.ErrNotFound)
	})
	if _, err := later.store.Device(context.Background(), fresh.id); err != nil {
		t.Errorf("the device seen lately: %v", err)
	}
	resp := later.send(snd.ServerKey, map[string]any{"to": token})
	if resp.Results[0].Error != "NotRegistered" {
		t.Errorf("send to the stale device's token: %+v, want NotRegistered", resp.Results[0])
	}
	if !strings.Contains(later.logs.String(), `msg="stale devices removed" count=1`) {
		t.Error("no log line of the removal")
	}
}
