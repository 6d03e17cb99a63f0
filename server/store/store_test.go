package store

import (
	"crypto/sha256"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var t0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "server.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func hash(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

// fixture is a sender and a device with one registration.
type fixture struct {
	sender Sender
	device Device
	reg    Registration
}

func newFixture(t *testing.T, s *Store) fixture {
	t.Helper()
	snd, err := s.AddSender("thermo backend", "", hash("key"), t0)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := s.AddDevice(hash("secret"), t0)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := s.Register(dev.ID, "com.example.thermo", snd.ID, t0)
	if err != nil {
		t.Fatal(err)
	}
	return fixture{snd, dev, reg}
}

func (f fixture) msg(id, collapse string, ttl time.Duration) Message {
	return Message{ID: id, Device: f.device.ID, Token: f.reg.Token, App: f.reg.App, Sender: f.sender.ID,
		CollapseKey: collapse, Data: map[string]string{"n": id}, Sent: t0, Expiry: t0.Add(ttl)}
}

func enqueue(t *testing.T, s *Store, msgs ...Message) []bool {
	t.Helper()
	queued, err := s.Enqueue(msgs)
	if err != nil {
		t.Fatal(err)
	}
	return queued
}

func pendingIDs(t *testing.T, s *Store, device string) []string {
	t.Helper()
	msgs, err := s.Pending(device, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	return ids
}

func TestOpenModeAndLock(t *testing.T) {
	s, path := openTemp(t)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %v, want 0600", fi.Mode().Perm())
	}
	start := time.Now()
	_, err = Open(path, Options{LockTimeout: 100 * time.Millisecond})
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("second open: %v, want ErrLocked", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("second open took %v", d)
	}
	s.Close()
	s2, err := Open(path, Options{})
	if err != nil {
		t.Fatalf("open after close: %v", err)
	}
	s2.Close()
}

func TestSenders(t *testing.T) {
	s, _ := openTemp(t)
	a, err := s.AddSender("a", "https://a.example/up", hash("ka"), t0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.AddSender("b", "", hash("kb"), t0)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.ID) != 12 || strings.Trim(a.ID, "0123456789") != "" || a.ID[0] == '0' {
		t.Errorf("sender ID %q is not 12 digits", a.ID)
	}
	if _, err := s.AddSender("c", "", hash("ka"), t0); err == nil {
		t.Error("second sender with the same key hash accepted")
	}
	got, err := s.SenderByKeyHash(hash("kb"))
	if err != nil || got.ID != b.ID {
		t.Errorf("SenderByKeyHash = %v, %v; want %s", got.ID, err, b.ID)
	}
	if _, err := s.SenderByKeyHash(hash("nope")); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown key: %v", err)
	}
	list, err := s.Senders()
	if err != nil || len(list) != 2 {
		t.Fatalf("Senders = %v, %v", list, err)
	}
	if err := s.RemoveSender(a.ID); err != nil {
		t.Fatal(err)
	}
	if err := s.RemoveSender(a.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
	if _, err := s.SenderByKeyHash(hash("ka")); !errors.Is(err, ErrNotFound) {
		t.Errorf("removed sender's key still works: %v", err)
	}
	if _, err := s.Sender(a.ID); !errors.Is(err, ErrNotFound) {
		t.Errorf("removed sender still there: %v", err)
	}
}

func TestRegisterUnregister(t *testing.T) {
	s, _ := openTemp(t)
	f := newFixture(t, s)
	if len(f.reg.Token) < 64 {
		t.Errorf("token of %d characters", len(f.reg.Token))
	}
	again, err := s.Register(f.device.ID, f.reg.App, f.sender.ID, t0.Add(time.Hour))
	if err != nil || again.Token != f.reg.Token {
		t.Fatalf("second register gave %v, %v; want the same token", again.Token == f.reg.Token, err)
	}
	other, err := s.Register(f.device.ID, "com.example.other", f.sender.ID, t0)
	if err != nil || other.Token == f.reg.Token {
		t.Fatalf("other app: same token or %v", err)
	}
	if _, err := s.Register(f.device.ID, f.reg.App, "999999999999", t0); !errors.Is(err, ErrNotFound) {
		t.Errorf("unknown sender: %v", err)
	}

	enqueue(t, s, f.msg("m1", "", time.Hour), Message{ID: "m2", Device: f.device.ID, Token: other.Token,
		App: other.App, Sender: f.sender.ID, Expiry: t0.Add(time.Hour)})
	dropped, err := s.Unregister(f.device.ID, f.reg.App, f.sender.ID, t0)
	if err != nil || dropped != 1 {
		t.Fatalf("Unregister = %d, %v; want 1 dropped", dropped, err)
	}
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"m2"}) {
		t.Errorf("after unregister pending %v, want [m2]", got)
	}
	if _, err := s.Unregister(f.device.ID, f.reg.App, f.sender.ID, t0); !errors.Is(err, ErrNotFound) {
		t.Errorf("second unregister: %v", err)
	}
	res, err := s.ResolveTokens([]string{f.reg.Token, "unknown", "", other.Token}, t0)
	if err != nil {
		t.Fatal(err)
	}
	if res[0].Given.Token != f.reg.Token || res[0].Given.Active() || res[0].Reg.Token != "" {
		t.Errorf("unregistered token: %+v", res[0])
	}
	if res[1].Given.Token != "" || res[2].Given.Token != "" || !res[3].Reg.Active() || res[3].Canonical() {
		t.Errorf("lookups: %+v", res)
	}
	if queued := enqueue(t, s, f.msg("m3", "", time.Hour)); queued[0] {
		t.Error("message to an unregistered token was queued")
	}
	fresh, err := s.Register(f.device.ID, f.reg.App, f.sender.ID, t0)
	if err != nil || fresh.Token == f.reg.Token {
		t.Errorf("register after unregister: same token or %v", err)
	}
}

