// SPDX-License-Identifier: Apache-2.0

package storetest

import (
	"errors"
	"slices"
	"testing"
	"time"

	"tether/server/store"
)

// The tests of a device's life: listing, last seen, revocation, removal,
// expiry, the certificate identity that a factory-reset device comes back
// with, and enrollment keys.

// resolved says of each token whether it is an active registration, and
// which token it reaches.
func resolved(t *testing.T, s store.Backend, at time.Time, tokens ...string) []string {
	t.Helper()
	res, err := s.ResolveTokens(ctx(t), tokens, at)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]string, len(res))
	for i, r := range res {
		out[i] = r.Reg.Token
	}
	return out
}

func testDeviceListAndSeen(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	f.register(t, "com.example.lamp")
	bare, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("bare"), Created: T0, EnrolledBy: "fleet"})
	if err != nil {
		t.Fatal(err)
	}
	seen := T0.Add(time.Hour)
	if err := s.SeenDevice(ctx(t), f.device.ID, seen, "tetherd/1.2 linux/arm", "battery"); err != nil {
		t.Fatal(err)
	}
	if err := s.SeenDevice(ctx(t), "0123456789abcdef", seen, "x", "y"); err != nil {
		t.Errorf("noting an unknown device seen: %v", err)
	}
	s = h.Reopen(t, s)
	list, err := s.Devices(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 {
		t.Fatalf("listed %d devices, want 2", len(list))
	}
	byID := map[string]store.DeviceInfo{}
	for _, d := range list {
		byID[d.ID] = d
	}
	if !slices.IsSortedFunc(list, func(a, b store.DeviceInfo) int { return cmpString(a.ID, b.ID) }) {
		t.Error("devices not ordered by ID")
	}
	d := byID[f.device.ID]
	if d.Registrations != 2 || !d.LastSeen.Equal(seen) || d.Agent != "tetherd/1.2 linux/arm" || d.PowerMode != "battery" || !d.SeenAt().Equal(seen) {
		t.Errorf("seen device listed as %+v", d)
	}
	if one, err := s.DeviceInfo(ctx(t), f.device.ID); err != nil || one.Registrations != 2 || !one.LastSeen.Equal(seen) {
		t.Errorf("DeviceInfo = %+v, %v", one, err)
	}
	if _, err := s.DeviceInfo(ctx(t), "0123456789abcdef"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("DeviceInfo of an unknown device: %v", err)
	}
	b := byID[bare.ID]
	if b.Registrations != 0 || !b.LastSeen.IsZero() || !b.SeenAt().Equal(T0) || b.EnrolledBy != "fleet" {
		t.Errorf("device never seen listed as %+v", b)
	}
}

func cmpString(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func testRevokeDevice(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	other := f.register(t, "com.example.lamp")
	enqueue(t, s, f.msg("a", "", time.Hour), f.msgFor(other, "b", "k", time.Hour))
	if err := s.Subscribe(ctx(t), f.device.ID, f.reg.App, f.sender.ID, "news", T0); err != nil {
		t.Fatal(err)
	}
	at := T0.Add(time.Minute)
	dev, err := s.RevokeDevice(ctx(t), f.device.ID, at)
	if err != nil {
		t.Fatal(err)
	}
	if !dev.Revoked.Equal(at) {
		t.Errorf("revoked device %+v", dev)
	}
	if got := resolved(t, s, at, f.reg.Token, other.Token); !slices.Equal(got, []string{"", ""}) {
		t.Errorf("tokens of a revoked device reach %q, want nothing (NotRegistered)", got)
	}
	if ids := pendingIDs(t, s, f.device.ID); len(ids) != 0 {
		t.Errorf("queue of a revoked device: %v", ids)
	}
	fan := fanOutAll(t, s, store.TopicMessage{ID: "t", Sender: f.sender.ID, Topic: "news", Topics: []string{"news"}, Sent: at, Expiry: at.Add(time.Hour)}, 10, nil)
	if fan.Copies != 0 {
		t.Errorf("fan-out made %d copies for a revoked device", fan.Copies)
	}
	// Revoking again changes nothing, and the mark stays.
	if again, err := s.RevokeDevice(ctx(t), f.device.ID, at.Add(time.Hour)); err != nil || !again.Revoked.Equal(at) {
		t.Errorf("revoking again: %+v, %v", again.Revoked, err)
	}
	s = h.Reopen(t, s)
	if got, err := s.Device(ctx(t), f.device.ID); err != nil || !got.Revoked.Equal(at) {
		t.Errorf("after reopening, the device is %+v, %v", got, err)
	}
	if _, err := s.RevokeDevice(ctx(t), "0123456789abcdef", at); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoking an unknown device: %v", err)
	}
}

