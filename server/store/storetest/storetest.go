// SPDX-License-Identifier: Apache-2.0

// Package storetest is the conformance suite of the connection server's
// backends: every rule of GCM that the server's state keeps (per-app caps,
// collapse keys, times to live, upstream deduplication, topic fan-out,
// delivery receipts, token rotation) as one set of tests that runs against
// each store.Backend, the bbolt file and the JetStream cluster alike.
//
// A backend's own package calls Run from its tests with a Harness that
// opens fresh backends. What only one backend has (bbolt's file lock, its
// size cap, JetStream's replication) is tested in that backend's package,
// not here.
package storetest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"tether/server/store"
)

// Harness opens the backends the suite runs on.
type Harness struct {
	// Open returns a new, empty backend for one test. The harness closes
	// it when the test ends.
	Open func(t *testing.T) store.Backend
	// Reopen closes b and opens the same state again, as a restart of the
	// server process would.
	Reopen func(t *testing.T, b store.Backend) store.Backend
	// OpenObserved, when set, opens a new, empty backend that tells obs
	// what it does; the tests of the observer skip without it.
	OpenObserved func(t *testing.T, obs store.Observer) store.Backend
}

// Run runs the whole suite, each test in a subtest of its own.
func Run(t *testing.T, h Harness) {
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) { tc.run(t, h) })
	}
}

var tests = []struct {
	name string
	run  func(*testing.T, Harness)
}{
	{"Senders", testSenders},
	{"SenderKeyRotation", testSenderKeyRotation},
	{"UpdateSender", testUpdateSender},
	{"ServiceKeys", testServiceKeys},
	{"Devices", testDevices},
	{"RegisterUnregister", testRegisterUnregister},
	{"RegistrationsPerDeviceBounded", testRegistrationsPerDeviceBounded},
	{"WebPush", testWebPush},
	{"QueueSurvivesReopen", testQueueSurvivesReopen},
	{"PendingAfterAndLimit", testPendingAfterAndLimit},
	{"PendingSkips", testPendingSkips},
	{"EnqueueChecksTheRegistration", testEnqueueChecksTheRegistration},
	{"Collapse", testCollapse},
	{"CollapseKeysPerAppCapped", testCollapseKeysPerAppCapped},
	{"PlainMessagesPerAppCapped", testPlainMessagesPerAppCapped},
	{"FlowingMessagesLeaveTheCap", testFlowingMessagesLeaveTheCap},
	{"DeletedNoticeSealedUntilAcked", testDeletedNoticeSealedUntilAcked},
	{"ExpiredMessagesLeaveTheCaps", testExpiredMessagesLeaveTheCaps},
	{"AckOnlyOwnMessages", testAckOnlyOwnMessages},
	{"Receipts", testReceipts},
	{"UpstreamDedupe", testUpstreamDedupe},
	{"UpstreamRefused", testUpstreamRefused},
	{"UpstreamCapPerApp", testUpstreamCapPerApp},
	{"UpstreamCapUnderConcurrency", testUpstreamCapUnderConcurrency},
	{"UpstreamLanes", testUpstreamLanes},
	{"Subscriptions", testSubscriptions},
	{"SubscriptionDates", testSubscriptionDates},
	{"ChangeSubscriptions", testChangeSubscriptions},
	{"FanOutStepsAndResume", testFanOutStepsAndResume},
	{"FanOutRestrictedAndLive", testFanOutRestrictedAndLive},
	{"TopicMessagesInOrder", testTopicMessagesInOrder},
	{"RotateToken", testRotateToken},
	{"RotateTokenChain", testRotateTokenChain},
	{"ConcurrentWritesToOneDevice", testConcurrentWritesToOneDevice},
	{"DeviceListAndSeen", testDeviceListAndSeen},
	{"RevokeDevice", testRevokeDevice},
	{"RemoveDevice", testRemoveDevice},
	{"ExpireDevices", testExpireDevices},
	{"CertificateReplacesDevice", testCertificateReplacesDevice},
	{"RevokedCertificate", testRevokedCertificate},
	{"EnrollKeys", testEnrollKeys},
	{"Observed", testObserved},
	{"Stats", testStats},
}

// T0 is the clock of the suite: a time unlike the machine's, so that a
// backend that reads a clock of its own for GCM's rules fails.
var T0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// ctx bounds every call; a backend that hangs fails the test, not the run.
func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return c
}

// Hash is the hash a caller passes for a key or secret.
func Hash(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

// fixture is a sender and a device with one registration.
type fixture struct {
	s      store.Backend
	sender store.Sender
	device store.Device
	reg    store.Registration
}

func newFixture(t *testing.T, s store.Backend) *fixture {
	t.Helper()
	snd, err := s.AddSender(ctx(t), "thermo backend", "", Hash("key"), T0)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("secret"), Created: T0})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := s.Register(ctx(t), dev.ID, "com.example.thermo", snd.ID, "", T0)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{s, snd, dev, reg}
}

// msg is a message of id for the fixture's registration.
func (f *fixture) msg(id, collapse string, ttl time.Duration) store.Message {
	return f.msgFor(f.reg, id, collapse, ttl)
}

func (f *fixture) msgFor(reg store.Registration, id, collapse string, ttl time.Duration) store.Message {
	return store.Message{ID: id, Device: reg.Device, Token: reg.Token, App: reg.App, Sender: reg.Sender,
		CollapseKey: collapse, Data: map[string]string{"n": id}, Sent: T0, Expiry: T0.Add(ttl)}
}

func (f *fixture) register(t *testing.T, app string) store.Registration {
	t.Helper()
	reg, err := f.s.Register(ctx(t), f.device.ID, app, f.sender.ID, "", T0)
	if err != nil {
		t.Fatal(err)
	}
	return reg
}

