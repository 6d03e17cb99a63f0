// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"fmt"
	"log/slog"
	"time"

	"tether/store"
)

// saneSince is 2020-01-01 in Unix seconds: a clock that reads earlier was
// never set. Devices without a real-time clock boot in 1970.
const saneSince = 1577836800

// steadyClock is the agent's clock for times to live: held messages, seen
// IDs and pending upstream messages expire by it, and the store keeps their
// expiries as instants of it.
//
// Within a run it moves with the monotonic clock and ignores steps of the
// wall clock. A device without a real-time clock boots in 1970 and NTP
// later moves it forward by decades: a clock that followed would expire
// every message at the next sweep, and a step back would keep them far too
// long. Time the system spends suspended does not count, which errs the same
// way as below: messages live longer, never shorter.
//
// Across restarts it goes on from the store's time mark, the latest time
// the agent wrote, because the stored expiries are instants of the earlier
// runs' clock, not of whatever the wall clock says now. At start:
//   - a wall clock behind the mark went back (the device booted in 1970
//     again, or someone set it back): the clock resumes at the mark, so no
//     stored expiry moves further away, and the downtime counts as nothing
//     since nothing tells how long it was;
//   - a mark from before 2020 next to a wall clock after it means the last
//     run had no real clock: the gap is a step, not time that passed, so the
//     clock resumes at the mark too. The agent's clock then stays behind the
//     wall clock for good, and later downtime counts as nothing as well;
//   - otherwise the wall clock is trusted, gap included: a device powered
//     off for three weeks has lost three weeks of every time to live.
type steadyClock struct {
	base    time.Time     // the clock's time at start
	origin  time.Duration // elapsed() at start
	elapsed func() time.Duration
}

// clockSource is what a steadyClock reads: the wall clock, which can be
// stepped, and a monotonic reading, which cannot. Tests bring their own.
type clockSource struct {
	wall func() time.Time
	// elapsed grows at the pace of real time from an arbitrary origin.
	elapsed func() time.Duration
}

// systemClock reads the system's clocks. time.Since measures with the
// monotonic reading that time.Now carries; Round(0) strips that reading
// from the wall time, so the clock's times compare by their wall value
// alone, like the times read back from the store. offset moves the wall
// clock (Config.ClockOffset).
func systemClock(offset time.Duration) clockSource {
	origin := time.Now()
	return clockSource{
		wall:    func() time.Time { return time.Now().Round(0).Add(offset) },
		elapsed: func() time.Duration { return time.Since(origin) },
	}
}

// openClock starts the agent's clock from the time mark in st.
func openClock(st *store.Store, src clockSource, log *slog.Logger) (*steadyClock, error) {
	mark, err := st.TimeMark()
	if err != nil {
		return nil, fmt.Errorf("start clock: %w", err)
	}
	wall := src.wall()
	c := &steadyClock{base: startTime(wall, mark), origin: src.elapsed(), elapsed: src.elapsed}
	if !c.base.Equal(wall) {
		log.Info("wall clock not trusted for times to live, resuming at the stored time mark", "wall", wall, "mark", mark)
	}
	return c, nil
}

// startTime is where a run's clock starts, given the wall clock and the
// store's time mark (zero: none yet); steadyClock says why.
func startTime(wall, mark time.Time) time.Time {
	switch {
	case mark.IsZero():
		return wall
	case wall.Before(mark), !setClock(mark) && setClock(wall):
		return mark
	}
	return wall
}

// setClock reports whether t is read from a clock that was ever set.
func setClock(t time.Time) bool { return t.Unix() >= saneSince }

// Now is the agent's time.
func (c *steadyClock) Now() time.Time { return c.base.Add(c.elapsed() - c.origin) }
