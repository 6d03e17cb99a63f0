// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"errors"
	"fmt"
	"maps"
	"slices"
	"testing"
	"time"
)

// A device the server no longer knows forgets its credentials and keeps
// its registrations, stale, with their owners and messages, across the
// new check-in, until each is registered again.
func TestForgetCredentialsKeepsRegistrationsStale(t *testing.T) {
	s, path := openTemp(t)
	old := Credentials{Server: "ws://a/device/v1", DeviceID: "dev1", Secret: "x"}
	if err := s.SetCredentials(old); err != nil {
		t.Fatal(err)
	}
	mustRegister(t, s, "app", "1", "tok1", 1000)
	mustRegister(t, s, "app", "2", "tok2", 1000)
	mustRegister(t, s, "kiosk", "1", "tok3", 0)
	if _, _, err := s.AddMessages([]Message{msg("m1", "app", "1", "tok1", time.Hour)}, Quota{}); err != nil {
		t.Fatal(err)
	}
	if err := s.ForgetCredentials("dev2"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("forget another device's credentials: %v, want ErrNotFound", err)
	}
	if err := s.ForgetCredentials("dev1"); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Credentials(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("credentials after forgetting them: %v, want ErrNotFound", err)
	}
	if err := s.ForgetCredentials("dev1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("forget twice: %v, want ErrNotFound", err)
	}
	// A kill now: the marks are on disk, and the new check-in keeps them.
	s = reopen(t, s, path)
	if err := s.SetCredentials(Credentials{Server: old.Server, DeviceID: "dev9", Secret: "y"}); err != nil {
		t.Fatal(err)
	}
	want := []Registration{
		{App: "app", Sender: "1", Token: "tok1", Owner: 1000, Stale: true},
		{App: "app", Sender: "2", Token: "tok2", Owner: 1000, Stale: true},
		{App: "kiosk", Sender: "1", Token: "tok3", Owner: 0, Stale: true},
	}
	if regs, err := s.Registrations(); err != nil || !slices.Equal(regs, want) {
		t.Fatalf("registrations %+v, %v; want %+v", regs, err, want)
	}
	if ids := inboxIDs(t, s, "app", 0, 10, t0); !slices.Equal(ids, []string{"m1"}) {
		t.Errorf("held messages after the new check-in: %v", ids)
	}

	// Registered again: the mark goes; a new token is kept for the app to
	// hear of, the same token is no news.
	mustRegister(t, s, "app", "1", "tok1-new", 1000)
	mustRegister(t, s, "kiosk", "1", "tok3", 0)
	want[0].Token, want[0].Stale, want[2].Stale = "tok1-new", false, false
	if regs, err := s.Registrations(); err != nil || !slices.Equal(regs, want) {
		t.Fatalf("registrations after registering again %+v, %v; want %+v", regs, err, want)
	}
	for app, news := range map[string]map[string]string{"app": {"1": "tok1-new"}, "kiosk": {}} {
		if got, err := s.TakeRefreshed(app); err != nil || !maps.Equal(got, news) {
			t.Errorf("app %s: refreshed %v, %v; want %v", app, got, err, news)
		}
		if got, err := s.TakeRefreshed(app); err != nil || len(got) != 0 {
			t.Errorf("app %s: refreshed again %v, %v; want nothing", app, got, err)
		}
	}
	// A registration still stale is registered afresh, not refreshed, when
	// the app registers it again after unregistering it.
	if _, err := s.Unregister("app", "2"); err != nil {
		t.Fatal(err)
	}
	mustRegister(t, s, "app", "2", "tok2-new", 1000)
	if got, _ := s.TakeRefreshed("app"); len(got) != 0 {
		t.Errorf("refreshed after unregister and register: %v", got)
	}
}

// The token of a token refresh is kept until the app is told of it, the
// latest only, and not once the registration is gone.
func TestTakeRefreshed(t *testing.T) {
	s, path := openTemp(t)
	mustRegister(t, s, "app", "1", "tok1", 1000)
	mustRegister(t, s, "app", "2", "tok2", 1000)
	exp := t0.Add(time.Hour)
	for _, n := range []struct{ sender, token, id string }{{"1", "tok1-b", "n1"}, {"1", "tok1-c", "n2"}, {"2", "tok2-b", "n3"}, {"3", "tok9", "n4"}} {
		if _, err := s.RefreshToken("app", n.sender, n.token, "", n.id, exp); err != nil {
			t.Fatal(err)
		}
	}
	s = reopen(t, s, path)
	if _, err := s.Unregister("app", "2"); err != nil {
		t.Fatal(err)
	}
	if got, err := s.TakeRefreshed("app"); err != nil || !maps.Equal(got, map[string]string{"1": "tok1-c"}) {
		t.Errorf("refreshed %v, %v; want only the latest token of the registration left", got, err)
	}
	if got, err := s.TakeRefreshed("unknown"); err != nil || len(got) != 0 {
		t.Errorf("refreshed of an unknown app: %v, %v", got, err)
	}
}

// TestWebPushRegistration: a Web Push registration keeps its endpoint and
// VAPID key until it is unregistered, and a message keeps its raw bytes.
func TestWebPushRegistration(t *testing.T) {
	s, _ := openTemp(t)
	reg := Registration{App: "org.example.chat", Sender: "webpush", Token: "tok", Owner: 1000,
		Endpoint: "https://push.example/up/tok", VAPID: "BPk"}
	if err := s.Register(reg); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		get  func() (Registration, error)
	}{
		{"Registration", func() (Registration, error) { return s.Registration(reg.App, reg.Sender) }},
		{"Registrations", func() (Registration, error) {
			all, err := s.Registrations()
			if err != nil || len(all) != 1 {
				return Registration{}, fmt.Errorf("%d registrations, %v", len(all), err)
			}
			return all[0], nil
		}},
	} {
		got, err := tc.get()
		if err != nil || got != reg {
			t.Fatalf("%s = %+v, %v; want %+v", tc.name, got, err, reg)
		}
	}
	raw := []byte{0, 0xff, 'x'}
	at := time.Now()
	if _, _, err := s.AddMessages([]Message{{ID: "m1", App: reg.App, From: reg.Sender, Token: reg.Token, Raw: raw, TTL: 60, Received: at, Expires: at.Add(time.Hour)}}, Quota{}); err != nil {
		t.Fatal(err)
	}
	held, err := s.Inbox(reg.App, 0, 10, at)
	if err != nil || len(held) != 1 || !bytes.Equal(held[0].Raw, raw) {
		t.Fatalf("held %+v, %v; want raw %q", held, err, raw)
	}
	// A token refresh brings the new endpoint and keeps the key.
	if _, err := s.RefreshToken(reg.App, reg.Sender, "tok3", "https://push.example/up/tok3", "tr:1", at.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Registration(reg.App, reg.Sender); err != nil || got.Token != "tok3" || got.Endpoint != "https://push.example/up/tok3" || got.VAPID != reg.VAPID {
		t.Fatalf("after a token refresh, %+v, %v", got, err)
	}
	if _, err := s.Unregister(reg.App, reg.Sender); err != nil {
		t.Fatal(err)
	}
	if err := s.Register(Registration{App: reg.App, Sender: reg.Sender, Token: "tok2", Owner: 1000}); err != nil {
		t.Fatal(err)
	}
	if got, err := s.Registration(reg.App, reg.Sender); err != nil || got.Endpoint != "" || got.VAPID != "" {
		t.Fatalf("after unregistering, %+v, %v; want no endpoint or key", got, err)
	}
}
