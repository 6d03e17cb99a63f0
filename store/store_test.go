// SPDX-License-Identifier: Apache-2.0

package store

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

var t0 = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func openTemp(t *testing.T) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "state", "agent.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func reopen(t *testing.T, s *Store, path string) *Store {
	t.Helper()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s2.Close() })
	return s2
}

func mustRegister(t *testing.T, s *Store, app, sender, token string, owner uint32) {
	t.Helper()
	if err := s.Register(Registration{App: app, Sender: sender, Token: token, Owner: owner}); err != nil {
		t.Fatal(err)
	}
}

func msg(id, app, from, token string, ttl time.Duration) Message {
	return Message{ID: id, App: app, From: from, Token: token, Data: map[string]string{"k": id},
		TTL: int64(ttl / time.Second), Received: t0, Expires: t0.Add(ttl)}
}

func inboxIDs(t *testing.T, s *Store, app string, after uint64, limit int, now time.Time) []string {
	t.Helper()
	msgs, err := s.Inbox(app, after, limit, now)
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	return ids
}

func TestOpenModes(t *testing.T) {
	_, path := openTemp(t)
	for _, c := range []struct {
		path string
		want os.FileMode
	}{{filepath.Dir(path), 0o700}, {path, 0o600}} {
		fi, err := os.Stat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != c.want {
			t.Errorf("%s: mode %o, want %o", c.path, got, c.want)
		}
	}
}

func TestOpenTightensExistingFile(t *testing.T) {
	s, path := openTemp(t)
	s.Close()
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("mode %o after reopen, want 600", fi.Mode().Perm())
	}
}

