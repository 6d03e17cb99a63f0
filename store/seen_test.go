// SPDX-License-Identifier: Apache-2.0

package store

import (
	"fmt"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// step is one commit of a seen-IDs test: messages to store and IDs the
// app acks, then a look at which IDs a redelivery would find seen.
type step struct {
	add     []string // IDs of messages for the registered app
	noReg   []string // IDs of messages for a token no app has
	ack     []string
	sweepAt time.Duration // when above zero, a sweep at t0 plus this first
	reopen  bool          // close and open the file again before the commit
}

func TestSeenIDsBound(t *testing.T) {
	const app, sender, token = "org.example.app", "111", "tok-a"
	ids := func(prefix string, from, to int) []string {
		var out []string
		for i := from; i <= to; i++ {
			out = append(out, fmt.Sprintf("%s%02d", prefix, i))
		}
		return out
	}
	// acked stores messages m<from> to m<to> and acks them in one commit.
	acked := func(from, to int) step { return step{add: ids("m", from, to), ack: ids("m", from, to)} }
	for _, c := range []struct {
		name  string
		limit int
		steps []step
		// seen are the IDs a redelivery finds seen at the end, gone
		// those it does not.
		seen, gone []string
		// arrivals is how many arrivals are listed at the end.
		arrivals int
	}{
		{
			name:  "acked IDs beyond the bound go, oldest first",
			limit: 3,
			steps: []step{
				acked(1, 2),
				acked(3, 5),
			},
			seen:     ids("m", 3, 5),
			gone:     ids("m", 1, 2),
			arrivals: 3,
		},
		{
			name:  "an ID acked inside the bound is still a duplicate",
			limit: 100,
			steps: []step{
				acked(1, 50),
				acked(51, 60),
			},
			seen:     ids("m", 1, 60),
			arrivals: 60,
		},
		{
			name:  "held messages keep their IDs past the bound, and can still be acked",
			limit: 2,
			steps: []step{
				{add: []string{"h1"}},
				acked(1, 4),
				acked(5, 6),
			},
			seen:     []string{"h1", "m05", "m06"},
			gone:     ids("m", 1, 4),
			arrivals: 3,
		},
		{
			name:  "a held message acked late goes once newer ones arrived",
			limit: 2,
			steps: []step{
				{add: []string{"h1"}},
				acked(1, 3),
				{ack: []string{"h1"}},
				acked(4, 6),
			},
			seen:     ids("m", 5, 6),
			gone:     []string{"h1", "m01", "m02", "m03", "m04"},
			arrivals: 2,
		},
		{
			name:  "IDs of messages for no registration count as not held",
			limit: 2,
			steps: []step{
				{noReg: ids("x", 1, 3)},
				{add: []string{"m1"}, ack: []string{"m1"}},
			},
			seen:     []string{"x03", "m1"},
			gone:     ids("x", 1, 2),
			arrivals: 2,
		},
		{
			name:  "an ID swept at the end of its time to live leaves its arrival to the next trim",
			limit: 2,
			steps: []step{
				acked(1, 2),
				{add: ids("m", 3, 3), ack: ids("m", 3, 3), sweepAt: 2 * time.Hour},
			},
			seen:     []string{"m03"},
			gone:     ids("m", 1, 2),
			arrivals: 2,
		},
		{
			name:  "the bound holds across a reopen of the file",
			limit: 2,
			steps: []step{
				acked(1, 2),
				{add: ids("m", 3, 3), ack: ids("m", 3, 3), reopen: true},
			},
			seen:     ids("m", 2, 3),
			gone:     ids("m", 1, 1),
			arrivals: 2,
		},
		{
			name:  "no bound keeps every ID until its time to live",
			limit: 0,
			steps: []step{
				acked(1, 5),
			},
			seen: ids("m", 1, 5),
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			s, path := openTemp(t)
			mustRegister(t, s, app, sender, token, 1000)
			// The first commit's messages live an hour, so that a sweep
			// two hours on takes them; later ones live a day.
			for i, st := range c.steps {
				if st.reopen {
					s = reopen(t, s, path)
				}
				if st.sweepAt > 0 {
					if _, err := s.Sweep(t0.Add(st.sweepAt)); err != nil {
						t.Fatal(err)
					}
				}
				ttl := 24 * time.Hour
				if i == 0 {
					ttl = time.Hour
				}
				w := Writes{SeenIDs: c.limit, Acks: map[string][]string{}}
				for _, id := range st.add {
					w.Messages = append(w.Messages, msg(id, app, sender, token, ttl))
				}
				for _, id := range st.noReg {
					w.Messages = append(w.Messages, msg(id, app, sender, "tok-gone", ttl))
				}
				if len(st.ack) > 0 {
					w.Acks[app] = st.ack
				}
				if _, _, err := s.Commit(w); err != nil {
					t.Fatalf("step %d: %v", i, err)
				}
			}
			if held := inboxIDs(t, s, app, 0, 100, t0); slices.Contains(held, "h1") && !slices.Contains(c.seen, "h1") {
				t.Errorf("h1 still held: %v", held)
			}
			redeliver := func(id string) Outcome {
				t.Helper()
				m := msg(id, app, sender, token, time.Hour)
				out, _, err := s.Commit(Writes{Messages: []Message{m}})
				if err != nil {
					t.Fatal(err)
				}
				return out[0]
			}
			// Count the arrivals before the redeliveries add to them.
			if got := countKeys(t, s, bucketArrivals); c.limit > 0 && got != c.arrivals {
				t.Errorf("%d arrivals listed, want %d", got, c.arrivals)
			}
			if seen, index := countKeys(t, s, bucketSeen), countKeys(t, s, bucketExpiry); seen != index {
				t.Errorf("%d seen IDs but %d in the expiry index", seen, index)
			}
			for _, id := range c.seen {
				if got := redeliver(id); got != Duplicate {
					t.Errorf("redelivery of %s: %v, want a duplicate", id, got)
				}
			}
			for _, id := range c.gone {
				if got := redeliver(id); got != Stored {
					t.Errorf("redelivery of %s: %v, want it stored anew", id, got)
				}
			}
		})
	}
}