func testRemoveDevice(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	enqueue(t, s, f.msg("a", "", time.Hour))
	keep, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("keep"), Created: T0})
	if err != nil {
		t.Fatal(err)
	}
	kept, err := s.Register(ctx(t), keep.ID, f.reg.App, f.sender.ID, "", T0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RemoveDevice(ctx(t), f.device.ID, T0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Device(ctx(t), f.device.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("removed device: %v", err)
	}
	if got := resolved(t, s, T0, f.reg.Token, kept.Token); !slices.Equal(got, []string{"", kept.Token}) {
		t.Errorf("after removal the tokens reach %q", got)
	}
	if ids := pendingIDs(t, s, f.device.ID); len(ids) != 0 {
		t.Errorf("queue of a removed device: %v", ids)
	}
	list, err := s.Devices(ctx(t))
	if err != nil || len(list) != 1 || list[0].ID != keep.ID {
		t.Errorf("devices after removal: %+v, %v", list, err)
	}
	if _, err := s.RemoveDevice(ctx(t), f.device.ID, T0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("removing it again: %v", err)
	}
}

func testExpireDevices(t *testing.T, h Harness) {
	s := h.Open(t)
	stale := newFixture(t, s)
	fresh, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("fresh"), Created: T0})
	if err != nil {
		t.Fatal(err)
	}
	late, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("late"), Created: T0.Add(100 * 24 * time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SeenDevice(ctx(t), fresh.ID, T0.Add(90*24*time.Hour), "tetherd", "normal"); err != nil {
		t.Fatal(err)
	}
	now := T0.Add(120 * 24 * time.Hour)
	gone, err := s.ExpireDevices(ctx(t), now.Add(-60*24*time.Hour), now)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(gone, []string{stale.device.ID}) {
		t.Errorf("expired %v, want only the device not seen since T0 (%s)", gone, stale.device.ID)
	}
	for _, id := range []string{fresh.ID, late.ID} {
		if _, err := s.Device(ctx(t), id); err != nil {
			t.Errorf("device seen lately: %v", err)
		}
	}
	if got := resolved(t, s, now, stale.reg.Token); got[0] != "" {
		t.Error("the token of an expired device still reaches it")
	}
}

func testCertificateReplacesDevice(t *testing.T, h Harness) {
	s := h.Open(t)
	snd, err := s.AddSender(ctx(t), "backend", "", Hash("key"), T0)
	if err != nil {
		t.Fatal(err)
	}
	first, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("one"), Created: T0, CertID: "sha256:aa", EnrolledBy: "cert"})
	if err != nil {
		t.Fatal(err)
	}
	thermo, err := s.Register(ctx(t), first.ID, "com.example.thermo", snd.ID, "", T0)
	if err != nil {
		t.Fatal(err)
	}
	lamp, err := s.Register(ctx(t), first.ID, "com.example.lamp", snd.ID, "", T0)
	if err != nil {
		t.Fatal(err)
	}
	f := &fixture{s: s, sender: snd, device: first, reg: thermo}
	enqueue(t, s, f.msg("lost-with-the-reset", "", time.Hour))

	// The device comes back after a factory reset, with the same
	// certificate and a new secret.
	at := T0.Add(time.Hour)
	second, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("two"), Created: at, CertID: "sha256:aa", EnrolledBy: "cert"})
	if err != nil {
		t.Fatal(err)
	}
	if second.ID == first.ID || second.Replaced != first.ID {
		t.Fatalf("the new device %s replaced %q, want %s", second.ID, second.Replaced, first.ID)
	}
	if _, err := s.Device(ctx(t), first.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("the replaced device is still there: %v", err)
	}
	if got := resolved(t, s, at, thermo.Token, lamp.Token); !slices.Equal(got, []string{"", ""}) {
		t.Errorf("before the new device registers, the old tokens reach %q, want nothing (NotRegistered)", got)
	}
	s = h.Reopen(t, s)
	again, err := s.Register(ctx(t), second.ID, "com.example.thermo", snd.ID, "", at)
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.ResolveTokens(ctx(t), []string{thermo.Token, lamp.Token}, at.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Reg.Token != again.Token || !res[0].Canonical() {
		t.Errorf("the old token of an app registered again reaches %.8q (canonical %v), want the new %.8q", res[0].Reg.Token, res[0].Canonical(), again.Token)
	}
	if res[1].Reg.Token != "" {
		t.Error("the old token of an app not registered again still reaches something")
	}
	if got := resolved(t, s, at.Add(store.InheritGrace), thermo.Token); got[0] != "" {
		t.Error("the old token still leads to the new one after the grace")
	}
	if dev, err := s.Device(ctx(t), second.ID); err != nil || len(dev.Inherited) != 1 {
		t.Errorf("after one app registered again, the device holds %d inherited tokens, %v; want 1", len(dev.Inherited), err)
	}
}

