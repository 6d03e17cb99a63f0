// SPDX-License-Identifier: Apache-2.0

package store

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

var ctx = context.Background()

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
	snd, err := s.AddSender(ctx, "thermo backend", "", hash("key"), t0)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := s.AddDevice(ctx, Device{SecretHash: hash("secret"), Created: t0})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := s.Register(ctx, dev.ID, "com.example.thermo", snd.ID, "", t0)
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
	queued, err := s.Enqueue(ctx, msgs, nil)
	if err != nil {
		t.Fatal(err)
	}
	return queued
}

func pendingIDs(t *testing.T, s *Store, device string) []string {
	t.Helper()
	msgs, _, err := s.Pending(ctx, device, 0, 0, nil)
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

func TestSweepExpired(t *testing.T) {
	s, _ := openTemp(t)
	f := newFixture(t, s)
	enqueue(t, s, f.msg("short", "k", time.Minute), f.msg("long", "", time.Hour))
	next, n, err := s.SweepExpired(ctx, t0.Add(30*time.Second))
	if err != nil || n != 0 || !next.Equal(t0.Add(time.Minute)) {
		t.Fatalf("early sweep = %v, %d, %v", next, n, err)
	}
	next, n, err = s.SweepExpired(ctx, t0.Add(time.Minute))
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
	next, n, err = s.SweepExpired(ctx, t0.Add(2*time.Hour))
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
			if reg, err = s.Register(ctx, f.device.ID, fmt.Sprintf("com.example.app%d", i), f.sender.ID, "", t0); err != nil {
				t.Fatal(err)
			}
		}
		m := f.msg(strings.Repeat("m", 1+i%5)+string(rune('a'+i%26))+time.Duration(i).String(), "", time.Minute)
		m.Token, m.App = reg.Token, reg.App
		msgs = append(msgs, m)
	}
	enqueue(t, s, msgs...)
	_, n, err := s.SweepExpired(ctx, t0.Add(time.Hour))
	if err != nil || n != len(msgs) {
		t.Fatalf("sweep = %d, %v; want %d", n, err, len(msgs))
	}
	if got := pendingIDs(t, s, f.device.ID); len(got) != 0 {
		t.Errorf("%d left", len(got))
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
		_, full = s.Enqueue(ctx, []Message{m}, nil)
	}
	if full == nil {
		t.Fatal("a 256 KiB store took 4 MB of messages")
	}
	// Reads still work and the store says what failed.
	if !strings.Contains(full.Error(), "enqueue") {
		t.Errorf("error %q does not say what was being done", full)
	}
	if _, _, err := s.Pending(ctx, f.device.ID, 0, 1, nil); err != nil {
		t.Errorf("read after full: %v", err)
	}
}