func enqueue(t *testing.T, s store.Backend, msgs ...store.Message) []bool {
	t.Helper()
	queued, err := s.Enqueue(ctx(t), msgs, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(queued) != len(msgs) {
		t.Fatalf("Enqueue of %d messages answered %d outcomes", len(msgs), len(queued))
	}
	return queued
}

func pendingIDs(t *testing.T, s store.Backend, device string) []string {
	t.Helper()
	msgs, _, err := s.Pending(ctx(t), device, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	return ids
}

func notices(t *testing.T, s store.Backend, device string) []store.Notice {
	t.Helper()
	n, err := s.Notices(ctx(t), device)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// deletedCount is what the device's deleted-messages notices for app say.
func deletedCount(t *testing.T, s store.Backend, device, app string) int {
	t.Helper()
	n := 0
	for _, x := range notices(t, s, device) {
		if x.Kind == store.NoticeDeleted && x.App == app {
			n += x.Count
		}
	}
	return n
}

func ack(t *testing.T, s store.Backend, device string, ids ...string) (int, []store.Upstream) {
	t.Helper()
	n, receipts, err := s.Ack(ctx(t), device, ids, T0)
	if err != nil {
		t.Fatal(err)
	}
	return n, receipts
}

func testSenders(t *testing.T, h Harness) {
	s := h.Open(t)
	a, err := s.AddSender(ctx(t), "a", "https://a.example/up", Hash("ka"), T0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.AddSender(ctx(t), "b", "", Hash("kb"), T0)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.ID) != 12 || strings.Trim(a.ID, "0123456789") != "" || a.ID[0] == '0' {
		t.Errorf("sender ID %q is not 12 digits", a.ID)
	}
	if a.ID == b.ID {
		t.Errorf("two senders with ID %s", a.ID)
	}
	if _, err := s.AddSender(ctx(t), "c", "", Hash("ka"), T0); err == nil {
		t.Error("second sender with the same key hash accepted")
	}
	got, err := s.SenderByKeyHash(ctx(t), Hash("kb"))
	if err != nil || got.ID != b.ID || got.Name != "b" || !got.Created.Equal(T0) {
		t.Errorf("SenderByKeyHash = %+v, %v; want %s", got, err, b.ID)
	}
	if _, err := s.SenderByKeyHash(ctx(t), Hash("nope")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown key: %v", err)
	}
	if got, err := s.Sender(ctx(t), a.ID); err != nil || got.Webhook != "https://a.example/up" || !got.KeyValid(Hash("ka"), T0) {
		t.Errorf("Sender = %+v, %v", got, err)
	}
	list, err := s.Senders(ctx(t))
	if err != nil || len(list) != 2 {
		t.Fatalf("Senders = %v, %v", list, err)
	}
	if !slices.IsSortedFunc(list, func(x, y store.Sender) int { return strings.Compare(x.ID, y.ID) }) {
		t.Errorf("Senders not ordered by ID: %s, %s", list[0].ID, list[1].ID)
	}
	if err := s.RemoveSender(ctx(t), a.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveSender(ctx(t), a.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
	if _, err := s.SenderByKeyHash(ctx(t), Hash("ka")); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("removed sender's key still works: %v", err)
	}
	if _, err := s.Sender(ctx(t), a.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("removed sender still there: %v", err)
	}
	// A removed sender's key may serve a new sender.
	if _, err := s.AddSender(ctx(t), "a again", "", Hash("ka"), T0); err != nil {
		t.Errorf("key of a removed sender: %v", err)
	}
}

func testUpdateSender(t *testing.T, h Harness) {
	s := h.Open(t)
	var added []store.Sender
	for _, key := range []string{"ka", "kb"} {
		snd, err := s.AddSender(ctx(t), key, "https://a.example/up", Hash(key), T0)
		if err != nil {
			t.Fatal(err)
		}
		added = append(added, snd)
	}
	a, b := added[0], added[1]
	if a.WebhookSecret == "" || a.WebhookSecret == b.WebhookSecret {
		t.Errorf("webhook secrets %q and %q, want one for each sender", a.WebhookSecret, b.WebhookSecret)
	}
	got, err := s.UpdateSender(ctx(t), a.ID, func(snd *store.Sender) error {
		snd.Webhook = "https://b.example/up"
		snd.OldWebhookSecret, snd.OldWebhookSecretUntil = snd.WebhookSecret, T0.Add(time.Hour)
		snd.WebhookSecret = "whsec_new"
		return nil
	})
	if err != nil || got.Webhook != "https://b.example/up" {
		t.Fatalf("UpdateSender = %+v, %v", got, err)
	}
	stored, err := s.SenderByKeyHash(ctx(t), Hash("ka"))
	if err != nil || stored.ID != a.ID || stored.Webhook != "https://b.example/up" || !stored.KeyValid(Hash("ka"), T0) {
		t.Errorf("sender after the update: %+v, %v", stored, err)
	}
	if got := stored.WebhookSecrets(T0); !slices.Equal(got, []string{"whsec_new", a.WebhookSecret}) {
		t.Errorf("secrets within the grace period: %q", got)
	}
	if got := stored.WebhookSecrets(T0.Add(time.Hour)); !slices.Equal(got, []string{"whsec_new"}) {
		t.Errorf("secrets after the grace period: %q", got)
	}
	refused := errors.New("refused")
	if _, err := s.UpdateSender(ctx(t), b.ID, func(*store.Sender) error { return refused }); !errors.Is(err, refused) {
		t.Errorf("a change that fails: %v", err)
	}
	if _, err := s.UpdateSender(ctx(t), "999999999999", func(*store.Sender) error { return nil }); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("no such sender: %v", err)
	}
}

// testServiceKeys checks that a sender's service-account keys, added and
// revoked through UpdateSender, survive a restart.
func testServiceKeys(t *testing.T, h Harness) {
	s := h.Open(t)
	snd, err := s.AddSender(ctx(t), "a", "", Hash("k"), T0)
	if err != nil {
		t.Fatal(err)
	}
	keys := []store.ServiceKey{
		{ID: "k1", Email: snd.ID + "@push.example", PublicKey: []byte{1, 2}, Created: T0, TokenSecret: []byte("s1")},
		{ID: "k2", Email: snd.ID + "@push.example", PublicKey: []byte{3, 4}, Created: T0, TokenSecret: []byte("s2")},
	}
	for _, k := range keys {
		if _, err := s.UpdateSender(ctx(t), snd.ID, func(snd *store.Sender) error {
			snd.ServiceKeys = append(snd.ServiceKeys, k)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.UpdateSender(ctx(t), snd.ID, func(snd *store.Sender) error {
		snd.ServiceKeys = slices.DeleteFunc(snd.ServiceKeys, func(k store.ServiceKey) bool { return k.ID == "k1" })
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	s = h.Reopen(t, s)
	got, err := s.Sender(ctx(t), snd.ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got.ServiceKey("k1"); ok {
		t.Errorf("revoked key k1 is still there: %+v", got.ServiceKeys)
	}
	if k, ok := got.ServiceKey("k2"); !ok || !slices.Equal(k.PublicKey, keys[1].PublicKey) || string(k.TokenSecret) != "s2" || k.Email != keys[1].Email || !k.Created.Equal(T0) {
		t.Errorf("key k2 after a restart: %+v, %v", k, ok)
	}
}

// testSubscriptionDates checks that subscriptions keep when they were
// made, by the device or by the app server, through a token rotation and
// a restart.
func testSubscriptionDates(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	day := 24 * time.Hour
	if err := s.Subscribe(ctx(t), f.device.ID, f.reg.App, f.sender.ID, "news", T0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ChangeSubscriptions(ctx(t), f.sender.ID, "alerts", []string{f.reg.Token}, true, T0.Add(day)); err != nil {
		t.Fatal(err)
	}
	// Subscribing again keeps the first date.
	if err := s.Subscribe(ctx(t), f.device.ID, f.reg.App, f.sender.ID, "news", T0.Add(2*day)); err != nil {
		t.Fatal(err)
	}
	want := []store.Subscription{{Topic: "alerts", Added: T0.Add(day)}, {Topic: "news", Added: T0}}
	check := func(what, token string) {
		t.Helper()
		got, err := s.Subscriptions(ctx(t), token)
		if err != nil || len(got) != len(want) {
			t.Fatalf("%s: subscriptions %+v, %v; want %+v", what, got, err, want)
		}
		for i := range want {
			if got[i].Topic != want[i].Topic || !got[i].Added.Equal(want[i].Added.Truncate(time.Second)) {
				t.Errorf("%s: subscription %+v, want %+v", what, got[i], want[i])
			}
		}
	}
	check("after subscribing", f.reg.Token)
	rotated, err := s.RotateToken(ctx(t), f.reg.Token, time.Hour, T0.Add(3*day))
	if err != nil {
		t.Fatal(err)
	}
	check("after a token rotation", rotated.Token)
	s = h.Reopen(t, s)
	check("after a restart", rotated.Token)
	if _, err := s.ChangeSubscriptions(ctx(t), f.sender.ID, "alerts", []string{rotated.Token}, false, T0.Add(4*day)); err != nil {
		t.Fatal(err)
	}
	want = want[1:]
	check("after unsubscribing", rotated.Token)
	if got, err := s.Subscriptions(ctx(t), "no-such-token"); err != nil || len(got) != 0 {
		t.Errorf("subscriptions of an unknown token: %+v, %v", got, err)
	}
}

func testSenderKeyRotation(t *testing.T, h Harness) {
	s := h.Open(t)
	snd, err := s.AddSender(ctx(t), "a", "", Hash("k1"), T0)
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := s.RotateSenderKey(ctx(t), snd.ID, Hash("k2"), time.Hour, T0)
	if err != nil {
		t.Fatal(err)
	}
	if !rotated.OldKeyUntil.Equal(T0.Add(time.Hour)) {
		t.Errorf("old key until %v", rotated.OldKeyUntil)
	}
	for _, key := range []string{"k1", "k2"} {
		got, err := s.SenderByKeyHash(ctx(t), Hash(key))
		if err != nil || got.ID != snd.ID || !got.KeyValid(Hash(key), T0.Add(time.Minute)) {
			t.Errorf("key %s within the grace period: %+v, %v", key, got, err)
		}
	}
	if got, _ := s.Sender(ctx(t), snd.ID); got.KeyValid(Hash("k1"), T0.Add(time.Hour)) {
		t.Error("old key still valid after its grace period")
	}
	// A second rotation ends the first old key at once.
	if _, err := s.RotateSenderKey(ctx(t), snd.ID, Hash("k3"), 0, T0); err != nil {
		t.Fatal(err)
	}
	for key, want := range map[string]bool{"k1": false, "k2": false, "k3": true} {
		_, err := s.SenderByKeyHash(ctx(t), Hash(key))
		if (err == nil) != want {
			t.Errorf("key %s after the second rotation: %v", key, err)
		}
	}
	if _, err := s.RotateSenderKey(ctx(t), "999999999999", Hash("k4"), 0, T0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("rotating an unknown sender: %v", err)
	}
	other, err := s.AddSender(ctx(t), "b", "", Hash("kb"), T0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.RotateSenderKey(ctx(t), other.ID, Hash("k3"), 0, T0); err == nil {
		t.Error("rotation to another sender's key accepted")
	}
}

func testDevices(t *testing.T, h Harness) {
	s := h.Open(t)
	a, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("sa"), Created: T0})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("sb"), Created: T0})
	if err != nil {
		t.Fatal(err)
	}
	if a.ID == "" || a.ID == b.ID {
		t.Fatalf("device IDs %q and %q", a.ID, b.ID)
	}
	got, err := s.Device(ctx(t), a.ID)
	if err != nil || string(got.SecretHash) != string(Hash("sa")) || !got.Created.Equal(T0) {
		t.Errorf("Device = %+v, %v", got, err)
	}
	if _, err := s.Device(ctx(t), "0123456789abcdef"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown device: %v", err)
	}
}

func testRegisterUnregister(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	if len(f.reg.Token) < 64 {
		t.Errorf("token of %d characters", len(f.reg.Token))
	}
	again, err := s.Register(ctx(t), f.device.ID, f.reg.App, f.sender.ID, "", T0.Add(time.Hour))
	if err != nil || again.Token != f.reg.Token {
		t.Fatalf("second register gave %v, %v; want the same token", again.Token == f.reg.Token, err)
	}
	other := f.register(t, "com.example.other")
	if other.Token == f.reg.Token {
		t.Fatal("other app: same token")
	}
	if _, err := s.Register(ctx(t), f.device.ID, f.reg.App, "999999999999", "", T0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("unknown sender: %v", err)
	}
	if reg, err := s.ActiveRegistration(ctx(t), f.device.ID, other.App, f.sender.ID); err != nil || reg.Token != other.Token {
		t.Errorf("ActiveRegistration = %.8s, %v", reg.Token, err)
	}

	enqueue(t, s, f.msg("m1", "", time.Hour), f.msgFor(other, "m2", "", time.Hour))
	dropped, err := s.Unregister(ctx(t), f.device.ID, f.reg.App, f.sender.ID, T0)
	if err != nil || dropped != 1 {
		t.Fatalf("Unregister = %d, %v; want 1 dropped", dropped, err)
	}
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"m2"}) {
		t.Errorf("after unregister pending %v, want [m2]", got)
	}
	if _, err := s.Unregister(ctx(t), f.device.ID, f.reg.App, f.sender.ID, T0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("second unregister: %v", err)
	}
	if _, err := s.ActiveRegistration(ctx(t), f.device.ID, f.reg.App, f.sender.ID); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("ActiveRegistration after unregister: %v", err)
	}
	res, err := s.ResolveTokens(ctx(t), []string{f.reg.Token, "unknown", "", other.Token}, T0)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 4 {
		t.Fatalf("%d resolutions for 4 tokens", len(res))
	}
	if res[0].Given.Token != f.reg.Token || res[0].Given.Active() || res[0].Reg.Token != "" {
		t.Errorf("unregistered token: %+v", res[0])
	}
	if res[1].Given.Token != "" || res[2].Given.Token != "" || !res[3].Reg.Active() || res[3].Canonical() {
		t.Errorf("lookups: %+v", res)
	}
	if res[3].Reg.Device != f.device.ID || res[3].Reg.App != other.App || res[3].Reg.Sender != f.sender.ID {
		t.Errorf("resolved registration %+v", res[3].Reg)
	}
	if queued := enqueue(t, s, f.msg("m3", "", time.Hour)); queued[0] {
		t.Error("message to an unregistered token was queued")
	}
	fresh, err := s.Register(ctx(t), f.device.ID, f.reg.App, f.sender.ID, "", T0)
	if err != nil || fresh.Token == f.reg.Token {
		t.Errorf("register after unregister: same token or %v", err)
	}
}

// testRegistrationsPerDeviceBounded: a device may hold
// MaxRegistrationsPerDevice registrations; re-registering one of them
// still works, another device is not affected, and unregistering makes room.
func testRegistrationsPerDeviceBounded(t *testing.T, h Harness) {
	s := h.Open(t)
	snd, err := s.AddSender(ctx(t), "s", "", Hash("key"), T0)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("secret"), Created: T0})
	if err != nil {
		t.Fatal(err)
	}
	for i := range store.MaxRegistrationsPerDevice {
		if _, err := s.Register(ctx(t), dev.ID, fmt.Sprint("app.", i), snd.ID, "", T0); err != nil {
			t.Fatalf("registration %d: %v", i+1, err)
		}
	}
	if _, err := s.Register(ctx(t), dev.ID, "app.one-more", snd.ID, "", T0); !errors.Is(err, store.ErrTooManyRegistrations) {
		t.Fatalf("registration over the limit: %v, want ErrTooManyRegistrations", err)
	}
	if _, err := s.Register(ctx(t), dev.ID, "app.0", snd.ID, "", T0); err != nil {
		t.Errorf("re-registering an app at the limit: %v", err)
	}
	other, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("other"), Created: T0})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Register(ctx(t), other.ID, "app.0", snd.ID, "", T0); err != nil {
		t.Errorf("another device: %v", err)
	}
	if _, err := s.Unregister(ctx(t), dev.ID, "app.7", snd.ID, T0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Register(ctx(t), dev.ID, "app.one-more", snd.ID, "", T0); err != nil {
		t.Errorf("after an unregistration: %v", err)
	}
}

func testQueueSurvivesReopen(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	enqueue(t, s, f.msg("m1", "", time.Hour), f.msg("m2", "", time.Hour))
	s = h.Reopen(t, s)
	msgs, _, err := s.Pending(ctx(t), f.device.ID, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 || msgs[0].ID != "m1" || msgs[1].Data["n"] != "m2" || !msgs[1].Expiry.Equal(T0.Add(time.Hour)) {
		t.Fatalf("after reopen: %+v", msgs)
	}
	m := msgs[0]
	if m.Token != f.reg.Token || m.App != f.reg.App || m.Sender != f.sender.ID || m.Device != f.device.ID || !m.Sent.Equal(T0) {
		t.Errorf("message after reopen: %+v", m)
	}
	if _, err := s.Sender(ctx(t), f.sender.ID); err != nil {
		t.Error(err)
	}
	if reg, err := s.ActiveRegistration(ctx(t), f.device.ID, f.reg.App, f.sender.ID); err != nil || reg.Token != f.reg.Token {
		t.Errorf("registration after reopen: %v", err)
	}
}

// testWebPush: the Web Push sender needs no sender record; its
// registrations keep the VAPID key they were made with, and its messages
// their raw bytes and urgency.
func testWebPush(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	reg, err := s.Register(ctx(t), f.device.ID, "org.example.chat", store.WebPushSender, "BKey", T0)
	if err != nil || reg.VAPID != "BKey" || reg.Sender != store.WebPushSender {
		t.Fatalf("Register = %+v, %v", reg, err)
	}
	again, err := s.Register(ctx(t), f.device.ID, "org.example.chat", store.WebPushSender, "", T0.Add(time.Minute))
	if err != nil || again.Token != reg.Token || again.VAPID != "BKey" {
		t.Fatalf("Register again = %+v, %v; want the same token and key", again, err)
	}
	if got, err := s.ActiveRegistration(ctx(t), f.device.ID, "org.example.chat", store.WebPushSender); err != nil || got.VAPID != "BKey" {
		t.Fatalf("ActiveRegistration = %+v, %v", got, err)
	}
	m := f.msgFor(reg, "w1", "topic", time.Hour)
	m.Data, m.Raw, m.Urgency = nil, []byte{0, 1, 0xff}, "very-low"
	enqueue(t, s, m)
	got, _, err := s.Pending(ctx(t), f.device.ID, 0, 0, nil)
	if err != nil || len(got) != 1 || !bytes.Equal(got[0].Raw, m.Raw) || got[0].Urgency != "very-low" {
		t.Fatalf("Pending = %+v, %v; want raw %q, urgency very-low", got, err, m.Raw)
	}
	if _, err := s.Unregister(ctx(t), f.device.ID, "org.example.chat", store.WebPushSender, T0); err != nil {
		t.Fatal(err)
	}
	res, err := s.ResolveTokens(ctx(t), []string{reg.Token}, T0)
	if err != nil || len(res) != 1 || res[0].Reg.Token != "" || res[0].Given.Token != reg.Token {
		t.Fatalf("ResolveTokens after Unregister = %+v, %v; want a known token with no registration", res, err)
	}
}

func testPendingAfterAndLimit(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	enqueue(t, s, f.msg("a", "", time.Hour), f.msg("b", "", time.Hour), f.msg("c", "", time.Hour))
	first, _, err := s.Pending(ctx(t), f.device.ID, 0, 2, nil)
	if err != nil || len(first) != 2 {
		t.Fatalf("Pending limit 2 = %d, %v", len(first), err)
	}
	if first[0].Seq >= first[1].Seq {
		t.Errorf("seqs %d, %d not increasing", first[0].Seq, first[1].Seq)
	}
	rest, _, err := s.Pending(ctx(t), f.device.ID, first[1].Seq, 10, nil)
	if err != nil || len(rest) != 1 || rest[0].ID != "c" {
		t.Fatalf("Pending after %d = %+v, %v", first[1].Seq, rest, err)
	}
	// A later message comes after the cursor.
	enqueue(t, s, f.msg("d", "", time.Hour))
	if later, _, err := s.Pending(ctx(t), f.device.ID, rest[0].Seq, 10, nil); err != nil || len(later) != 1 || later[0].ID != "d" {
		t.Errorf("Pending after %d = %+v, %v", rest[0].Seq, later, err)
	}
	// Another device's queue is separate.
	dev2, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("s2"), Created: T0})
	if err != nil {
		t.Fatal(err)
	}
	if got := pendingIDs(t, s, dev2.ID); len(got) != 0 {
		t.Errorf("other device sees %v", got)
	}
}