func testRevokedCertificate(t *testing.T, h Harness) {
	s := h.Open(t)
	dev, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("one"), Created: T0, CertID: "sha256:bb"})
	if err != nil {
		t.Fatal(err)
	}
	if revoked, err := s.CertRevoked(ctx(t), "sha256:bb"); err != nil || revoked {
		t.Errorf("CertRevoked before revocation = %v, %v", revoked, err)
	}
	if _, err := s.RevokeDevice(ctx(t), dev.ID, T0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RemoveDevice(ctx(t), dev.ID, T0); err != nil {
		t.Fatal(err)
	}
	s = h.Reopen(t, s)
	if revoked, err := s.CertRevoked(ctx(t), "sha256:bb"); err != nil || !revoked {
		t.Errorf("CertRevoked after revoking and removing its device = %v, %v", revoked, err)
	}
	if _, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("two"), Created: T0, CertID: "sha256:bb"}); !errors.Is(err, store.ErrRevoked) {
		t.Errorf("check-in with a revoked certificate: %v", err)
	}
	if revoked, err := s.CertRevoked(ctx(t), "sha256:unknown"); err != nil || revoked {
		t.Errorf("CertRevoked of an unknown certificate = %v, %v", revoked, err)
	}
	// Removing a device that was not revoked frees its certificate.
	free, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("three"), Created: T0, CertID: "sha256:cc"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RemoveDevice(ctx(t), free.ID, T0); err != nil {
		t.Fatal(err)
	}
	if back, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("four"), Created: T0, CertID: "sha256:cc"}); err != nil || back.Replaced != "" {
		t.Errorf("check-in after removal: replaced %q, %v", back.Replaced, err)
	}
}

func testEnrollKeys(t *testing.T, h Harness) {
	s := h.Open(t)
	batch, err := s.AddEnrollKey(ctx(t), store.EnrollKey{Hash: Hash("batch"), Uses: 2, Created: T0})
	if err != nil {
		t.Fatal(err)
	}
	ending, err := s.AddEnrollKey(ctx(t), store.EnrollKey{Hash: Hash("ending"), Uses: 1, Created: T0, Expires: T0.Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	revoked, err := s.AddEnrollKey(ctx(t), store.EnrollKey{Hash: Hash("revoked"), Uses: 1, Created: T0})
	if err != nil {
		t.Fatal(err)
	}
	if batch.ID == "" || batch.ID == ending.ID {
		t.Fatalf("key IDs %q, %q", batch.ID, ending.ID)
	}
	if _, err := s.AddEnrollKey(ctx(t), store.EnrollKey{Hash: Hash("batch"), Uses: 1, Created: T0}); err == nil {
		t.Error("a second key of the same hash was taken")
	}
	if err := s.RevokeEnrollKey(ctx(t), revoked.ID, T0); err != nil {
		t.Fatal(err)
	}
	spend := func(key string, at time.Time) error {
		_, err := s.SpendEnrollKey(ctx(t), Hash(key), at)
		return err
	}
	for i, tc := range []struct {
		key     string
		at      time.Time
		refused bool
	}{
		{"batch", T0, false},
		{"batch", T0, false},
		{"batch", T0, true}, // both uses spent
		{"ending", T0.Add(time.Hour), true},
		{"ending", T0.Add(time.Minute), false},
		{"revoked", T0, true},
		{"never-made", T0, true},
	} {
		err := spend(tc.key, tc.at)
		if tc.refused != errors.Is(err, store.ErrNotFound) || !tc.refused && err != nil {
			t.Errorf("%d: spending %q: %v, want refused %v", i, tc.key, err, tc.refused)
		}
	}
	if err := s.RefundEnrollKey(ctx(t), batch.ID); err != nil {
		t.Fatal(err)
	}
	s = h.Reopen(t, s)
	if err := spend("batch", T0); err != nil {
		t.Errorf("spending a refunded use: %v", err)
	}
	keys, err := s.EnrollKeys(ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) != 3 {
		t.Fatalf("listed %d keys, want 3", len(keys))
	}
	byID := map[string]store.EnrollKey{}
	for _, k := range keys {
		byID[k.ID] = k
	}
	if k := byID[batch.ID]; k.Used != 2 || k.Uses != 2 || k.Usable(T0) {
		t.Errorf("batch key listed as %+v", k)
	}
	if k := byID[revoked.ID]; k.Revoked.IsZero() || k.Used != 0 {
		t.Errorf("revoked key listed as %+v", k)
	}
	if err := s.RevokeEnrollKey(ctx(t), "ek-000000000000", T0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("revoking an unknown key: %v", err)
	}
}