// TestOpenMovesVersion1: a store of schema version 1, from before devices
// were known to be seen, opens as the current version: each device counts
// as seen when the store moved, so that none is removed as stale for
// having been quiet before anyone watched, what version 2 added is there,
// and each sender has a webhook secret of its own (version 3).
func TestOpenMovesVersion1(t *testing.T) {
	path := filepath.Join(t.TempDir(), "server.db")
	s, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	dev, err := s.AddDevice(ctx, Device{SecretHash: hash("old"), Created: t0})
	if err != nil {
		t.Fatal(err)
	}
	var senders []Sender
	for _, key := range []string{"k1", "k2"} {
		snd, err := s.AddSender(ctx, "old "+key, "", hash(key), t0)
		if err != nil {
			t.Fatal(err)
		}
		senders = append(senders, snd)
	}
	// Back to what version 1 wrote: no last seen, no buckets of version 2,
	// no webhook secrets, version 1 in meta.
	err = s.db.Update(func(tx *bolt.Tx) error {
		dev.LastSeen = time.Time{}
		if err := put(tx.Bucket(bucketDevices), []byte(dev.ID), dev); err != nil {
			return err
		}
		for _, snd := range senders {
			snd.WebhookSecret = ""
			if err := put(tx.Bucket(bucketSenders), []byte(snd.ID), snd); err != nil {
				return err
			}
		}
		for _, b := range [][]byte{bucketCerts, bucketEnrollKeys, bucketEnrollHashes} {
			if err := tx.DeleteBucket(b); err != nil {
				return err
			}
		}
		return tx.Bucket(bucketMeta).Put([]byte("version"), be64(1))
	})
	s.Close()
	if err != nil {
		t.Fatal(err)
	}
	before := time.Now()
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Device(ctx, dev.ID)
	if err != nil || got.LastSeen.Before(before) {
		t.Errorf("device after the move: %+v, %v; want seen when it moved", got, err)
	}
	if _, err := s.AddEnrollKey(ctx, EnrollKey{Hash: hash("k"), Uses: 1, Created: t0}); err != nil {
		t.Errorf("an enrollment key in the moved store: %v", err)
	}
	moved, err := s.Senders(ctx)
	if err != nil || len(moved) != 2 {
		t.Fatalf("senders after the move: %v, %v", moved, err)
	}
	if a, b := moved[0].WebhookSecret, moved[1].WebhookSecret; !strings.HasPrefix(a, webhookSecretPrefix) || !strings.HasPrefix(b, webhookSecretPrefix) || a == b {
		t.Errorf("webhook secrets after the move: %q and %q, want two of their own", a, b)
	}
	var version uint64
	s.db.View(func(tx *bolt.Tx) error {
		version = binary.BigEndian.Uint64(tx.Bucket(bucketMeta).Get([]byte("version")))
		return nil
	})
	if version != schemaVersion {
		t.Errorf("schema version %d after the move, want %d", version, schemaVersion)
	}
	// A store of a later version is refused, not moved back.
	s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put([]byte("version"), be64(schemaVersion+1)) })
	s.Close()
	if _, err := Open(path, Options{}); err == nil || !strings.Contains(err.Error(), fmt.Sprintf("schema version %d", schemaVersion+1)) {
		t.Errorf("Open of a later version: %v", err)
	}
}

// recordingLive is a Live whose Offer looks at what the store shows
// others while the transaction that queues the offered message runs.
type recordingLive struct {
	t       *testing.T
	s       *Store
	offered []string
	visible []bool
}

func (r *recordingLive) Flowing(device, app string) []string { return nil }

func (r *recordingLive) Offer(m Message) {
	msgs, _, err := r.s.Pending(ctx, m.Device, 0, 0, nil)
	if err != nil {
		r.t.Error(err)
	}
	r.offered = append(r.offered, m.ID)
	r.visible = append(r.visible, slices.ContainsFunc(msgs, func(p Message) bool { return p.ID == m.ID }))
}

// Enqueue offers each queued message, with its Seq, before its commit,
// when readers do not see it yet; a message not queued is not offered.
func TestEnqueueOffersBeforeCommit(t *testing.T) {
	s, _ := openTemp(t)
	f := newFixture(t, s)
	live := &recordingLive{t: t, s: s}
	stale := f.msg("stale", "", time.Hour)
	stale.Token = "no-such-token"
	queued, err := s.Enqueue(ctx, []Message{f.msg("a", "", time.Hour), stale, f.msg("b", "", time.Hour)}, live)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(queued, []bool{true, false, true}) {
		t.Fatalf("queued %v", queued)
	}
	if !slices.Equal(live.offered, []string{"a", "b"}) || slices.Contains(live.visible, true) {
		t.Errorf("offered %v, visible to readers then %v; want a and b, before their commit", live.offered, live.visible)
	}
	if got := pendingIDs(t, s, f.device.ID); !slices.Equal(got, []string{"a", "b"}) {
		t.Errorf("pending after the commit %v", got)
	}
}

// Pending does not read the record of a message skip leaves out: a record
// it cannot decode fails the read, unless skipped.
func TestPendingSkipsUnread(t *testing.T) {
	s, _ := openTemp(t)
	f := newFixture(t, s)
	enqueue(t, s, f.msg("a", "", time.Hour), f.msg("b", "", time.Hour))
	err := s.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMsgs).Put([]byte("a"), []byte("not json")) })
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := s.Pending(ctx, f.device.ID, 0, 0, nil); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Pending of a broken record = %v, want ErrCorrupt", err)
	}
	msgs, last, err := s.Pending(ctx, f.device.ID, 0, 0, func(id string) bool { return id == "a" })
	if err != nil || len(msgs) != 1 || msgs[0].ID != "b" || last != msgs[0].Seq {
		t.Fatalf("Pending skipping the broken record = %+v, last %d, %v; want b, last its Seq", msgs, last, err)
	}
}