// testEnqueueChecksTheRegistration: a message is queued only for the
// active registration of its token on its own device.
// testPendingSkips checks that Pending leaves out the messages skip names,
// counting only those it returns against the limit, and that its last
// moves a cursor past the entries it looked at, left out or not.
func testPendingSkips(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	enqueue(t, s, f.msg("a", "", time.Hour), f.msg("b", "", time.Hour), f.msg("c", "", time.Hour),
		f.msg("d", "", time.Hour), f.msg("e", "", time.Hour))
	all, _, err := s.Pending(ctx(t), f.device.ID, 0, 0, nil)
	if err != nil || len(all) != 5 {
		t.Fatalf("Pending = %d messages, %v; want 5", len(all), err)
	}
	seq := map[string]uint64{}
	for _, m := range all {
		seq[m.ID] = m.Seq
	}
	var looked []string
	skipping := func(ids ...string) func(string) bool {
		looked = nil
		return func(id string) bool {
			looked = append(looked, id)
			return slices.Contains(ids, id)
		}
	}
	ids := func(msgs []store.Message) []string {
		var out []string
		for _, m := range msgs {
			out = append(out, m.ID)
		}
		return out
	}

	msgs, last, err := s.Pending(ctx(t), f.device.ID, 0, 2, skipping("a", "b"))
	if err != nil || !slices.Equal(ids(msgs), []string{"c", "d"}) || last != seq["d"] {
		t.Fatalf("Pending limit 2 skipping a, b = %v, last %d, %v; want [c d], last %d", ids(msgs), last, err, seq["d"])
	}
	if !slices.Equal(looked, []string{"a", "b", "c", "d"}) {
		t.Errorf("skip asked about %v; want a to d, in order, and not e past the limit", looked)
	}
	// Left out up to the end of the queue: the cursor moves past them all.
	msgs, last, err = s.Pending(ctx(t), f.device.ID, seq["c"], 10, skipping("d", "e"))
	if err != nil || len(msgs) != 0 || last != seq["e"] {
		t.Fatalf("Pending after c skipping d, e = %v, last %d, %v; want none, last %d", ids(msgs), last, err, seq["e"])
	}
	msgs, last, err = s.Pending(ctx(t), f.device.ID, seq["b"], 10, skipping("d"))
	if err != nil || !slices.Equal(ids(msgs), []string{"c", "e"}) || last != seq["e"] {
		t.Fatalf("Pending after b skipping d = %v, last %d, %v; want [c e], last %d", ids(msgs), last, err, seq["e"])
	}
	// Nothing after the cursor: last is where it was.
	msgs, last, err = s.Pending(ctx(t), f.device.ID, seq["e"], 10, skipping())
	if err != nil || len(msgs) != 0 || last != seq["e"] || len(looked) != 0 {
		t.Fatalf("Pending after e = %v, last %d, %v, skip asked about %v; want none, last %d", ids(msgs), last, err, looked, seq["e"])
	}
	// An acked message is gone from the queue, whatever skip says.
	if _, _, err := s.Ack(ctx(t), f.device.ID, []string{"c"}, T0); err != nil {
		t.Fatal(err)
	}
	msgs, last, err = s.Pending(ctx(t), f.device.ID, 0, 0, skipping("a"))
	if err != nil || !slices.Equal(ids(msgs), []string{"b", "d", "e"}) || last != seq["e"] {
		t.Fatalf("Pending after an ack, skipping a = %v, last %d, %v; want [b d e], last %d", ids(msgs), last, err, seq["e"])
	}
}

