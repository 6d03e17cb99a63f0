// SPDX-License-Identifier: Apache-2.0

package store

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// sized is a message for app whose record is size bytes, or the least
// it can be when that is smaller.
func sized(t *testing.T, id, app string, size int) Message {
	t.Helper()
	m := msg(id, app, "1", "tok-"+app, time.Hour)
	// Padding n bytes adds n, its key and their lengths; the second pass
	// corrects for the length of the padding's length.
	m.Data["pad"] = ""
	for range 2 {
		pad := max(len(m.Data["pad"])+size-int(recordSize(m)), 0)
		m.Data["pad"] = strings.Repeat("x", pad)
	}
	return m
}

func recordSize(m Message) int64 {
	return int64(len(encodeMessage(nil, &m)))
}

// The quota drops an app's oldest held messages to make room for its new
// ones, and, past the bound on all apps together, those of the app that
// holds the most; the dropped messages are counted for the app's
// deleted_messages and stay seen.
func TestQuotaDropsOldest(t *testing.T) {
	const kb = 1000
	tests := []struct {
		name string
		q    Quota
		// held are the messages stored before, one batch each, as
		// "app:id:size"; batch is stored last, in one call.
		held, batch []string
		// flowing are "app:id" of held messages the app's listener has.
		flowing []string
		// wantDropped is by app; wantInbox is what each app holds after.
		wantDropped map[string][]string
		wantInbox   map[string][]string
	}{
		{
			name:        "no quota",
			held:        []string{"a:1:1000", "a:2:1000"},
			batch:       []string{"a:3:1000"},
			wantDropped: map[string][]string{},
			wantInbox:   map[string][]string{"a": {"1", "2", "3"}},
		},
		{
			name:        "messages per app",
			q:           Quota{AppMessages: 2},
			held:        []string{"a:1:100", "a:2:100", "b:1:100", "b:2:100"},
			batch:       []string{"a:3:100"},
			wantDropped: map[string][]string{"a": {"1"}},
			wantInbox:   map[string][]string{"a": {"2", "3"}, "b": {"1", "2"}},
		},
		{
			name:        "bytes per app",
			q:           Quota{AppBytes: 3 * kb},
			held:        []string{"a:1:1000", "a:2:1000", "a:3:900", "b:1:2900"},
			batch:       []string{"a:4:1900"},
			wantDropped: map[string][]string{"a": {"1", "2"}},
			wantInbox:   map[string][]string{"a": {"3", "4"}, "b": {"1"}},
		},
		{
			name:        "a batch past the bound keeps its newest",
			q:           Quota{AppMessages: 2},
			batch:       []string{"a:1:100", "a:2:100", "a:3:100", "a:4:100", "b:1:100"},
			wantDropped: map[string][]string{"a": {"1", "2"}},
			wantInbox:   map[string][]string{"a": {"3", "4"}, "b": {"1"}},
		},
		{
			name:        "a message alone over the bound is kept",
			q:           Quota{AppBytes: 1 * kb},
			held:        []string{"a:1:500"},
			batch:       []string{"a:2:3000"},
			wantDropped: map[string][]string{"a": {"1"}},
			wantInbox:   map[string][]string{"a": {"2"}},
		},
		{
			name:        "the total: the app holding the most gives way",
			q:           Quota{AppBytes: 4 * kb, Bytes: 6 * kb},
			held:        []string{"a:1:1000", "a:2:1000", "a:3:1000", "a:4:1000", "b:1:1000"},
			batch:       []string{"b:2:1000", "c:1:1000"},
			wantDropped: map[string][]string{"a": {"1"}},
			wantInbox:   map[string][]string{"a": {"2", "3", "4"}, "b": {"1", "2"}, "c": {"1"}},
		},
		{
			name:        "what flows to the listener does not count",
			q:           Quota{AppMessages: 2},
			flowing:     []string{"a:1", "a:2"},
			held:        []string{"a:1:100", "a:2:100"},
			batch:       []string{"a:3:100", "a:4:100"},
			wantDropped: map[string][]string{},
			wantInbox:   map[string][]string{"a": {"1", "2", "3", "4"}},
		},
		{
			name:        "past the bound the oldest waiting goes, not what flows",
			q:           Quota{AppMessages: 2},
			flowing:     []string{"a:1"},
			held:        []string{"a:1:100", "a:2:100"},
			batch:       []string{"a:3:100", "a:4:100"},
			wantDropped: map[string][]string{"a": {"2"}},
			wantInbox:   map[string][]string{"a": {"1", "3", "4"}},
		},
		{
			name:        "the total: an app whose every message flows gives none",
			q:           Quota{Bytes: 3 * kb},
			flowing:     []string{"a:1", "a:2"},
			held:        []string{"a:1:1000", "a:2:1000", "b:1:500"},
			batch:       []string{"b:2:1000"},
			wantDropped: map[string][]string{"b": {"1"}},
			wantInbox:   map[string][]string{"a": {"1", "2"}, "b": {"2"}},
		},
		{
			name:        "the total: the app itself when it holds the most",
			q:           Quota{Bytes: 3 * kb},
			held:        []string{"a:1:1000", "a:2:1000", "b:1:900"},
			batch:       []string{"a:3:1000"},
			wantDropped: map[string][]string{"a": {"1"}},
			wantInbox:   map[string][]string{"a": {"2", "3"}, "b": {"1"}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, path := openTemp(t)
			for _, app := range []string{"a", "b", "c"} {
				mustRegister(t, s, app, "1", "tok-"+app, 1000)
			}
			if tt.flowing != nil {
				tt.q.Flowing = func(app string) []string {
					var ids []string
					for _, f := range tt.flowing {
						if a, id, _ := strings.Cut(f, ":"); a == app {
							ids = append(ids, a+id)
						}
					}
					return ids
				}
			}
			parse := func(spec string) Message {
				var app, id string
				var size int
				if _, err := fmt.Sscanf(strings.ReplaceAll(spec, ":", " "), "%s %s %d", &app, &id, &size); err != nil {
					t.Fatalf("spec %q: %v", spec, err)
				}
				return sized(t, app+id, app, size)
			}
			for _, spec := range tt.held {
				if _, dropped, err := s.AddMessages([]Message{parse(spec)}, tt.q); err != nil || len(dropped) != 0 {
					t.Fatalf("hold %s: dropped %v, %v", spec, dropped, err)
				}
			}
			var batch []Message
			for _, spec := range tt.batch {
				batch = append(batch, parse(spec))
			}
			outcomes, dropped, err := s.AddMessages(batch, tt.q)
			if err != nil {
				t.Fatal(err)
			}
			if want := slices.Repeat([]Outcome{Stored}, len(batch)); !slices.Equal(outcomes, want) {
				t.Errorf("outcomes %v, want %v", outcomes, want)
			}
			want := map[string][]string{}
			for app, ids := range tt.wantDropped {
				for _, id := range ids {
					want[app] = append(want[app], app+id)
				}
			}
			if !maps.EqualFunc(map[string][]string(dropped), want, slices.Equal) {
				t.Errorf("dropped %v, want %v", dropped, want)
			}
			// The counts survive a restart, as Open counts them afresh.
			s = reopen(t, s, path)
			for _, app := range []string{"a", "b", "c"} {
				var wantIDs []string
				for _, id := range tt.wantInbox[app] {
					wantIDs = append(wantIDs, app+id)
				}
				if ids := inboxIDs(t, s, app, 0, 100, t0); !slices.Equal(ids, wantIDs) {
					t.Errorf("app %s holds %v, want %v", app, ids, wantIDs)
				}
				if n, err := s.TakeDropped(app); err != nil || n != len(want[app]) {
					t.Errorf("app %s: %d dropped to tell, %v; want %d", app, n, err, len(want[app]))
				}
			}
			// Dropped messages are still seen: a redelivery is a duplicate.
			for app, ids := range want {
				for _, id := range ids {
					oc, _, err := s.AddMessages([]Message{msg(id, app, "1", "tok-"+app, time.Hour)}, tt.q)
					if err != nil || oc[0] != Duplicate {
						t.Errorf("redelivery of dropped %s: %v, %v", id, oc, err)
					}
				}
			}
		})
	}
}

