// SPDX-License-Identifier: Apache-2.0

package server

import (
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/gorilla/websocket"

	"tether/internal/testpki"
)

// TestReloadLimits changes the rate limits and the per-address caps of a
// running server: a changed limit applies to the next event, one left
// as it was keeps its counts, and sessions already open stay.
func TestReloadLimits(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.DeviceRateLimit = 1 })
	f := &sendFixture{ts: ts, a: ts.addSender("")}
	f.dev = ts.checkIn()
	tok := f.dev.register("com.example.reload", f.a.ID)
	send := func() string {
		t.Helper()
		return ts.send(f.a.ServerKey, map[string]any{"to": tok}).Results[0].Error
	}
	reload := func(c Config) {
		t.Helper()
		if err := ts.Reload(c); err != nil {
			t.Fatal(err)
		}
	}
	for i, step := range []struct {
		name   string
		reload *Config // nil: no reload before the sends
		want   []string
	}{
		{"at the first rate", nil, []string{"", errDeviceRate}},
		{"no limit", &Config{DeviceRateLimit: -1}, []string{"", "", ""}},
		{"a new rate counts anew", &Config{DeviceRateLimit: 2}, []string{"", "", errDeviceRate}},
		{"the same rate keeps its counts", &Config{DeviceRateLimit: 2}, []string{errDeviceRate}},
	} {
		if step.reload != nil {
			reload(*step.reload)
		}
		var got []string
		for range step.want {
			got = append(got, send())
		}
		if !slices.Equal(got, step.want) {
			t.Errorf("step %d, %s: sends answered %q, want %q", i, step.name, got, step.want)
		}
	}
	for range 6 { // the sends taken
		f.dev.ack(f.dev.expectMessage().ID)
	}

	// A cap lowered under what an address holds: its session stays, and
	// the next is refused.
	reload(Config{DeviceRateLimit: 2, SessionsPerIP: 1})
	over := &device{t: t, conn: ts.dial()}
	e := <-readToEnd(over)
	if len(e.goAways) != 1 || e.code != websocket.CloseTryAgainLater {
		t.Errorf("a second session under a cap of one read %+v", e)
	}
	if got := send(); got != errDeviceRate {
		t.Errorf("send after the cap: %q", got)
	}
	f.dev.register("com.example.after", f.a.ID) // the session answers
}

// TestReloadCertificate: Reload reads the certificate files again, keeps
// the one in use when they do not load, and does not turn TLS on or off.
func TestReloadCertificate(t *testing.T) {
	pki, err := testpki.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	ts := startServer(t, func(c *Config) { c.TLSCert, c.TLSKey = pki.Cert, pki.Key })
	before := ts.cert.cur.Load()
	bad := t.TempDir() + "/bad.pem"
	os.WriteFile(bad, []byte("not a certificate"), 0o600)
	for _, tt := range []struct {
		name       string
		cert, key  string
		ok         bool
		notAllowed bool
	}{
		{"bad certificate", bad, pki.Key, false, false},
		{"TLS off", "", "", false, true},
		{"key without certificate", "", pki.Key, false, true},
		{"the same files", pki.Cert, pki.Key, true, false},
	} {
		err := ts.Reload(Config{TLSCert: tt.cert, TLSKey: tt.key})
		if (err == nil) != tt.ok || errors.Is(err, ErrNotReloadable) != tt.notAllowed {
			t.Errorf("%s: %v", tt.name, err)
		}
		if !tt.ok && ts.cert.cur.Load() != before {
			t.Errorf("%s: the certificate in use changed", tt.name)
		}
	}
	if ts.cert.cur.Load() == before {
		t.Error("reloading the files kept the old certificate value")
	}

	plain := startServer(t, nil)
	if err := plain.Reload(Config{TLSCert: pki.Cert, TLSKey: pki.Key}); !errors.Is(err, ErrNotReloadable) {
		t.Errorf("TLS turned on by a reload: %v", err)
	}
}