func testEnqueueChecksTheRegistration(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	dev2, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("s2"), Created: T0})
	if err != nil {
		t.Fatal(err)
	}
	wrongDevice := f.msg("wrong-device", "", time.Hour)
	wrongDevice.Device = dev2.ID
	unknown := f.msg("unknown-token", "", time.Hour)
	unknown.Token = strings.Repeat("A", 64)
	queued := enqueue(t, s, f.msg("ok", "", time.Hour), wrongDevice, unknown)
	if !slices.Equal(queued, []bool{true, false, false}) {
		t.Errorf("queued %v, want [true false false]", queued)
	}
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"ok"}) {
		t.Errorf("pending %v", got)
	}
	if got := pendingIDs(t, s, dev2.ID); len(got) != 0 {
		t.Errorf("other device has %v", got)
	}
}

func testCollapse(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	enqueue(t, s, f.msg("old", "temp", time.Hour), f.msg("keep", "", time.Hour), f.msg("other", "humidity", time.Hour))
	enqueue(t, s, f.msg("new", "temp", time.Hour))
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"keep", "other", "new"}) {
		t.Errorf("pending %v, want [keep other new]", got)
	}
	// Two with the same key in one batch: the later wins.
	enqueue(t, s, f.msg("x1", "temp", time.Hour), f.msg("x2", "temp", time.Hour))
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"keep", "other", "x2"}) {
		t.Errorf("pending %v, want [keep other x2]", got)
	}
	// Once acked, the collapse key no longer points at anything.
	if n, _ := ack(t, s, f.device.ID, "x2"); n != 1 {
		t.Fatalf("acked %d", n)
	}
	enqueue(t, s, f.msg("y", "temp", time.Hour))
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"keep", "other", "y"}) {
		t.Errorf("pending %v, want [keep other y]", got)
	}
	// A key is per token: another app's message under it stays.
	other := f.register(t, "com.example.other")
	enqueue(t, s, f.msgFor(other, "z", "temp", time.Hour))
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"keep", "other", "y", "z"}) {
		t.Errorf("pending %v, want [keep other y z]", got)
	}
	if n := deletedCount(t, s, f.device.ID, f.reg.App); n != 0 {
		t.Errorf("replacements counted as %d deleted", n)
	}
}

// testCollapseKeysPerAppCapped: a fifth collapse key of an app evicts the
// message of its oldest key, which counts as deleted; another app's keys
// are its own, and a replacement under a key is not an eviction.
func testCollapseKeysPerAppCapped(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	other := f.register(t, "com.example.other")
	for i, key := range []string{"k1", "k2", "k3", "k4", "k2"} {
		enqueue(t, s, f.msg(fmt.Sprint("m", i), key, time.Hour))
	}
	enqueue(t, s, f.msgFor(other, "o1", "k1", time.Hour), f.msg("plain", "", time.Hour))
	if n := deletedCount(t, s, f.device.ID, f.reg.App); n != 0 {
		t.Fatalf("%d deleted before a fifth key", n)
	}
	enqueue(t, s, f.msg("m5", "k5", time.Hour))
	if got, want := pendingIDs(t, s, f.device.ID), []string{"m2", "m3", "m4", "o1", "plain", "m5"}; !slices.Equal(got, want) {
		t.Errorf("pending %v, want %v", got, want)
	}
	if n := deletedCount(t, s, f.device.ID, f.reg.App); n != 1 {
		t.Errorf("%d deleted, want 1 (the oldest key's)", n)
	}
	if n := deletedCount(t, s, f.device.ID, other.App); n != 0 {
		t.Errorf("other app: %d deleted", n)
	}
	// The evicted key is free again; k3's message is now the oldest, and
	// it goes next.
	enqueue(t, s, f.msg("m6", "k1", time.Hour))
	if got, want := pendingIDs(t, s, f.device.ID), []string{"m3", "m4", "o1", "plain", "m5", "m6"}; !slices.Equal(got, want) {
		t.Errorf("pending %v, want %v", got, want)
	}
}

// testPlainMessagesPerAppCapped: past MaxPendingPerApp non-collapsible
// messages of one app, every one of them is dropped and counted, the new
// one is kept, and neither the app's collapsible messages nor other apps'
// messages are touched.
func testPlainMessagesPerAppCapped(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	other := f.register(t, "com.example.other")
	var first []store.Message
	for i := range store.MaxPendingPerApp {
		first = append(first, f.msg(fmt.Sprint("p", i), "", time.Hour))
	}
	enqueue(t, s, first...)
	enqueue(t, s, f.msg("c", "state", time.Hour), f.msgFor(other, "o", "", time.Hour))
	if got := pendingIDs(t, s, f.device.ID); len(got) != store.MaxPendingPerApp+2 {
		t.Fatalf("%d pending, want %d", len(got), store.MaxPendingPerApp+2)
	}
	enqueue(t, s, f.msg("last", "", time.Hour))
	if got, want := pendingIDs(t, s, f.device.ID), []string{"c", "o", "last"}; !slices.Equal(got, want) {
		t.Errorf("pending %v, want %v", got, want)
	}
	if n := deletedCount(t, s, f.device.ID, f.reg.App); n != store.MaxPendingPerApp {
		t.Errorf("%d deleted, want %d", n, store.MaxPendingPerApp)
	}
	// Within one batch the rule holds message by message.
	var batch []store.Message
	for i := range store.MaxPendingPerApp + 5 {
		batch = append(batch, f.msgFor(other, fmt.Sprint("b", i), "", time.Hour))
	}
	enqueue(t, s, batch...)
	got := pendingIDs(t, s, f.device.ID)
	var otherLeft []string
	for _, id := range got {
		if strings.HasPrefix(id, "b") || id == "o" {
			otherLeft = append(otherLeft, id)
		}
	}
	// "o" and b0..b98 make 100; b99 drops them all, then b100..b104 follow.
	if want := []string{"b99", "b100", "b101", "b102", "b103", "b104"}; !slices.Equal(otherLeft, want) {
		t.Errorf("other app's pending %v, want %v", otherLeft, want)
	}
	if n := deletedCount(t, s, f.device.ID, other.App); n != store.MaxPendingPerApp {
		t.Errorf("other app: %d deleted, want %d", n, store.MaxPendingPerApp)
	}
}

