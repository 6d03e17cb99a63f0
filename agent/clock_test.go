// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"tether/ipc"
	"tether/store"
	"tether/wire"
)

// steppedClock stands in for the system's clocks: the test lets time pass
// and steps the wall clock by hand.
type steppedClock struct {
	mu      sync.Mutex
	wall    time.Time
	elapsed time.Duration
}

func (c *steppedClock) source() clockSource {
	return clockSource{
		wall: func() time.Time {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.wall
		},
		elapsed: func() time.Duration {
			c.mu.Lock()
			defer c.mu.Unlock()
			return c.elapsed
		},
	}
}

// pass lets d of real time go by.
func (c *steppedClock) pass(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wall = c.wall.Add(d)
	c.elapsed += d
}

// step moves the wall clock alone, as NTP or an operator does.
func (c *steppedClock) step(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wall = c.wall.Add(d)
}

// reboot starts the system over with its wall clock at wall; the monotonic
// reading starts over too.
func (c *steppedClock) reboot(wall time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.wall, c.elapsed = wall, 3*time.Second
}

// agentClock makes newDevice give the agent the clock New would give it,
// reading c instead of the system's clocks.
func (c *steppedClock) agentClock(t *testing.T) func(*Config) {
	return func(cfg *Config) {
		clock, err := openClock(cfg.Store, c.source(), cfg.Logger)
		if err != nil {
			t.Fatal(err)
		}
		cfg.Now = clock.Now
	}
}

const (
	week      = 7 * 24 * time.Hour
	fiftyFive = 55 * 365 * 24 * time.Hour // years, as NTP steps a clock that booted in 1970
)

func TestStartTime(t *testing.T) {
	rtc := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	boot := time.Unix(42, 0) // a device without a real-time clock, just booted
	sane := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
	tests := []struct {
		name       string
		wall, mark time.Time
		want       time.Time
	}{
		{"first run, clock set", rtc, time.Time{}, rtc},
		{"first run, no clock", boot, time.Time{}, boot},
		{"powered off three weeks", rtc.Add(3 * week), rtc, rtc.Add(3 * week)},
		{"restarted at once", rtc, rtc, rtc},
		{"clock lost, booted in 1970", boot, rtc, rtc},
		{"clock set back a year", rtc.AddDate(-1, 0, 0), rtc, rtc},
		{"last run had no clock, this one has", rtc, boot.Add(week), boot.Add(week)},
		{"no clock again, wall behind the mark", boot, boot.Add(week), boot.Add(week)},
		{"no clock either time, wall after the mark", boot.Add(week), boot, boot.Add(week)},
		{"mark just before 2020", rtc, sane.Add(-time.Second), sane.Add(-time.Second)},
		{"mark at 2020", rtc, sane, rtc},
	}
	for _, tt := range tests {
		if got := startTime(tt.wall, tt.mark); !got.Equal(tt.want) {
			t.Errorf("%s: startTime(wall %v, mark %v) = %v, want %v", tt.name, tt.wall, tt.mark, got, tt.want)
		}
	}
}