func TestReopenKeepsEverything(t *testing.T) {
	s, path := openTemp(t)
	creds := Credentials{Server: "wss://push.example/device/v1", DeviceID: "dev1", Secret: "s3cret"}
	if err := s.SetCredentials(creds); err != nil {
		t.Fatal(err)
	}
	mustRegister(t, s, "org.example.app", "111", "tok-a", 1000)
	if _, _, err := s.AddMessages([]Message{msg("m1", "org.example.app", "111", "tok-a", time.Hour)}, Quota{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddUpstream(Upstream{App: "org.example.app", To: "111", ID: "u1", TTL: 60, Created: t0, Expires: t0.Add(time.Minute)}, 20); err != nil {
		t.Fatal(err)
	}

	s = reopen(t, s, path)

	got, err := s.Credentials()
	if err != nil || got != creds {
		t.Errorf("credentials after reopen: %+v, %v", got, err)
	}
	if tok, err := s.Token("org.example.app", "111"); err != nil || tok != "tok-a" {
		t.Errorf("token after reopen: %q, %v", tok, err)
	}
	if uid, err := s.Owner("org.example.app"); err != nil || uid != 1000 {
		t.Errorf("owner after reopen: %d, %v", uid, err)
	}
	if ids := inboxIDs(t, s, "org.example.app", 0, 10, t0); !slices.Equal(ids, []string{"m1"}) {
		t.Errorf("inbox after reopen: %v", ids)
	}
	out, err := s.Outbox()
	if err != nil || len(out) != 1 || out[0].ID != "u1" {
		t.Errorf("outbox after reopen: %+v, %v", out, err)
	}
	// The seen set survives too: a redelivery is a duplicate.
	oc, _, err := s.AddMessages([]Message{msg("m1", "org.example.app", "111", "tok-a", time.Hour)}, Quota{})
	if err != nil || oc[0] != Duplicate {
		t.Errorf("redelivery after reopen: %v, %v", oc, err)
	}
}

func TestSecondOpenFails(t *testing.T) {
	_, path := openTemp(t)
	if s2, err := Open(path); err == nil {
		s2.Close()
		t.Fatal("second Open of a locked store succeeded")
	}
}

func TestCredentials(t *testing.T) {
	s, _ := openTemp(t)
	if _, err := s.Credentials(); !errors.Is(err, ErrNotFound) {
		t.Fatalf("credentials of a new store: %v, want ErrNotFound", err)
	}
	mustRegister(t, s, "app", "1", "tok", 1000)
	first := Credentials{Server: "ws://a/device/v1", DeviceID: "dev1", Secret: "x"}
	if err := s.SetCredentials(first); err != nil {
		t.Fatal(err)
	}
	// A new secret for the same device keeps registrations.
	if err := s.SetCredentials(Credentials{Server: first.Server, DeviceID: "dev1", Secret: "y"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Token("app", "1"); err != nil {
		t.Fatalf("token after secret change: %v", err)
	}
	// A new device ID or another server drops them, but the app stays
	// bound.
	for _, c := range []Credentials{
		{Server: first.Server, DeviceID: "dev2", Secret: "z"},
		{Server: "ws://b/device/v1", DeviceID: "dev2", Secret: "z"},
	} {
		mustRegister(t, s, "app", "1", "tok", 1000)
		if err := s.SetCredentials(c); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Token("app", "1"); !errors.Is(err, ErrNotFound) {
			t.Errorf("token after check-in as %s at %s: %v, want ErrNotFound", c.DeviceID, c.Server, err)
		}
		if uid, err := s.Owner("app"); err != nil || uid != 1000 {
			t.Errorf("owner after check-in as %s at %s: %d, %v", c.DeviceID, c.Server, uid, err)
		}
	}
	if err := s.SetCredentials(Credentials{DeviceID: "dev3"}); err == nil {
		t.Error("incomplete credentials accepted")
	}
}

// SetServer moves the device to other server URLs and keeps everything
// else: the secret, the registrations, held, seen and pending messages.
func TestSetServerKeepsTheDevice(t *testing.T) {
	s, path := openTemp(t)
	if err := s.SetServer("dev1", "ws://b/device/v1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("SetServer before any check-in: %v, want ErrNotFound", err)
	}
	creds := Credentials{Server: "ws://a/device/v1\nws://b/device/v1", DeviceID: "dev1", Secret: "x"}
	if err := s.SetCredentials(creds); err != nil {
		t.Fatal(err)
	}
	mustRegister(t, s, "app", "1", "tok", 1000)
	if _, _, err := s.AddMessages([]Message{msg("m1", "app", "1", "tok", time.Hour)}, Quota{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.AddUpstream(Upstream{App: "app", To: "1", ID: "u1", TTL: 60, Created: t0, Expires: t0.Add(time.Minute)}, 20); err != nil {
		t.Fatal(err)
	}

	for _, tt := range []struct {
		name, deviceID, server string
		err                    error // nil: any error
	}{
		{"another device", "dev2", "ws://c/device/v1", ErrNotFound},
		{"no server", "dev1", "", nil},
	} {
		err := s.SetServer(tt.deviceID, tt.server)
		if err == nil || (tt.err != nil && !errors.Is(err, tt.err)) {
			t.Errorf("%s: SetServer(%q, %q) = %v, want an error (%v)", tt.name, tt.deviceID, tt.server, err, tt.err)
		}
		if got, err := s.Credentials(); err != nil || got != creds {
			t.Errorf("%s: credentials %+v, %v; want them unchanged", tt.name, got, err)
		}
	}

	moved := Credentials{Server: "ws://c/device/v1\nws://d/device/v1", DeviceID: "dev1", Secret: "x"}
	if err := s.SetServer("dev1", moved.Server); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s, path)
	if got, err := s.Credentials(); err != nil || got != moved {
		t.Errorf("credentials after SetServer and reopen: %+v, %v; want %+v", got, err, moved)
	}
	if tok, err := s.Token("app", "1"); err != nil || tok != "tok" {
		t.Errorf("token after SetServer: %q, %v", tok, err)
	}
	if ids := inboxIDs(t, s, "app", 0, 10, t0); !slices.Equal(ids, []string{"m1"}) {
		t.Errorf("inbox after SetServer: %v", ids)
	}
	if out, err := s.Outbox(); err != nil || len(out) != 1 || out[0].ID != "u1" {
		t.Errorf("outbox after SetServer: %+v, %v", out, err)
	}
	if oc, _, err := s.AddMessages([]Message{msg("m1", "app", "1", "tok", time.Hour)}, Quota{}); err != nil || oc[0] != Duplicate {
		t.Errorf("redelivery after SetServer: %v, %v; want a duplicate", oc, err)
	}
}

func TestRegisterOwner(t *testing.T) {
	s, _ := openTemp(t)
	if _, err := s.Owner("app"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("owner of unknown app: %v", err)
	}
	mustRegister(t, s, "app", "1", "tok1", 1000)
	if err := s.Register(Registration{App: "app", Sender: "2", Token: "tok2", Owner: 1001}); !errors.Is(err, ErrOwned) {
		t.Fatalf("register by another owner: %v, want ErrOwned", err)
	}
	if _, err := s.Token("app", "2"); !errors.Is(err, ErrNotFound) {
		t.Errorf("refused registration was stored: %v", err)
	}
	mustRegister(t, s, "app", "2", "tok2", 1000)
	if tok, _ := s.Token("app", "2"); tok != "tok2" {
		t.Errorf("token %q", tok)
	}
}

func TestAddMessagesOutcomes(t *testing.T) {
	s, _ := openTemp(t)
	mustRegister(t, s, "app", "1", "tok", 1000)
	batch := []Message{
		msg("a", "app", "1", "tok", time.Hour),
		msg("a", "app", "1", "tok", time.Hour),     // repeated within the batch
		msg("b", "app", "1", "other", time.Hour),   // wrong token
		msg("c", "app", "2", "tok", time.Hour),     // unregistered sender
		msg("d", "unknown", "1", "tok", time.Hour), // unknown app
		msg("e", "app", "1", "tok", 2*time.Hour),
	}
	got, _, err := s.AddMessages(batch, Quota{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Outcome{Stored, Duplicate, NoRegistration, NoRegistration, NoRegistration, Stored}
	if !slices.Equal(got, want) {
		t.Fatalf("outcomes %v, want %v", got, want)
	}
	if batch[0].Seq == 0 || batch[5].Seq <= batch[0].Seq {
		t.Errorf("sequence numbers %d, %d", batch[0].Seq, batch[5].Seq)
	}
	// Every ID is now seen, held or not.
	again, _, err := s.AddMessages([]Message{msg("b", "app", "1", "tok", time.Hour), msg("e", "app", "1", "tok", time.Hour)}, Quota{})
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(again, []Outcome{Duplicate, Duplicate}) {
		t.Errorf("redelivery outcomes %v", again)
	}
	if ids := inboxIDs(t, s, "app", 0, 10, t0); !slices.Equal(ids, []string{"a", "e"}) {
		t.Errorf("inbox %v", ids)
	}
	m, _ := s.Inbox("app", 0, 1, t0)
	if m[0].Data["k"] != "a" || m[0].From != "1" || m[0].Token != "" {
		t.Errorf("held message %+v", m[0])
	}
}

// Fresh says which messages AddMessages stores, before it runs: one per
// message, in order, for batches that repeat IDs, miss registrations or
// bring messages seen before.
func TestFreshForetellsStored(t *testing.T) {
	s, _ := openTemp(t)
	mustRegister(t, s, "app", "1", "tok", 1000)
	tests := []struct {
		name  string
		batch []Message
	}{
		{"new, repeated and unregistered", []Message{
			msg("a", "app", "1", "tok", time.Hour),
			msg("a", "app", "1", "tok", time.Hour),
			msg("b", "app", "1", "other", time.Hour),
			msg("c", "app", "2", "tok", time.Hour),
			msg("d", "unknown", "1", "tok", time.Hour),
			msg("e", "app", "1", "tok", 2*time.Hour),
		}},
		{"seen before, and new", []Message{
			msg("a", "app", "1", "tok", time.Hour),
			msg("b", "app", "1", "tok", time.Hour),
			msg("f", "app", "1", "tok", time.Hour),
		}},
		{"empty", nil},
	}
	for _, tc := range tests {
		fresh, err := s.Fresh(tc.batch)
		if err != nil {
			t.Fatal(err)
		}
		outcomes, _, err := s.AddMessages(tc.batch, Quota{})
		if err != nil {
			t.Fatal(err)
		}
		for i, o := range outcomes {
			if fresh[i] != (o == Stored) {
				t.Errorf("%s: message %d (%s): fresh %v, then %v", tc.name, i, tc.batch[i].ID, fresh[i], o)
			}
		}
	}
}

// Commit stores messages and then applies acks in one transaction: an ack
// of a message stored in the same Commit removes it, one of a message held
// before removes that, one of another app's message or of an unknown ID
// changes nothing.
func TestCommitStoresThenAcks(t *testing.T) {
	tests := []struct {
		name      string
		held      []string // stored before, for "app"
		messages  []string // stored by the Commit, for "app"
		acks      map[string][]string
		wantInbox []string
	}{
		{"acks of what it stores", nil, []string{"a", "b"}, map[string][]string{"app": {"a"}}, []string{"b"}},
		{"acks of what was held", []string{"a"}, []string{"b"}, map[string][]string{"app": {"a"}}, []string{"b"}},
		{"another app's ack", nil, []string{"a"}, map[string][]string{"other": {"a"}}, []string{"a"}},
		{"unknown IDs", []string{"a"}, nil, map[string][]string{"app": {"x", "y"}}, []string{"a"}},
		{"messages alone", nil, []string{"a"}, nil, []string{"a"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := openTemp(t)
			mustRegister(t, s, "app", "1", "tok", 1000)
			mustRegister(t, s, "other", "1", "tok2", 1000)
			for _, id := range tt.held {
				if _, _, err := s.AddMessages([]Message{msg(id, "app", "1", "tok", time.Hour)}, Quota{}); err != nil {
					t.Fatal(err)
				}
			}
			var msgs []Message
			for _, id := range tt.messages {
				msgs = append(msgs, msg(id, "app", "1", "tok", time.Hour))
			}
			outcomes, _, err := s.Commit(Writes{Messages: msgs, Acks: tt.acks})
			if err != nil {
				t.Fatal(err)
			}
			if want := slices.Repeat([]Outcome{Stored}, len(msgs)); !slices.Equal(outcomes, want) {
				t.Errorf("outcomes %v, want %v", outcomes, want)
			}
			if ids := inboxIDs(t, s, "app", 0, 10, t0); !slices.Equal(ids, tt.wantInbox) {
				t.Errorf("inbox %v, want %v", ids, tt.wantInbox)
			}
		})
	}
}

func TestInboxCursorLimitExpiry(t *testing.T) {
	s, _ := openTemp(t)
	mustRegister(t, s, "app", "1", "tok", 1000)
	var batch []Message
	for i, ttl := range []time.Duration{time.Hour, time.Minute, time.Hour, time.Hour} {
		batch = append(batch, msg(string(rune('a'+i)), "app", "1", "tok", ttl))
	}
	if _, _, err := s.AddMessages(batch, Quota{}); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		after uint64
		limit int
		now   time.Time
		want  []string
	}{
		{0, 10, t0, []string{"a", "b", "c", "d"}},
		{0, 2, t0, []string{"a", "b"}},
		{batch[1].Seq, 10, t0, []string{"c", "d"}},
		{0, 10, t0.Add(time.Minute), []string{"a", "c", "d"}},
		{0, 2, t0.Add(time.Minute), []string{"a", "c"}},
		{batch[3].Seq, 10, t0, nil},
	}
	for _, tt := range tests {
		if got := inboxIDs(t, s, "app", tt.after, tt.limit, tt.now); !slices.Equal(got, tt.want) {
			t.Errorf("Inbox(after %d, limit %d, now+%v) = %v, want %v", tt.after, tt.limit, tt.now.Sub(t0), got, tt.want)
		}
	}
	if got := inboxIDs(t, s, "nope", 0, 10, t0); got != nil {
		t.Errorf("inbox of unknown app: %v", got)
	}
}

func TestAck(t *testing.T) {
	s, path := openTemp(t)
	mustRegister(t, s, "app", "1", "tok", 1000)
	mustRegister(t, s, "other", "1", "tok2", 1001)
	if _, _, err := s.AddMessages([]Message{
		msg("a", "app", "1", "tok", time.Hour),
		msg("b", "app", "1", "tok", time.Hour),
		msg("x", "other", "1", "tok2", time.Hour),
	}, Quota{}); err != nil {
		t.Fatal(err)
	}
	// Another app's ID and unknown IDs are skipped.
	n, err := s.Ack("app", []string{"a", "x", "zzz"})
	if err != nil || n != 1 {
		t.Fatalf("ack: %d, %v; want 1", n, err)
	}
	if n, _ := s.Ack("app", []string{"a"}); n != 0 {
		t.Errorf("second ack removed %d", n)
	}
	s = reopen(t, s, path)
	if ids := inboxIDs(t, s, "app", 0, 10, t0); !slices.Equal(ids, []string{"b"}) {
		t.Errorf("inbox of app after ack and reopen: %v", ids)
	}
	if ids := inboxIDs(t, s, "other", 0, 10, t0); !slices.Equal(ids, []string{"x"}) {
		t.Errorf("inbox of other: %v", ids)
	}
	// An acked message is still seen.
	if oc, _, _ := s.AddMessages([]Message{msg("a", "app", "1", "tok", time.Hour)}, Quota{}); oc[0] != Duplicate {
		t.Errorf("redelivery of acked message: %v", oc[0])
	}
}

func TestSweep(t *testing.T) {
	s, _ := openTemp(t)
	mustRegister(t, s, "app", "1", "tok", 1000)
	if _, _, err := s.AddMessages([]Message{
		msg("short", "app", "1", "tok", time.Minute),
		msg("acked", "app", "1", "tok", time.Minute),
		msg("long", "app", "1", "tok", time.Hour),
	}, Quota{}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Ack("app", []string{"acked"}); err != nil {
		t.Fatal(err)
	}
	next, ok, err := s.NextExpiry()
	if err != nil || !ok || !next.Equal(t0.Add(time.Minute)) {
		t.Fatalf("next expiry %v %v %v", next, ok, err)
	}
	swept, err := s.Sweep(t0.Add(30 * time.Second))
	if err != nil || len(swept) != 0 {
		t.Fatalf("early sweep: %v, %v", swept, err)
	}
	swept, err = s.Sweep(t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(swept["app"], []string{"short"}) {
		t.Errorf("swept %v, want only the unacked expired message", swept)
	}
	if n, _ := s.TakeDropped("app"); n != 1 {
		t.Errorf("dropped count %d, want 1", n)
	}
	if n, _ := s.TakeDropped("app"); n != 0 {
		t.Errorf("dropped count after take %d, want 0", n)
	}
	next, ok, _ = s.NextExpiry()
	if !ok || !next.Equal(t0.Add(time.Hour)) {
		t.Errorf("next expiry after sweep %v %v", next, ok)
	}
	// The expired IDs are forgotten: a (late) redelivery is new again.
	if oc, _, _ := s.AddMessages([]Message{msg("acked", "app", "1", "tok", time.Hour)}, Quota{}); oc[0] != Stored {
		t.Errorf("message after its seen entry expired: %v", oc[0])
	}
	st, err := s.Stats()
	if err != nil || st.Held != 2 || st.Apps != 1 {
		t.Errorf("stats %+v, %v", st, err)
	}
	// Once nothing is held, nothing is due, though the IDs are still seen.
	if _, err := s.Ack("app", []string{"long", "acked"}); err != nil {
		t.Fatal(err)
	}
	if next, ok, err := s.NextExpiry(); ok || err != nil {
		t.Errorf("next expiry with nothing held: %v %v %v", next, ok, err)
	}
	if oc, _, _ := s.AddMessages([]Message{msg("long", "app", "1", "tok", time.Hour)}, Quota{}); oc[0] != Duplicate {
		t.Errorf("acked message redelivered: %v", oc[0])
	}
}

func TestUnregisterDropsSendersMessages(t *testing.T) {
	s, _ := openTemp(t)
	mustRegister(t, s, "app", "1", "tok1", 1000)
	mustRegister(t, s, "app", "2", "tok2", 1000)
	if _, _, err := s.AddMessages([]Message{
		msg("a", "app", "1", "tok1", time.Hour),
		msg("b", "app", "2", "tok2", 2*time.Hour),
		msg("c", "app", "1", "tok1", time.Hour),
	}, Quota{}); err != nil {
		t.Fatal(err)
	}
	dropped, err := s.Unregister("app", "1")
	if err != nil || !slices.Equal(dropped, []string{"a", "c"}) {
		t.Fatalf("unregister: %v, %v", dropped, err)
	}
	if next, ok, _ := s.NextExpiry(); !ok || !next.Equal(t0.Add(2*time.Hour)) {
		t.Errorf("next expiry after unregister: %v %v, want the remaining message's", next, ok)
	}
	if ids := inboxIDs(t, s, "app", 0, 10, t0); !slices.Equal(ids, []string{"b"}) {
		t.Errorf("inbox %v", ids)
	}
	if _, err := s.Unregister("app", "1"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second unregister: %v", err)
	}
	if _, err := s.Owner("app"); err != nil {
		t.Errorf("owner after unregister: %v", err)
	}
	if oc, _, _ := s.AddMessages([]Message{msg("a", "app", "1", "tok1", time.Hour), msg("d", "app", "1", "tok1", time.Hour)}, Quota{}); !slices.Equal(oc, []Outcome{Duplicate, NoRegistration}) {
		t.Errorf("after unregister: %v", oc)
	}
}

func TestOutbox(t *testing.T) {
	s, _ := openTemp(t)
	up := func(app, id string, ttl time.Duration) Upstream {
		return Upstream{App: app, To: "1", ID: id, TTL: int64(ttl / time.Second), Created: t0, Expires: t0.Add(ttl)}
	}
	if _, err := s.AddUpstream(up("app", "x", time.Hour), 3); !errors.Is(err, ErrNotFound) {
		t.Fatalf("upstream for unknown app: %v", err)
	}
	mustRegister(t, s, "app", "1", "tok", 1000)
	mustRegister(t, s, "b", "1", "tok", 1000)
	for _, u := range []Upstream{up("app", "1", time.Hour), up("app", "2", time.Minute), up("app", "3", time.Hour), up("b", "1", time.Minute)} {
		if _, err := s.AddUpstream(u, 3); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.AddUpstream(up("app", "4", time.Hour), 3); !errors.Is(err, ErrOutboxFull) {
		t.Errorf("fourth of three: %v", err)
	}
	if _, err := s.AddUpstream(up("b", "1", time.Hour), 3); !errors.Is(err, ErrDuplicate) {
		t.Errorf("same ID twice: %v", err)
	}
	expired, err := s.ExpireUpstream(t0.Add(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, u := range expired {
		ids = append(ids, u.App+"/"+u.ID)
	}
	if !slices.Equal(ids, []string{"app/2", "b/1"}) {
		t.Errorf("expired %v", ids)
	}
	if u, err := s.RemoveUpstream("app", "3"); err != nil || u.ID != "3" || u.TTL != 3600 {
		t.Errorf("remove: %+v, %v", u, err)
	}
	if _, err := s.RemoveUpstream("app", "3"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second remove: %v", err)
	}
	out, _ := s.Outbox()
	if len(out) != 1 || out[0].ID != "1" {
		t.Errorf("outbox %+v", out)
	}
	if st, _ := s.Stats(); st.Pending != 1 || st.Apps != 2 {
		t.Errorf("stats %+v", st)
	}
}

// TestTimeMark follows the mark through the writes that carry a time: it
// only ever rises, a write that fails leaves it alone, and it outlives a
// reopen.
func TestTimeMark(t *testing.T) {
	s, path := openTemp(t)
	if mark, err := s.TimeMark(); err != nil || !mark.IsZero() {
		t.Fatalf("fresh store: mark %v, %v; want none", mark, err)
	}
	mustRegister(t, s, "app", "1", "tok", 1000)
	upstream := func(id string, created time.Time) Upstream {
		return Upstream{App: "app", To: "1", ID: id, TTL: 60, Created: created, Expires: created.Add(time.Minute)}
	}
	received := func(id string, at time.Time) Message {
		m := msg(id, "app", "1", "tok", time.Hour)
		m.Received, m.Expires = at, at.Add(time.Hour)
		return m
	}
	steps := []struct {
		name    string
		write   func(s *Store) error
		want    time.Time
		wantErr bool
	}{
		{"batch marks its latest receipt", func(s *Store) error {
			_, _, err := s.AddMessages([]Message{received("a", t0.Add(2*time.Second)), received("b", t0.Add(time.Second))}, Quota{})
			return err
		}, t0.Add(2 * time.Second), false},
		{"sweep", func(s *Store) error { _, err := s.Sweep(t0.Add(time.Minute)); return err }, t0.Add(time.Minute), false},
		{"upstream", func(s *Store) error { _, err := s.AddUpstream(upstream("u1", t0.Add(2*time.Minute)), 1); return err }, t0.Add(2 * time.Minute), false},
		{"refused upstream changes nothing", func(s *Store) error { _, err := s.AddUpstream(upstream("u2", t0.Add(time.Hour)), 1); return err }, t0.Add(2 * time.Minute), true},
		{"refused batch changes nothing", func(s *Store) error {
			_, _, err := s.AddMessages([]Message{received("c", t0.Add(time.Hour)), {App: "app", Received: t0.Add(time.Hour)}}, Quota{})
			return err
		}, t0.Add(2 * time.Minute), true},
		{"upstream expiry", func(s *Store) error { _, err := s.ExpireUpstream(t0.Add(3 * time.Minute)); return err }, t0.Add(3 * time.Minute), false},
		{"an earlier clock does not lower it", func(s *Store) error { _, err := s.Sweep(t0.Add(-time.Hour)); return err }, t0.Add(3 * time.Minute), false},
		{"a duplicate still marks its receipt", func(s *Store) error {
			_, _, err := s.AddMessages([]Message{received("a", t0.Add(4*time.Minute))}, Quota{})
			return err
		}, t0.Add(4 * time.Minute), false},
		{"a clock in 1970 does not lower it", func(s *Store) error {
			_, err := s.Sweep(time.Unix(42, 0))
			return err
		}, t0.Add(4 * time.Minute), false},
	}
	for _, st := range steps {
		if err := st.write(s); (err != nil) != st.wantErr {
			t.Fatalf("%s: error %v, want error %v", st.name, err, st.wantErr)
		}
		if mark, err := s.TimeMark(); err != nil || !mark.Equal(st.want) {
			t.Fatalf("%s: mark %v, %v; want %v", st.name, mark, err, st.want)
		}
	}
	s = reopen(t, s, path)
	if mark, err := s.TimeMark(); err != nil || !mark.Equal(t0.Add(4*time.Minute)) {
		t.Errorf("after reopen: mark %v, %v; want %v", mark, err, t0.Add(4*time.Minute))
	}
}
