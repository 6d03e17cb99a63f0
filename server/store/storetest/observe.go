// SPDX-License-Identifier: Apache-2.0

package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"tether/server/store"
)

// Recorder is a store.Observer that keeps what it is told.
type Recorder struct {
	mu      sync.Mutex
	commits int
	drops   map[store.DropReason]int
}

func (r *Recorder) Committed(time.Duration) {
	r.mu.Lock()
	r.commits++
	r.mu.Unlock()
}

func (r *Recorder) Dropped(reason store.DropReason, n int) {
	r.mu.Lock()
	if r.drops == nil {
		r.drops = map[store.DropReason]int{}
	}
	r.drops[reason] += n
	r.mu.Unlock()
}

// take returns the drops told since the last take and forgets them, and
// the commits told so far.
func (r *Recorder) take() (map[store.DropReason]int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	d := r.drops
	r.drops = nil
	return d, r.commits
}

// testObserved: the observer hears of each rule that drops queued
// messages, by reason and count, and of commits.
func testObserved(t *testing.T, h Harness) {
	if h.OpenObserved == nil {
		t.Skip("the harness opens no observed backend")
	}
	for _, tc := range []struct {
		name  string
		queue func(t *testing.T, f *fixture) // does what drops messages
		want  map[store.DropReason]int
	}{
		{"collapse", func(t *testing.T, f *fixture) {
			enqueue(t, f.s, f.msg("a", "k", time.Hour))
			enqueue(t, f.s, f.msg("b", "k", time.Hour))
		}, map[store.DropReason]int{store.DropCollapsed: 1}},
		{"collapse keys capped", func(t *testing.T, f *fixture) {
			for i := range store.MaxCollapseKeysPerApp + 1 {
				enqueue(t, f.s, f.msg(fmt.Sprint("m", i), fmt.Sprint("k", i), time.Hour))
			}
		}, map[store.DropReason]int{store.DropCap: 1}},
		{"plain messages capped", func(t *testing.T, f *fixture) {
			msgs := make([]store.Message, store.MaxPendingPerApp+1)
			for i := range msgs {
				msgs[i] = f.msg(fmt.Sprint("p", i), "", time.Hour)
			}
			enqueue(t, f.s, msgs[:store.MaxPendingPerApp]...)
			enqueue(t, f.s, msgs[store.MaxPendingPerApp])
		}, map[store.DropReason]int{store.DropCap: store.MaxPendingPerApp}},
		{"expired", func(t *testing.T, f *fixture) {
			enqueue(t, f.s, f.msg("short", "", time.Minute), f.msg("long", "", 2*time.Hour))
			// A backend that sweeps drops it then; one that drops
			// expired entries at the device's next change, then.
			if sw, ok := f.s.(store.Sweeper); ok {
				if _, _, err := sw.SweepExpired(ctx(t), T0.Add(time.Hour)); err != nil {
					t.Fatal(err)
				}
			}
			later := f.msg("later", "", time.Hour)
			later.Sent, later.Expiry = T0.Add(time.Hour), T0.Add(2*time.Hour)
			enqueue(t, f.s, later)
		}, map[store.DropReason]int{store.DropExpired: 1}},
		{"nothing dropped", func(t *testing.T, f *fixture) {
			enqueue(t, f.s, f.msg("a", "k", time.Hour), f.msg("b", "", time.Hour))
		}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &Recorder{}
			f := newFixture(t, h.OpenObserved(t, rec))
			_, before := rec.take()
			tc.queue(t, f)
			drops, commits := rec.take()
			if fmt.Sprint(drops) != fmt.Sprint(tc.want) {
				t.Errorf("drops %v, want %v", drops, tc.want)
			}
			if commits <= before {
				t.Errorf("%d commits told before the case, %d after", before, commits)
			}
		})
	}
}

// statsReader is a backend that reports store.Stats.
type statsReader interface {
	Stats(ctx context.Context) (store.Stats, error)
}

// testStats: a backend's stats see a queued message come and go.
func testStats(t *testing.T, h Harness) {
	s := h.Open(t)
	sr, ok := s.(statsReader)
	if !ok {
		t.Skip("the backend reports no stats")
	}
	f := newFixture(t, s)
	read := func() store.Stats {
		t.Helper()
		st, err := sr.Stats(ctx(t))
		if err != nil {
			t.Fatal(err)
		}
		if st.Bytes <= 0 || st.Free > st.Bytes {
			t.Errorf("stats: %d bytes, %d of them free", st.Bytes, st.Free)
		}
		return st
	}
	for _, step := range []struct {
		name   string
		do     func()
		queued int
	}{
		{"empty", func() {}, 0},
		{"queued", func() { enqueue(t, s, f.msg("m1", "", time.Hour)) }, 1},
		{"acked", func() {
			if _, _, err := s.Ack(ctx(t), f.device.ID, []string{"m1"}, T0); err != nil {
				t.Fatal(err)
			}
		}, 0},
	} {
		step.do()
		st := read()
		if st.Messages >= 0 && st.Messages != step.queued {
			t.Errorf("%s: %d messages queued, want %d", step.name, st.Messages, step.queued)
		}
		if st.Oldest.IsZero() != (step.queued == 0) {
			t.Errorf("%s: oldest queued message sent at %v with %d queued", step.name, st.Oldest, step.queued)
		}
	}
}