func TestSteadyClockIgnoresSteps(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	start := time.Unix(42, 0)
	sys := &steppedClock{wall: start, elapsed: time.Hour}
	clock, err := openClock(st, sys.source(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	steps := []struct {
		name string
		move func()
		want time.Duration // since start
	}{
		{"at start", func() {}, 0},
		{"a minute passes", func() { sys.pass(time.Minute) }, time.Minute},
		{"NTP steps 55 years forward", func() { sys.step(fiftyFive) }, time.Minute},
		{"a day passes", func() { sys.pass(24 * time.Hour) }, 24*time.Hour + time.Minute},
		{"set back 60 years", func() { sys.step(-60 * 365 * 24 * time.Hour) }, 24*time.Hour + time.Minute},
		{"a second passes", func() { sys.pass(time.Second) }, 24*time.Hour + time.Minute + time.Second},
	}
	for _, s := range steps {
		s.move()
		if got, want := clock.Now(), start.Add(s.want); !got.Equal(want) {
			t.Fatalf("%s: Now() = %v, want %v", s.name, got, want)
		}
	}
}

// TestNewKeepsItsOwnClock checks the default of Config.Now: it resumes at
// the store's time mark, which a clock that followed the wall clock would
// not; a Config.Now given is used as it is.
func TestNewKeepsItsOwnClock(t *testing.T) {
	st, err := store.Open(filepath.Join(t.TempDir(), "agent.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	mark := time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC) // an earlier run's clock was set to 2100
	if _, err := st.Sweep(mark); err != nil {
		t.Fatal(err)
	}
	a, err := New(Config{Store: st, Servers: []string{"ws://127.0.0.1:1"}})
	if err != nil {
		t.Fatal(err)
	}
	if now := a.now(); now.Before(mark) {
		t.Errorf("default clock reads %v, before the stored mark %v", now, mark)
	}
	fixed := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	a, err = New(Config{Store: st, Servers: []string{"ws://127.0.0.1:1"}, Now: func() time.Time { return fixed }})
	if err != nil {
		t.Fatal(err)
	}
	if now := a.now(); !now.Equal(fixed) {
		t.Errorf("given clock ignored: now %v, want %v", now, fixed)
	}
}

// TestTimesToLiveAcrossClockSteps holds a downstream message and a pending
// upstream message, both with GCM's longest time to live, through a run in
// which a minute passes and the wall clock may be stepped, then restarts
// the agent on the same file with the wall clock where the case puts it.
// Only real downtime by a clock that was set may use up their time to live.
func TestTimesToLiveAcrossClockSteps(t *testing.T) {
	noRTC := time.Unix(42, 0)
	rtc := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		name string
		boot time.Time     // the wall clock as the first run starts
		step time.Duration // the wall clock's step during the first run
		// reboot is the wall clock as the second run starts, given the
		// wall clock as the first one ended.
		reboot func(end time.Time) time.Time
		left   time.Duration // time to live left after the restart; 0: expired
	}{{
		name: "no clock, NTP steps 55 years, restart with the clock set",
		boot: noRTC, step: fiftyFive,
		reboot: func(end time.Time) time.Time { return end.Add(time.Minute) },
		left:   wire.MaxTTL*time.Second - time.Minute,
	}, {
		name: "no clock, NTP steps 55 years, restart in 1970 again",
		boot: noRTC, step: fiftyFive,
		reboot: func(time.Time) time.Time { return time.Unix(5, 0) },
		left:   wire.MaxTTL*time.Second - time.Minute,
	}, {
		name: "clock set back a year, restart with it",
		boot: rtc, step: -365 * 24 * time.Hour,
		reboot: func(end time.Time) time.Time { return end },
		left:   wire.MaxTTL*time.Second - time.Minute,
	}, {
		name:   "clock set, three weeks powered off",
		boot:   rtc,
		reboot: func(end time.Time) time.Time { return end.Add(3 * week) },
		left:   wire.MaxTTL*time.Second - 3*week - time.Minute,
	}, {
		name:   "clock set, five weeks powered off",
		boot:   rtc,
		reboot: func(end time.Time) time.Time { return end.Add(5 * week) },
		left:   0,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sys := &steppedClock{wall: tt.boot}
			p := newPeer(t)
			d := newDevice(t, "", p.url, nil, sys.agentClock(t))
			registerDirect(t, d, app, sender, alice.UID)
			d.start()
			pc := p.nextConn(t)
			d.waitConnected(t)
			pc.message("held", app, sender, wire.MaxTTL)
			pc.waitAcked(t, 1)
			ttl := int64(wire.MaxTTL)
			if _, _, err := d.agent.Send(bg, alice, ipc.SendRequest{App: app, To: sender, ID: "up", TTL: &ttl}); err != nil {
				t.Fatal(err)
			}
			pc.waitFor(t, wire.TypeUpstream) // the server does not acknowledge it

			sys.pass(time.Minute)
			sys.step(tt.step)
			d.agent.sweep() // as the expiry timer, a listener or a new session would
			expectKept(t, d, "after the step")
			pc.message("held", app, sender, wire.MaxTTL) // a redelivery
			pc.waitAck(t)
			expectKept(t, d, "after the redelivery")
			// Offline, pending upstream messages expire too.
			d.cancel()
			if err := <-d.done; err != nil {
				t.Fatalf("Run: %v", err)
			}
			d.cancel = nil
			d.agent.sweep()
			expectKept(t, d, "offline")
			d.stop()

			sys.reboot(tt.reboot(sys.source().wall()))
			d2 := newDevice(t, d.path, p.url, nil, sys.agentClock(t))
			l, _ := listen(t, d2.agent, alice, app) // sweeps, offline
			if tt.left == 0 {
				if e := l.next(t); e != deleted(1) {
					t.Fatalf("first event %#v, want DeletedMessages(1)", e)
				}
				if st, err := d2.agent.Status(bg); err != nil || st.QueuedDownstream != 0 || st.PendingUpstream != 0 {
					t.Errorf("status %+v, %v; want nothing held or pending", st, err)
				}
				return
			}
			if m := l.nextMessage(t); m.ID != "held" {
				t.Fatalf("after the restart the app got %q, want held", m.ID)
			}
			expectKept(t, d2, "after the restart")
			d2.start()
			pc2 := p.nextConn(t)
			var up wire.Upstream
			if err := pc2.waitFor(t, wire.TypeUpstream).Decode(&up); err != nil {
				t.Fatal(err)
			}
			if want := int64(tt.left / time.Second); up.ID != "up" || up.TTL != want {
				t.Errorf("resent upstream %q with ttl %d, want up with %d", up.ID, up.TTL, want)
			}
			pc2.message("held", app, sender, wire.MaxTTL) // the server redelivers
			pc2.waitAck(t)
			pc2.message("fresh", app, sender, wire.MaxTTL)
			if m := l.nextMessage(t); m.ID != "fresh" {
				t.Errorf("after the redelivery the app got %q, want fresh: the seen ID was lost", m.ID)
			}
		})
	}
}

// expectKept checks that the held message, stored once, and the pending
// upstream message are still there.
func expectKept(t *testing.T, d *device, when string) {
	t.Helper()
	st, err := d.agent.Status(bg)
	if err != nil || st.QueuedDownstream != 1 || st.PendingUpstream != 1 {
		t.Fatalf("%s: status %+v, %v; want 1 held and 1 pending", when, st, err)
	}
	held, err := d.store.Inbox(app, 0, 10, d.agent.now())
	if err != nil {
		t.Fatal(err)
	}
	if len(held) != 1 || held[0].ID != "held" || held[0].Seq != 1 {
		t.Fatalf("%s: inbox %+v, want held as first stored", when, held)
	}
	out, err := d.store.Outbox()
	if err != nil {
		t.Fatal(err)
	}
	if ids := upstreamIDs(out); !slices.Equal(ids, []string{"up"}) {
		t.Fatalf("%s: outbox %v, want up", when, ids)
	}
}

func upstreamIDs(out []store.Upstream) []string {
	var ids []string
	for _, u := range out {
		ids = append(ids, u.ID)
	}
	return ids
}