// testFlowingMessagesLeaveTheCap: messages in flight to the device's live
// session neither count towards MaxPendingPerApp nor are dropped by it;
// what waits behind them is capped as ever.
func testFlowingMessagesLeaveTheCap(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	var sent []string
	var msgs []store.Message
	for i := range store.MaxPendingPerApp {
		id := fmt.Sprint("f", i)
		sent = append(sent, id)
		msgs = append(msgs, f.msg(id, "", time.Hour))
	}
	enqueue(t, s, msgs...)
	flowing := flowingIDs(func(device, app string) []string {
		if device != f.device.ID || app != f.reg.App {
			return nil
		}
		return sent
	})
	msgs = msgs[:0]
	for i := range store.MaxPendingPerApp {
		msgs = append(msgs, f.msg(fmt.Sprint("w", i), "", time.Hour))
	}
	if _, err := s.Enqueue(ctx(t), msgs, flowing); err != nil {
		t.Fatal(err)
	}
	if got := pendingIDs(t, s, f.device.ID); len(got) != 2*store.MaxPendingPerApp {
		t.Fatalf("%d pending, want the %d flowing and the %d waiting", len(got), store.MaxPendingPerApp, store.MaxPendingPerApp)
	}
	if n := deletedCount(t, s, f.device.ID, f.reg.App); n != 0 {
		t.Errorf("%d deleted, want none", n)
	}
	// One more waiting drops the waiting ones, not those in flight.
	if _, err := s.Enqueue(ctx(t), []store.Message{f.msg("last", "", time.Hour)}, flowing); err != nil {
		t.Fatal(err)
	}
	if got, want := pendingIDs(t, s, f.device.ID), append(slices.Clone(sent), "last"); !slices.Equal(got, want) {
		t.Errorf("pending %v, want %v", got, want)
	}
	if n := deletedCount(t, s, f.device.ID, f.reg.App); n != store.MaxPendingPerApp {
		t.Errorf("%d deleted, want %d", n, store.MaxPendingPerApp)
	}
}

// flowingIDs is a store.Live that names what flows and takes no offers.
type flowingIDs func(device, app string) []string

func (f flowingIDs) Flowing(device, app string) []string { return f(device, app) }
func (flowingIDs) Offer(store.Message)                   {}

// testDeletedNoticeSealedUntilAcked: a deleted-messages notice keeps its ID
// and count until the device acks it; drops in the meantime wait for the
// next notice.
func testDeletedNoticeSealedUntilAcked(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	for i := range 5 {
		enqueue(t, s, f.msg(fmt.Sprint("k", i), fmt.Sprint("key", i), time.Hour))
	}
	first := notices(t, s, f.device.ID)
	if len(first) != 1 || first[0].Kind != store.NoticeDeleted || first[0].Count != 1 || first[0].App != f.reg.App || first[0].ID == "" {
		t.Fatalf("notices %+v, want one of 1 deleted", first)
	}
	if again := notices(t, s, f.device.ID); !slices.Equal(again, first) {
		t.Errorf("notices changed unasked: %+v, then %+v", first, again)
	}
	enqueue(t, s, f.msg("k5", "key5", time.Hour), f.msg("k6", "key6", time.Hour))
	if again := notices(t, s, f.device.ID); !slices.Equal(again, first) {
		t.Errorf("a sealed notice changed before its ack: %+v, then %+v", first, again)
	}
	s = h.Reopen(t, s)
	f.s = s
	if again := notices(t, s, f.device.ID); !slices.Equal(again, first) {
		t.Errorf("notice after reopen: %+v, want %+v", again, first)
	}
	// An ack of a notice ID of another device is ignored.
	if n, _ := ack(t, s, "0123456789abcdef", first[0].ID); n != 0 {
		t.Errorf("foreign notice ack counted %d", n)
	}
	if again := notices(t, s, f.device.ID); !slices.Equal(again, first) {
		t.Errorf("foreign ack changed the notice: %+v", again)
	}
	if n, _ := ack(t, s, f.device.ID, first[0].ID); n != 0 {
		t.Errorf("a notice ack counted as %d messages", n)
	}
	next := notices(t, s, f.device.ID)
	if len(next) != 1 || next[0].Count != 2 || next[0].ID == first[0].ID {
		t.Fatalf("after the ack: %+v, want a new notice of 2", next)
	}
	ack(t, s, f.device.ID, next[0].ID)
	if left := notices(t, s, f.device.ID); len(left) != 0 {
		t.Errorf("notices left: %+v", left)
	}
	// Acking again is harmless.
	ack(t, s, f.device.ID, next[0].ID)
}

// testExpiredMessagesLeaveTheCaps: messages whose time to live ran out are
// never counted against a new message (once swept, for a backend that is
// told to sweep) and are not delivered.
func testExpiredMessagesLeaveTheCaps(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	var short []store.Message
	for i := range store.MaxPendingPerApp {
		short = append(short, f.msg(fmt.Sprint("s", i), "", time.Minute))
	}
	enqueue(t, s, short...)
	for i := range store.MaxCollapseKeysPerApp {
		enqueue(t, s, f.msg(fmt.Sprint("c", i), fmt.Sprint("key", i), time.Minute))
	}
	later := T0.Add(2 * time.Minute)
	if sw, ok := s.(store.Sweeper); ok {
		if _, _, err := sw.SweepExpired(ctx(t), later); err != nil {
			t.Fatal(err)
		}
	}
	fresh := f.msg("fresh", "", time.Hour)
	fresh.Sent, fresh.Expiry = later, later.Add(time.Hour)
	keyed := f.msg("keyed", "key9", time.Hour)
	keyed.Sent, keyed.Expiry = later, later.Add(time.Hour)
	enqueue(t, s, fresh, keyed)
	if n := deletedCount(t, s, f.device.ID, f.reg.App); n != 0 {
		t.Errorf("%d deleted: expired messages counted against the caps", n)
	}
	msgs, _, err := s.Pending(ctx(t), f.device.ID, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var live []string
	for _, m := range msgs {
		if m.Expiry.After(later) {
			live = append(live, m.ID)
		}
	}
	if !slices.Equal(live, []string{"fresh", "keyed"}) {
		t.Errorf("live messages %v, want [fresh keyed]", live)
	}
}

func testAckOnlyOwnMessages(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	enqueue(t, s, f.msg("m1", "", time.Hour), f.msg("m2", "", time.Hour))
	if n, _ := ack(t, s, "0123456789abcdef", "m1"); n != 0 {
		t.Fatalf("foreign ack = %d", n)
	}
	if n, _ := ack(t, s, f.device.ID, "m1", "m1", "nope"); n != 1 {
		t.Fatalf("ack = %d", n)
	}
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"m2"}) {
		t.Errorf("pending %v", got)
	}
	if n, _ := ack(t, s, f.device.ID, "m1"); n != 0 {
		t.Errorf("second ack = %d", n)
	}
}