// What an app holds is counted as messages leave by every way (ack,
// expiry, unregistration), so that the quota makes room only when the
// app really holds too much; and a count gone wrong is righted at Open.
func TestQuotaCountsWhatLeaves(t *testing.T) {
	s, path := openTemp(t)
	mustRegister(t, s, "a", "1", "tok-a", 1000)
	mustRegister(t, s, "a", "2", "tok-a2", 1000)
	q := Quota{AppMessages: 3}
	short := msg("short", "a", "1", "tok-a", time.Minute)
	other := msg("other", "a", "2", "tok-a2", time.Hour)
	for _, m := range []Message{sized(t, "acked", "a", 200), short, other} {
		if _, dropped, err := s.AddMessages([]Message{m}, q); err != nil || len(dropped) != 0 {
			t.Fatalf("hold %s: %v, %v", m.ID, dropped, err)
		}
	}
	want := func(step string, n, size int64) {
		t.Helper()
		var got usage
		err := s.db.View(func(tx *bolt.Tx) error {
			got = usageOf(appBucket(tx, "a"))
			return nil
		})
		if err != nil || got.n != n || got.bytes != size {
			t.Fatalf("%s: usage %+v, %v; want %d messages, %d bytes", step, got, err, n, size)
		}
	}
	want("held", 3, recordSize(sized(t, "acked", "a", 200))+recordSize(short)+recordSize(other))
	if _, err := s.Ack("a", []string{"acked"}); err != nil {
		t.Fatal(err)
	}
	want("acked", 2, recordSize(short)+recordSize(other))
	if _, err := s.Sweep(t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	want("swept", 1, recordSize(other))
	if _, err := s.Unregister("a", "2"); err != nil {
		t.Fatal(err)
	}
	want("unregistered", 0, 0)

	// Three fit again without a drop.
	for _, id := range []string{"x", "y", "z"} {
		if _, dropped, err := s.AddMessages([]Message{msg(id, "a", "1", "tok-a", time.Hour)}, q); err != nil || len(dropped) != 0 {
			t.Fatalf("hold %s after the others left: dropped %v, %v", id, dropped, err)
		}
	}
	// A wrong count, as a version that kept none would leave, is righted
	// at Open.
	err := s.db.Update(func(tx *bolt.Tx) error { return usage{n: 50, bytes: 1 << 30}.put(appBucket(tx, "a")) })
	if err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s, path)
	want("reopened", 3, 3*recordSize(msg("x", "a", "1", "tok-a", time.Hour)))
}