func TestQueueSurvivesReopen(t *testing.T) {
	s, path := openTemp(t)
	f := newFixture(t, s)
	enqueue(t, s, f.msg("m1", "", time.Hour), f.msg("m2", "", time.Hour))
	s.Close()
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	msgs, err := s.Pending(f.device.ID, 0, 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 2 || msgs[0].ID != "m1" || msgs[1].Data["n"] != "m2" || !msgs[1].Expiry.Equal(t0.Add(time.Hour)) {
		t.Fatalf("after reopen: %+v", msgs)
	}
	if _, err := s.Sender(f.sender.ID); err != nil {
		t.Error(err)
	}
	if reg, err := s.ActiveRegistration(f.device.ID, f.reg.App, f.sender.ID); err != nil || reg.Token != f.reg.Token {
		t.Errorf("registration after reopen: %v", err)
	}
}

func TestPendingAfterAndLimit(t *testing.T) {
	s, _ := openTemp(t)
	f := newFixture(t, s)
	enqueue(t, s, f.msg("a", "", time.Hour), f.msg("b", "", time.Hour), f.msg("c", "", time.Hour))
	first, err := s.Pending(f.device.ID, 0, 2)
	if err != nil || len(first) != 2 {
		t.Fatalf("Pending limit 2 = %d, %v", len(first), err)
	}
	rest, err := s.Pending(f.device.ID, first[1].Seq, 10)
	if err != nil || len(rest) != 1 || rest[0].ID != "c" {
		t.Fatalf("Pending after %d = %+v, %v", first[1].Seq, rest, err)
	}
	// Another device's queue is separate.
	dev2, _ := s.AddDevice(hash("s2"), t0)
	if got := pendingIDs(t, s, dev2.ID); len(got) != 0 {
		t.Errorf("other device sees %v", got)
	}
}

func TestCollapse(t *testing.T) {
	s, _ := openTemp(t)
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
	if n, _, err := s.Ack(f.device.ID, []string{"x2"}, t0); err != nil || n != 1 {
		t.Fatalf("Ack = %d, %v", n, err)
	}
	enqueue(t, s, f.msg("y", "temp", time.Hour))
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"keep", "other", "y"}) {
		t.Errorf("pending %v, want [keep other y]", got)
	}
}

func TestAckOnlyOwnMessages(t *testing.T) {
	s, _ := openTemp(t)
	f := newFixture(t, s)
	enqueue(t, s, f.msg("m1", "", time.Hour), f.msg("m2", "", time.Hour))
	n, _, err := s.Ack("someoneelse", []string{"m1"}, t0)
	if err != nil || n != 0 {
		t.Fatalf("foreign ack = %d, %v", n, err)
	}
	n, _, err = s.Ack(f.device.ID, []string{"m1", "m1", "nope"}, t0)
	if err != nil || n != 1 {
		t.Fatalf("ack = %d, %v", n, err)
	}
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"m2"}) {
		t.Errorf("pending %v", got)
	}
}

func TestSweepExpired(t *testing.T) {
	s, _ := openTemp(t)
	f := newFixture(t, s)
	enqueue(t, s, f.msg("short", "k", time.Minute), f.msg("long", "", time.Hour))
	next, n, err := s.SweepExpired(t0.Add(30 * time.Second))
	if err != nil || n != 0 || !next.Equal(t0.Add(time.Minute)) {
		t.Fatalf("early sweep = %v, %d, %v", next, n, err)
	}
	next, n, err = s.SweepExpired(t0.Add(time.Minute))
	if err != nil || n != 1 || !next.Equal(t0.Add(time.Hour)) {
		t.Fatalf("sweep = %v, %d, %v", next, n, err)
	}
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"long"}) {
		t.Errorf("pending %v", got)
	}
	// The collapse entry went with it: a new message with that key is simply added.
	enqueue(t, s, f.msg("again", "k", time.Hour))
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"long", "again"}) {
		t.Errorf("pending %v", got)
	}
	next, n, err = s.SweepExpired(t0.Add(2 * time.Hour))
	if err != nil || n != 2 || !next.IsZero() {
		t.Fatalf("final sweep = %v, %d, %v", next, n, err)
	}
}