// TestSeenIDsAckOfHeldAfterTrim checks that a held message whose arrival
// went to the back of the list is acked as any other: its window room is
// freed and its record goes.
func TestSeenIDsAckOfHeldAfterTrim(t *testing.T) {
	const app, sender, token = "org.example.app", "111", "tok-a"
	s, _ := openTemp(t)
	mustRegister(t, s, app, sender, token, 1000)
	commit := func(w Writes) {
		t.Helper()
		w.SeenIDs = 1
		if _, _, err := s.Commit(w); err != nil {
			t.Fatal(err)
		}
	}
	commit(Writes{Messages: []Message{msg("h1", app, sender, token, time.Hour)}})
	for i := range 5 {
		id := fmt.Sprintf("m%d", i)
		commit(Writes{Messages: []Message{msg(id, app, sender, token, time.Hour)}, Acks: map[string][]string{app: {id}}})
	}
	if held := inboxIDs(t, s, app, 0, 10, t0); !slices.Equal(held, []string{"h1"}) {
		t.Fatalf("held %v, want h1 alone", held)
	}
	if n, err := s.Ack(app, []string{"h1"}); err != nil || n != 1 {
		t.Fatalf("ack of h1: %d, %v; want 1 removed", n, err)
	}
	if held := inboxIDs(t, s, app, 0, 10, t0); len(held) != 0 {
		t.Errorf("held %v after the ack, want none", held)
	}
}

func countKeys(t *testing.T, s *Store, bucket []byte) int {
	t.Helper()
	n := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucket).ForEach(func(_, _ []byte) error { n++; return nil })
	})
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// BenchmarkCommitSeen stores messages in batches, as the agent's session
// does, and acks each batch in the next commit, with the seen IDs bounded
// and not: the CPU that trimming costs per message, without the fsync that
// outweighs it on a real commit.
func BenchmarkCommitSeen(b *testing.B) {
	const app, sender, token, batch = "org.example.app", "111", "tok-a", 20
	for _, limit := range []int{0, 1000} {
		b.Run(fmt.Sprintf("SeenIDs=%d", limit), func(b *testing.B) {
			s, err := Open(b.TempDir() + "/agent.db")
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			s.db.NoSync = true
			if err := s.Register(Registration{App: app, Sender: sender, Token: token, Owner: 1000}); err != nil {
				b.Fatal(err)
			}
			var prev []string
			n := 0
			for b.Loop() {
				w := Writes{SeenIDs: limit, Acks: map[string][]string{app: prev}}
				prev = nil
				for range batch {
					id := fmt.Sprintf("0:%d%%7c8a2b0c", n)
					n++
					w.Messages = append(w.Messages, msg(id, app, sender, token, 28*24*time.Hour))
					prev = append(prev, id)
				}
				if _, _, err := s.Commit(w); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(n), "ns/msg")
		})
	}
}
