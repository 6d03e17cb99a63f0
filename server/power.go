// SPDX-License-Identifier: Apache-2.0

package server

import (
	"time"

	"tether/server/store"
	"tether/wire"
)

// Power modes decide what a session pushes at once (docs/server-api.md,
// "Devices on battery"):
//
//   - mains: everything.
//   - battery: high-priority messages; normal-priority ones are held and
//     go in one batch right behind the next high-priority message, when
//     the device returns to mains, or once the oldest has waited
//     Config.BatteryMaxDelay since it was sent.
//   - low: high-priority messages only; normal-priority ones wait for
//     another mode.
//
// Holding only delays the push: held messages are stored like any other,
// and notices are never held.

// powerMode is the mode a hello announces; none means mains.
func powerMode(mode string) string {
	if mode == "" {
		return wire.ModeMains
	}
	return mode
}

// deferrable reports whether m may wait for an idle device: GCM's normal
// priority (the default) or delay_while_idle.
func deferrable(m store.Message) bool {
	return m.Priority != "high" || m.DelayWhileIdle
}

// holds reports whether a device in mode, on Wi-Fi or not, gets m later
// rather than now. A Web Push message's urgency (RFC 8030, section 5.3)
// decides in place of GCM's priority (docs/power.md): high goes in every
// mode, normal on mains and battery, low on mains and on battery over
// Wi-Fi, very-low on mains only.
func holds(mode string, wifi bool, m store.Message) bool {
	switch m.Urgency {
	case "":
		return mode != wire.ModeMains && deferrable(m)
	case urgencyHigh:
		return false
	case urgencyNormal:
		return mode == wire.ModeLow
	case urgencyLow:
		return mode == wire.ModeLow || mode == wire.ModeBattery && !wifi
	}
	return mode != wire.ModeMains
}

// holdState is what a session's writer knows of the messages it passed
// over for the power mode.
type holdState struct {
	first uint64    // Seq of the first held message; 0 when none is held
	since time.Time // when the oldest held message was sent
	// releasing pushes held messages too, until the writer reaches the
	// end of the queue: a flush in progress.
	releasing bool
	timer     stopper // fires at timerAt, the maximum delay of since
	timerAt   time.Time
}

func (h *holdState) add(m store.Message) {
	if h.first == 0 || m.Sent.Before(h.since) {
		h.since = m.Sent
	}
	if h.first == 0 {
		h.first = m.Seq
	}
}

// rewind moves the cursor back to the first held message, so that the
// next pass looks at the held messages again: to push them (release), or
// under a new power mode. Messages sent meanwhile are in flight and passed
// over.
func (ss *session) rewind(release bool) {
	if ss.hold.first != 0 {
		ss.cursor = min(ss.cursor, ss.hold.first-1)
	}
	ss.hold.first, ss.hold.since = 0, time.Time{}
	ss.hold.releasing = release
}

// armHoldTimer keeps one timer per session for the maximum delay of the
// oldest held message while the device is on battery, and none otherwise.
func (ss *session) armHoldTimer(mode string) {
	if mode != wire.ModeBattery || ss.hold.first == 0 {
		ss.stopHoldTimer()
		return
	}
	at := ss.hold.since.Add(ss.srv.cfg.BatteryMaxDelay)
	if ss.hold.timer != nil && ss.hold.timerAt.Equal(at) {
		return
	}
	ss.stopHoldTimer()
	ss.hold.timerAt = at
	ss.hold.timer = ss.srv.cfg.afterFunc(at.Sub(ss.srv.now()), func() {
		ss.mu.Lock()
		ss.flushDue = true
		ss.mu.Unlock()
		ss.notify()
	})
}

func (ss *session) stopHoldTimer() {
	if ss.hold.timer != nil {
		ss.hold.timer.Stop()
		ss.hold.timer = nil
	}
}

// state takes the device's new power mode and heartbeat. The frame has
// no answer.
func (ss *session) state(f wire.Frame) {
	var st wire.State
	if !ss.decode(f, &st) {
		return
	}
	if st.Heartbeat > 0 {
		// readLoop arms the read deadline with it before the next read.
		ss.timeout = secondsDuration(int64(st.Heartbeat)) + ss.srv.cfg.HeartbeatGrace
	}
	wifi := st.Link == wire.LinkWiFi
	ss.mu.Lock()
	changed := ss.mode != st.Mode || ss.wifi != wifi
	ss.mode, ss.wifi = st.Mode, wifi
	ss.rescan = ss.rescan || changed
	ss.mu.Unlock()
	if !changed {
		ss.log.Debug("device state", "mode", st.Mode, "link", st.Link, "heartbeat", st.Heartbeat)
		return
	}
	ss.log.Info("power mode or link changed", "mode", st.Mode, "link", st.Link, "heartbeat", st.Heartbeat)
	ss.notify()
}