// testReceipts: an acked message that asked for a delivery receipt queues
// one for its sender, in GCM's form, in the same change; a time-to-live-0
// message's receipt is queued by AddReceipts.
func testReceipts(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	asked := f.msg("0:1%abc", "", time.Hour)
	asked.Receipt = true
	viaXMPP := f.msg("0:2%def", "", time.Hour)
	viaXMPP.Receipt, viaXMPP.OriginID = true, "app-server-id-7"
	enqueue(t, s, asked, viaXMPP, f.msg("plain", "", time.Hour))
	n, receipts := ack(t, s, f.device.ID, asked.ID, viaXMPP.ID, "plain")
	if n != 3 || len(receipts) != 2 {
		t.Fatalf("acked %d with %d receipts, want 3 and 2", n, len(receipts))
	}
	byID := map[string]store.Upstream{}
	for _, r := range receipts {
		byID[r.ID] = r
	}
	r, ok := byID["dr2:"+asked.ID]
	if !ok {
		t.Fatalf("receipts %+v, none for %s", receipts, asked.ID)
	}
	want := map[string]string{
		"message_status": "MESSAGE_SENT_TO_DEVICE", "original_message_id": asked.ID,
		"device_registration_id": f.reg.Token, "message_sent_timestamp": fmt.Sprint(T0.UnixMilli()),
	}
	if r.Type != store.UpstreamReceipt || r.Sender != f.sender.ID || r.App != f.reg.App || r.Device != f.device.ID || r.Token != f.reg.Token {
		t.Errorf("receipt %+v", r)
	}
	for k, v := range want {
		if r.Data[k] != v {
			t.Errorf("receipt %s = %q, want %q", k, r.Data[k], v)
		}
	}
	if !r.Expiry.Equal(T0.Add(store.ReceiptTTL)) {
		t.Errorf("receipt expires %v", r.Expiry)
	}
	if x, ok := byID["dr2:app-server-id-7"]; !ok || x.Data["original_message_id"] != "app-server-id-7" {
		t.Errorf("receipt of an XMPP message: %+v", receipts)
	}
	// Queued: the upstream queue has them, and they load by Seq.
	var queued []store.Upstream
	if err := s.EachUpstream(ctx(t), func(u store.Upstream) error { queued = append(queued, u); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(queued) != 2 {
		t.Fatalf("%d in the upstream queue, want 2", len(queued))
	}
	got, err := s.Upstream(ctx(t), r.Seq)
	if err != nil || got.ID != r.ID || got.Data["original_message_id"] != asked.ID {
		t.Errorf("Upstream(%d) = %+v, %v", r.Seq, got, err)
	}
	// A repeated ack queues nothing more.
	if _, again := ack(t, s, f.device.ID, asked.ID); len(again) != 0 {
		t.Errorf("second ack queued %d receipts", len(again))
	}
	live := f.msg("0:3%live", "", 0)
	live.Receipt = true
	more, err := s.AddReceipts(ctx(t), []store.Message{live}, T0)
	if err != nil || len(more) != 1 || more[0].ID != "dr2:"+live.ID || more[0].Seq == 0 {
		t.Fatalf("AddReceipts = %+v, %v", more, err)
	}
	if got, err := s.Upstream(ctx(t), more[0].Seq); err != nil || got.ID != more[0].ID {
		t.Errorf("Upstream(%d) = %+v, %v", more[0].Seq, got, err)
	}
}

func testUpstreamDedupe(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	up := func(id string, at time.Time) store.PutOutcome {
		t.Helper()
		u := store.Upstream{Device: f.device.ID, App: f.reg.App, Sender: f.sender.ID, ID: id, TTL: 60,
			Received: at, Expiry: at.Add(time.Minute), Data: map[string]string{"k": "v"}}
		out, err := s.PutUpstream(ctx(t), &u, at.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if out == store.UpstreamQueued && (u.Token != f.reg.Token || u.Seq == 0) {
			t.Errorf("queued upstream has token %v, seq %d", u.Token == f.reg.Token, u.Seq)
		}
		return out
	}
	if got := up("u1", T0); got != store.UpstreamQueued {
		t.Fatalf("first: %v", got)
	}
	if got := up("u1", T0.Add(30*time.Second)); got != store.UpstreamDuplicate {
		t.Fatalf("repeat within TTL: %v", got)
	}
	if got := up("u2", T0); got != store.UpstreamQueued {
		t.Fatalf("other id: %v", got)
	}
	// The same ID from another app is another message.
	other := f.register(t, "com.example.other")
	u := store.Upstream{Device: f.device.ID, App: other.App, Sender: f.sender.ID, ID: "u1", TTL: 60, Received: T0, Expiry: T0.Add(time.Minute)}
	if out, err := s.PutUpstream(ctx(t), &u, T0.Add(time.Minute)); err != nil || out != store.UpstreamQueued {
		t.Fatalf("same ID, other app: %v, %v", out, err)
	}
	// After the TTL the same ID is a new message, even before a sweep.
	if got := up("u1", T0.Add(2*time.Minute)); got != store.UpstreamQueued {
		t.Fatalf("repeat after TTL: %v", got)
	}
	// Removing the first sighting must not forget the renewed one.
	if sw, ok := s.(store.Sweeper); ok {
		if _, _, err := sw.SweepExpired(ctx(t), T0.Add(90*time.Second)); err != nil {
			t.Fatal(err)
		}
	}
	if got := up("u1", T0.Add(150*time.Second)); got != store.UpstreamDuplicate {
		t.Fatalf("repeat of renewed sighting: %v", got)
	}

	var queued []store.Upstream
	if err := s.EachUpstream(ctx(t), func(u store.Upstream) error { queued = append(queued, u); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(queued) != 4 {
		t.Fatalf("%d queued, want 4", len(queued))
	}
	bySeq := map[uint64]store.Upstream{}
	for _, u := range queued {
		bySeq[u.Seq] = u
	}
	if len(bySeq) != 4 {
		t.Errorf("seqs not unique: %+v", queued)
	}
	if err := s.DeleteUpstream(ctx(t), queued[0].Seq); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Upstream(ctx(t), queued[0].Seq); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("deleted upstream: %v", err)
	}
	if err := s.DeleteUpstream(ctx(t), queued[0].Seq); err != nil {
		t.Errorf("deleting what is gone: %v", err)
	}
	s = h.Reopen(t, s)
	for _, want := range queued[1:] {
		got, err := s.Upstream(ctx(t), want.Seq)
		if err != nil || got.ID != want.ID || got.App != want.App || got.Token != want.Token || got.Data["k"] != want.Data["k"] || !got.Expiry.Equal(want.Expiry) {
			t.Errorf("after reopen: %+v, %v; want %+v", got, err, want)
		}
	}
	// Deduplication outlives a restart.
	f.s = s
	if got := up("u1", T0.Add(160*time.Second)); got != store.UpstreamDuplicate {
		t.Errorf("repeat after reopen: %v", got)
	}
}

func testUpstreamRefused(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	if _, err := s.Unregister(ctx(t), f.device.ID, f.reg.App, f.sender.ID, T0); err != nil {
		t.Fatal(err)
	}
	nu := store.Upstream{Device: f.device.ID, App: f.reg.App, Sender: f.sender.ID, ID: "u9", Received: T0}
	if out, err := s.PutUpstream(ctx(t), &nu, T0.Add(time.Minute)); err != nil || out != store.UpstreamNotRegistered {
		t.Errorf("unregistered app: %v, %v", out, err)
	}
	other := f.register(t, "com.example.other")
	if err := s.RemoveSender(ctx(t), f.sender.ID); err != nil {
		t.Fatal(err)
	}
	gone := store.Upstream{Device: f.device.ID, App: other.App, Sender: f.sender.ID, ID: "u10", Received: T0}
	if out, err := s.PutUpstream(ctx(t), &gone, T0.Add(time.Minute)); err != nil || out != store.UpstreamNotRegistered {
		t.Errorf("removed sender: %v, %v", out, err)
	}
	var n int
	s.EachUpstream(ctx(t), func(store.Upstream) error { n++; return nil })
	if n != 0 {
		t.Errorf("%d queued", n)
	}
}

func testSubscriptions(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	for _, topic := range []string{"weather", "news", "news", "a.b~c%20"} {
		if err := s.Subscribe(ctx(t), f.device.ID, f.reg.App, f.sender.ID, topic, T0); err != nil {
			t.Fatalf("subscribe %q: %v", topic, err)
		}
	}
	topics, err := s.Topics(ctx(t), f.reg.Token)
	if err != nil || !slices.Equal(topics, []string{"a.b~c%20", "news", "weather"}) {
		t.Errorf("Topics = %v, %v", topics, err)
	}
	if err := s.Unsubscribe(ctx(t), f.device.ID, f.reg.App, f.sender.ID, "news"); err != nil {
		t.Fatal(err)
	}
	if err := s.Unsubscribe(ctx(t), f.device.ID, f.reg.App, f.sender.ID, "never"); err != nil {
		t.Errorf("unsubscribing from a topic it lacks: %v", err)
	}
	if topics, _ := s.Topics(ctx(t), f.reg.Token); !slices.Equal(topics, []string{"a.b~c%20", "weather"}) {
		t.Errorf("after unsubscribe: %v", topics)
	}
	if err := s.Subscribe(ctx(t), f.device.ID, "unregistered", f.sender.ID, "t", T0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("subscription without a registration: %v", err)
	}
	// Unregistering ends the subscriptions: fan-out skips the token.
	if _, err := s.Unregister(ctx(t), f.device.ID, f.reg.App, f.sender.ID, T0); err != nil {
		t.Fatal(err)
	}
	if topics, _ := s.Topics(ctx(t), f.reg.Token); len(topics) != 0 {
		t.Errorf("topics after unregister: %v", topics)
	}
	res := fanOutAll(t, s, store.TopicMessage{ID: "1", Sender: f.sender.ID, Topic: "weather", Topics: []string{"weather"}, Sent: T0, Expiry: T0.Add(time.Hour)}, 10, nil)
	if res.Copies != 0 {
		t.Errorf("%d copies to an unregistered app", res.Copies)
	}
}

func testChangeSubscriptions(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	other, err := s.AddSender(ctx(t), "other", "", Hash("other"), T0)
	if err != nil {
		t.Fatal(err)
	}
	otherReg, err := s.Register(ctx(t), f.device.ID, "com.example.x", other.ID, "", T0)
	if err != nil {
		t.Fatal(err)
	}
	gone := f.register(t, "com.example.gone")
	if _, err := s.Unregister(ctx(t), f.device.ID, gone.App, f.sender.ID, T0); err != nil {
		t.Fatal(err)
	}
	out, err := s.ChangeSubscriptions(ctx(t), f.sender.ID, "news", []string{f.reg.Token, otherReg.Token, gone.Token, "nope", ""}, true, T0)
	want := []store.SubscriptionOutcome{store.SubscriptionDone, store.SubscriptionWrongSender, store.SubscriptionNotFound, store.SubscriptionNotFound, store.SubscriptionNotFound}
	if err != nil || !slices.Equal(out, want) {
		t.Errorf("ChangeSubscriptions = %v, %v; want %v", out, err, want)
	}
	if topics, _ := s.Topics(ctx(t), f.reg.Token); !slices.Equal(topics, []string{"news"}) {
		t.Errorf("topics %v", topics)
	}
	if topics, _ := s.Topics(ctx(t), otherReg.Token); len(topics) != 0 {
		t.Errorf("another sender's token was subscribed: %v", topics)
	}
	out, err = s.ChangeSubscriptions(ctx(t), f.sender.ID, "news", []string{f.reg.Token}, false, T0)
	if err != nil || !slices.Equal(out, []store.SubscriptionOutcome{store.SubscriptionDone}) {
		t.Errorf("unsubscribe: %v, %v", out, err)
	}
	if topics, _ := s.Topics(ctx(t), f.reg.Token); len(topics) != 0 {
		t.Errorf("topics after unsubscribe %v", topics)
	}
}

// fanOutAll stores tm and fans it out to the end, limit subscribers a step.
func fanOutAll(t *testing.T, s store.Backend, tm store.TopicMessage, limit int, match func(func(string) bool) bool) store.FanOutResult {
	t.Helper()
	if err := s.PutTopicMessage(ctx(t), &tm); err != nil {
		t.Fatal(err)
	}
	var all store.FanOutResult
	for range 1000 {
		res, err := s.FanOut(ctx(t), tm.Seq, store.FanOutStep{Limit: limit, Now: tm.Sent, NewID: idGen(tm.ID), Match: match})
		if err != nil {
			t.Fatal(err)
		}
		all.Copies += res.Copies
		all.Live = append(all.Live, res.Live...)
		all.Devices = append(all.Devices, res.Devices...)
		if res.Done {
			all.Done = true
			return all
		}
	}
	t.Fatal("fan-out does not end")
	return all
}

// idGen makes unique message IDs for the copies of one topic message.
func idGen(prefix string) func() string {
	var mu sync.Mutex
	n := 0
	return func() string {
		mu.Lock()
		defer mu.Unlock()
		n++
		return fmt.Sprintf("0:%s%%%d", prefix, n)
	}
}

func testFanOutStepsAndResume(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	// Registrations on a, on b, on both, and one of another sender on a.
	tokens := map[string]string{}
	for _, app := range []string{"on-a", "on-b", "on-both", "on-a-2"} {
		tokens[app] = f.register(t, app).Token
	}
	other, err := s.AddSender(ctx(t), "other", "", Hash("other"), T0)
	if err != nil {
		t.Fatal(err)
	}
	otherReg, err := s.Register(ctx(t), f.device.ID, "other", other.ID, "", T0)
	if err != nil {
		t.Fatal(err)
	}
	sub := func(sender, topic string, toks ...string) {
		t.Helper()
		out, err := s.ChangeSubscriptions(ctx(t), sender, topic, toks, true, T0)
		if err != nil || slices.ContainsFunc(out, func(o store.SubscriptionOutcome) bool { return o != store.SubscriptionDone }) {
			t.Fatalf("subscribe: %v, %v", out, err)
		}
	}
	sub(f.sender.ID, "a", tokens["on-a"], tokens["on-both"], tokens["on-a-2"])
	sub(f.sender.ID, "b", tokens["on-b"], tokens["on-both"])
	sub(other.ID, "a", otherReg.Token)

	// "'a' in topics || 'b' in topics", one subscriber per step, reopening
	// the store between steps as a crash would.
	tm := store.TopicMessage{ID: "7", Sender: f.sender.ID, Condition: "a or b", Topics: []string{"a", "b"},
		Data: map[string]string{"k": "v"}, Sent: T0, Expiry: T0.Add(time.Hour)}
	if err := s.PutTopicMessage(ctx(t), &tm); err != nil {
		t.Fatal(err)
	}
	or := func(subscribed func(string) bool) bool { return subscribed("a") || subscribed("b") }
	newID := idGen("copy")
	copies, steps := 0, 0
	for {
		res, err := s.FanOut(ctx(t), tm.Seq, store.FanOutStep{Limit: 1, Now: T0, NewID: newID, Match: or})
		if err != nil {
			t.Fatal(err)
		}
		copies += res.Copies
		steps++
		if res.Done {
			break
		}
		if steps%2 == 1 {
			s = h.Reopen(t, s)
		}
		if steps > 10 {
			t.Fatal("fan-out does not end")
		}
	}
	queued, _, err := s.Pending(ctx(t), f.device.ID, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	var apps []string
	for _, m := range queued {
		apps = append(apps, m.App)
		if m.Data["k"] != "v" || m.Sender != f.sender.ID || !m.Expiry.Equal(tm.Expiry) || m.Token != tokens[m.App] {
			t.Errorf("copy %+v", m)
		}
	}
	slices.Sort(apps)
	if want := []string{"on-a", "on-a-2", "on-b", "on-both"}; copies != 4 || !slices.Equal(apps, want) {
		t.Errorf("%d copies for %v, want one each for %v", copies, apps, want)
	}
	if left, _ := s.TopicMessages(ctx(t), 0, 10); len(left) != 0 {
		t.Errorf("%d topic messages left", len(left))
	}

	// An expired topic message is dropped without copies.
	late := store.TopicMessage{ID: "8", Sender: f.sender.ID, Topic: "a", Topics: []string{"a"}, Sent: T0, Expiry: T0.Add(time.Minute)}
	if err := s.PutTopicMessage(ctx(t), &late); err != nil {
		t.Fatal(err)
	}
	res, err := s.FanOut(ctx(t), late.Seq, store.FanOutStep{Limit: 100, Now: T0.Add(time.Minute), NewID: newID})
	if err != nil || !res.Done || res.Copies != 0 {
		t.Errorf("expired fan-out: %+v, %v", res, err)
	}
	if left, _ := s.TopicMessages(ctx(t), 0, 10); len(left) != 0 {
		t.Errorf("%d topic messages left", len(left))
	}
}

// testFanOutRestrictedAndLive: restricted_package_name limits the copies
// to one app; a time-to-live-0 message's copies are handed back, not
// stored.
func testFanOutRestrictedAndLive(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	second := f.register(t, "com.example.second")
	dev2, err := s.AddDevice(ctx(t), store.Device{SecretHash: Hash("s2"), Created: T0})
	if err != nil {
		t.Fatal(err)
	}
	third, err := s.Register(ctx(t), dev2.ID, f.reg.App, f.sender.ID, "", T0)
	if err != nil {
		t.Fatal(err)
	}
	out, err := s.ChangeSubscriptions(ctx(t), f.sender.ID, "t", []string{f.reg.Token, second.Token, third.Token}, true, T0)
	if err != nil || len(out) != 3 {
		t.Fatal(out, err)
	}
	res := fanOutAll(t, s, store.TopicMessage{ID: "1", Sender: f.sender.ID, Topic: "t", Topics: []string{"t"},
		RestrictedPackage: f.reg.App, Sent: T0, Expiry: T0.Add(time.Hour)}, 2, nil)
	slices.Sort(res.Devices)
	devices := []string{f.device.ID, dev2.ID}
	slices.Sort(devices)
	if res.Copies != 2 || !slices.Equal(slices.Compact(res.Devices), devices) {
		t.Errorf("restricted: %d copies to %v, want 2 to %v", res.Copies, res.Devices, devices)
	}
	if got := pendingIDs(t, s, f.device.ID); len(got) != 1 {
		t.Errorf("device 1 has %v", got)
	}

	live := fanOutAll(t, s, store.TopicMessage{ID: "2", Sender: f.sender.ID, Topic: "t", Topics: []string{"t"},
		Sent: T0, Expiry: T0.Add(time.Minute), Live: true}, 2, nil)
	if live.Copies != 3 || len(live.Live) != 3 {
		t.Fatalf("live: %d copies, %d handed back", live.Copies, len(live.Live))
	}
	for _, m := range live.Live {
		if m.ID == "" || m.Expiry.After(T0) || m.Token == "" || m.Device == "" {
			t.Errorf("live copy %+v", m)
		}
	}
	if got := pendingIDs(t, s, f.device.ID); len(got) != 1 {
		t.Errorf("live copies were stored: %v", got)
	}
}

func testTopicMessagesInOrder(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	var seqs []uint64
	for i := range 5 {
		tm := store.TopicMessage{ID: fmt.Sprint(i), Sender: f.sender.ID, Topic: "t", Topics: []string{"t"}, Sent: T0, Expiry: T0.Add(time.Hour)}
		if err := s.PutTopicMessage(ctx(t), &tm); err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, tm.Seq)
	}
	got, err := s.TopicMessages(ctx(t), 0, 3)
	if err != nil || len(got) != 3 {
		t.Fatalf("TopicMessages = %d, %v", len(got), err)
	}
	for i, tm := range got {
		if tm.Seq != seqs[i] || tm.ID != fmt.Sprint(i) {
			t.Errorf("topic message %d: seq %d ID %s, want %d %d", i, tm.Seq, tm.ID, seqs[i], i)
		}
	}
	rest, err := s.TopicMessages(ctx(t), got[2].Seq, 10)
	if err != nil || len(rest) != 2 || rest[0].Seq != seqs[3] {
		t.Errorf("after %d: %+v, %v", got[2].Seq, rest, err)
	}
	if err := s.DeleteTopicMessage(ctx(t), seqs[0]); err != nil {
		t.Fatal(err)
	}
	s = h.Reopen(t, s)
	if left, _ := s.TopicMessages(ctx(t), 0, 10); len(left) != 4 || left[0].Seq != seqs[1] {
		t.Errorf("after a delete and a reopen: %d left", len(left))
	}
}

// testRotateToken: the new token takes the queued messages and the
// subscriptions; the old one reaches it during its grace period and is
// not registered after; the device is told with a notice.
func testRotateToken(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	if err := s.Subscribe(ctx(t), f.device.ID, f.reg.App, f.sender.ID, "news", T0); err != nil {
		t.Fatal(err)
	}
	enqueue(t, s, f.msg("before", "", time.Hour), f.msg("keyed", "k", time.Hour))
	fresh, err := s.RotateToken(ctx(t), f.reg.Token, time.Hour, T0)
	if err != nil {
		t.Fatal(err)
	}
	if fresh.Token == f.reg.Token || fresh.App != f.reg.App || fresh.Device != f.device.ID || fresh.Sender != f.sender.ID || !fresh.Active() {
		t.Fatalf("rotated %+v", fresh)
	}
	msgs, _, err := s.Pending(ctx(t), f.device.ID, 0, 0, nil)
	if err != nil || len(msgs) != 2 || msgs[0].Token != fresh.Token || msgs[1].Token != fresh.Token {
		t.Errorf("queued messages after rotation: %+v, %v", msgs, err)
	}
	// The collapse key follows the message to its new token.
	enqueue(t, s, f.msgFor(fresh, "keyed-2", "k", time.Hour))
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"before", "keyed-2"}) {
		t.Errorf("pending %v, want [before keyed-2]", got)
	}
	if topics, _ := s.Topics(ctx(t), fresh.Token); !slices.Equal(topics, []string{"news"}) {
		t.Errorf("new token's topics %v", topics)
	}
	if topics, _ := s.Topics(ctx(t), f.reg.Token); len(topics) != 0 {
		t.Errorf("old token's topics %v", topics)
	}
	res, err := s.ResolveTokens(ctx(t), []string{f.reg.Token, fresh.Token}, T0.Add(time.Minute))
	if err != nil || res[0].Reg.Token != fresh.Token || !res[0].Canonical() || res[1].Canonical() {
		t.Errorf("within grace: %+v, %v", res, err)
	}
	if res, _ := s.ResolveTokens(ctx(t), []string{f.reg.Token}, T0.Add(time.Hour)); res[0].Reg.Token != "" || res[0].Given.ReplacedBy != fresh.Token {
		t.Errorf("after grace: %+v", res[0])
	}
	// A message sent to the old token within grace goes to the new one;
	// as given (the old token) it is not queued.
	if queued := enqueue(t, s, f.msg("to-old", "", time.Hour)); queued[0] {
		t.Error("message under the replaced token was queued as it is")
	}
	n := notices(t, s, f.device.ID)
	if len(n) != 1 || n[0].Kind != store.NoticeTokenRefresh || n[0].Token != fresh.Token || n[0].App != f.reg.App || n[0].Sender != f.sender.ID {
		t.Fatalf("notices %+v", n)
	}
	if reg, err := s.ActiveRegistration(ctx(t), f.device.ID, f.reg.App, f.sender.ID); err != nil || reg.Token != fresh.Token {
		t.Errorf("ActiveRegistration = %.8s, %v", reg.Token, err)
	}
	// Fan-out reaches the new token.
	fan := fanOutAll(t, s, store.TopicMessage{ID: "1", Sender: f.sender.ID, Topic: "news", Topics: []string{"news"}, Sent: T0, Expiry: T0.Add(time.Hour)}, 10, nil)
	if fan.Copies != 1 {
		t.Errorf("%d copies after rotation", fan.Copies)
	}
	ack(t, s, f.device.ID, n[0].ID)
	if left := notices(t, s, f.device.ID); len(left) != 0 {
		t.Errorf("notices after ack: %+v", left)
	}
	if _, err := s.RotateToken(ctx(t), "unknown", time.Hour, T0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("rotating an unknown token: %v", err)
	}
}

func testRotateTokenChain(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	second, err := s.RotateToken(ctx(t), f.reg.Token, time.Hour, T0)
	if err != nil {
		t.Fatal(err)
	}
	third, err := s.RotateToken(ctx(t), second.Token, 2*time.Hour, T0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	res, err := s.ResolveTokens(ctx(t), []string{f.reg.Token, second.Token, third.Token}, T0.Add(30*time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Reg.Token != third.Token || r.Canonical() != (i < 2) {
			t.Errorf("token %d resolves to %.8s canonical %v", i, r.Reg.Token, r.Canonical())
		}
	}
	// The first grace period ends before the second.
	res, _ = s.ResolveTokens(ctx(t), []string{f.reg.Token, second.Token}, T0.Add(90*time.Minute))
	if res[0].Reg.Token != "" || res[1].Reg.Token != third.Token {
		t.Errorf("after the first grace: %.8s %.8s", res[0].Reg.Token, res[1].Reg.Token)
	}
	// Only the last notice is pending: it carries the newest token.
	n := notices(t, s, f.device.ID)
	if len(n) != 1 || n[0].Token != third.Token || n[0].Kind != store.NoticeTokenRefresh {
		t.Errorf("notices %+v", n)
	}
	if _, err := s.RotateToken(ctx(t), f.reg.Token, time.Hour, T0); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("rotating a replaced token: %v", err)
	}
}

// testConcurrentWritesToOneDevice: sends, acks and registrations that
// reach one device at once, as from several app servers (and, on a
// cluster, several server processes), all take effect: none is lost to
// another.
func testConcurrentWritesToOneDevice(t *testing.T, h Harness) {
	s := h.Open(t)
	f := newFixture(t, s)
	const writers, each = 8, 10
	regs := make([]store.Registration, writers)
	for w := range regs {
		regs[w] = f.register(t, fmt.Sprint("com.example.w", w))
	}
	var wg sync.WaitGroup
	errs := make(chan error, writers*each)
	for w := range writers {
		wg.Go(func() {
			for i := range each {
				m := f.msgFor(regs[w], fmt.Sprintf("w%d-%d", w, i), "", time.Hour)
				if q, err := s.Enqueue(ctx(t), []store.Message{m}, nil); err != nil || !q[0] {
					errs <- fmt.Errorf("enqueue %s: %v %v", m.ID, q, err)
				}
				if i%2 == 1 {
					// Ack every other one of its own, as the device would.
					prev := fmt.Sprintf("w%d-%d", w, i-1)
					if n, _, err := s.Ack(ctx(t), f.device.ID, []string{prev}, T0); err != nil || n != 1 {
						errs <- fmt.Errorf("ack %s: %d %v", prev, n, err)
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	msgs, _, err := s.Pending(ctx(t), f.device.ID, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != writers*each/2 {
		t.Errorf("%d pending, want %d", len(msgs), writers*each/2)
	}
	seen := map[uint64]bool{}
	for i, m := range msgs {
		if seen[m.Seq] || i > 0 && m.Seq <= msgs[i-1].Seq {
			t.Errorf("seq %d out of order or repeated", m.Seq)
		}
		seen[m.Seq] = true
		var w, n int
		if _, err := fmt.Sscanf(m.ID, "w%d-%d", &w, &n); err != nil || n%2 == 0 {
			t.Errorf("pending %s: an acked message, or not one sent", m.ID)
		}
	}
}