func TestSweepManyInBatches(t *testing.T) {
	s, _ := openTemp(t)
	f := newFixture(t, s)
	var msgs []Message
	reg := f.reg
	for i := range sweepBatch + 10 {
		// Spread over apps: each app may keep MaxPendingPerApp.
		if i > 0 && i%MaxPendingPerApp == 0 {
			var err error
			if reg, err = s.Register(f.device.ID, fmt.Sprintf("com.example.app%d", i), f.sender.ID, t0); err != nil {
				t.Fatal(err)
			}
		}
		m := f.msg(strings.Repeat("m", 1+i%5)+string(rune('a'+i%26))+time.Duration(i).String(), "", time.Minute)
		m.Token, m.App = reg.Token, reg.App
		msgs = append(msgs, m)
	}
	enqueue(t, s, msgs...)
	_, n, err := s.SweepExpired(t0.Add(time.Hour))
	if err != nil || n != len(msgs) {
		t.Fatalf("sweep = %d, %v; want %d", n, err, len(msgs))
	}
	if got := pendingIDs(t, s, f.device.ID); len(got) != 0 {
		t.Errorf("%d left", len(got))
	}
}

func TestUpstreamDedupe(t *testing.T) {
	s, path := openTemp(t)
	f := newFixture(t, s)
	up := func(id string, at time.Time) PutOutcome {
		t.Helper()
		u := Upstream{Device: f.device.ID, App: f.reg.App, Sender: f.sender.ID, ID: id, TTL: 60,
			Received: at, Expiry: at.Add(time.Minute), Data: map[string]string{"k": "v"}}
		out, err := s.PutUpstream(&u, at.Add(time.Minute))
		if err != nil {
			t.Fatal(err)
		}
		if out == UpstreamQueued && u.Token != f.reg.Token {
			t.Errorf("queued upstream has token %v", u.Token == f.reg.Token)
		}
		return out
	}
	if got := up("u1", t0); got != UpstreamQueued {
		t.Fatalf("first: %v", got)
	}
	if got := up("u1", t0.Add(30*time.Second)); got != UpstreamDuplicate {
		t.Fatalf("repeat within TTL: %v", got)
	}
	if got := up("u2", t0); got != UpstreamQueued {
		t.Fatalf("other id: %v", got)
	}
	// After the TTL the same ID is a new message, even before a sweep.
	if got := up("u1", t0.Add(2*time.Minute)); got != UpstreamQueued {
		t.Fatalf("repeat after TTL: %v", got)
	}
	// The sweep of the first sighting must not forget the renewed one.
	if _, _, err := s.SweepExpired(t0.Add(90 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if got := up("u1", t0.Add(150*time.Second)); got != UpstreamDuplicate {
		t.Fatalf("repeat of renewed sighting: %v", got)
	}

	var seqs []uint64
	s.EachUpstream(func(u Upstream) error { seqs = append(seqs, u.Seq); return nil })
	if len(seqs) != 3 {
		t.Fatalf("%d queued, want 3", len(seqs))
	}
	if err := s.DeleteUpstream(seqs[0]); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Upstream(seqs[0]); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted upstream: %v", err)
	}
	s.Close()
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	u, err := s.Upstream(seqs[1])
	if err != nil || u.ID != "u2" || u.Data["k"] != "v" || u.Token != f.reg.Token {
		t.Fatalf("after reopen: %+v, %v", u, err)
	}

	if _, err := s.Unregister(f.device.ID, f.reg.App, f.sender.ID, t0); err != nil {
		t.Fatal(err)
	}
	nu := Upstream{Device: f.device.ID, App: f.reg.App, Sender: f.sender.ID, ID: "u9", Received: t0}
	if out, err := s.PutUpstream(&nu, t0.Add(time.Minute)); err != nil || out != UpstreamNotRegistered {
		t.Errorf("unregistered app: %v, %v", out, err)
	}
}

func TestMaxSize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server.db")
	s, err := Open(path, Options{MaxSize: 256 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	f := newFixture(t, s)
	big := strings.Repeat("x", 4000)
	var full error
	for i := 0; i < 1000 && full == nil; i++ {
		m := f.msg(time.Duration(i).String(), "", time.Hour)
		m.Data = map[string]string{"v": big}
		_, full = s.Enqueue([]Message{m})
	}
	if full == nil {
		t.Fatal("a 256 KiB store took 4 MB of messages")
	}
	// Reads still work and the store says what failed.
	if !strings.Contains(full.Error(), "enqueue") {
		t.Errorf("error %q does not say what was being done", full)
	}
	if _, err := s.Pending(f.device.ID, 0, 1); err != nil {
		t.Errorf("read after full: %v", err)
	}
}
