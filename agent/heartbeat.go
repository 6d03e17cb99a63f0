// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"fmt"
	"time"

	"tether/store"
)

// HeartbeatPolicy bounds the adaptive heartbeat: the interval the agent
// learns for each network stays within [Min, Max].
type HeartbeatPolicy struct {
	// Min and Max bound every interval used or probed.
	Min, Max time.Duration
	// Start is the interval on a network the agent knows nothing about:
	// short enough to outlive most NAT mappings.
	Start time.Duration
	// Growth multiplies the interval that held to give the next probe while
	// no interval is known to fail.
	Growth float64
	// Precision ends the search once the longest interval that held is
	// within Precision (or a tenth of itself, if more) of the shortest that
	// failed.
	Precision time.Duration
}

// DefaultHeartbeatPolicy is the policy for devices in the field: 30 s to
// 28 min, starting at 1 min (probes, not the connection that carries
// messages, pay for starting low) and doubling until an interval fails.
var DefaultHeartbeatPolicy = HeartbeatPolicy{
	Min:       30 * time.Second,
	Max:       28 * time.Minute,
	Start:     time.Minute,
	Growth:    2,
	Precision: 15 * time.Second,
}

// Check reports whether the policy is usable.
func (p HeartbeatPolicy) Check() error {
	switch {
	case p.Min <= 0 || p.Max < p.Min:
		return fmt.Errorf("heartbeat bounds %v..%v: want 0 < min <= max", p.Min, p.Max)
	case p.Start < p.Min || p.Start > p.Max:
		return fmt.Errorf("heartbeat start %v outside %v..%v", p.Start, p.Min, p.Max)
	case p.Growth <= 1:
		return fmt.Errorf("heartbeat growth %v: want more than 1", p.Growth)
	case p.Precision <= 0:
		return fmt.Errorf("heartbeat precision %v: want more than 0", p.Precision)
	}
	return nil
}

// learner is the search for one network's idle timeout. Good is always an
// interval that held, so the connection that carries messages uses it;
// longer intervals are tried on a separate, idle probe connection, so that
// a probe that fails delays no message.
type learner struct {
	policy HeartbeatPolicy
	known  store.Heartbeat
}

func newLearner(p HeartbeatPolicy, known store.Heartbeat) *learner {
	l := &learner{policy: p, known: known}
	if l.known.Good == 0 {
		l.known.Good = p.Start
	}
	l.known.Good = l.clamp(l.known.Good)
	return l
}

func (l *learner) clamp(d time.Duration) time.Duration {
	return min(max(d, l.policy.Min), l.policy.Max)
}

// interval is the heartbeat for the connection that carries messages.
func (l *learner) interval() time.Duration { return l.known.Good }

// settled reports whether there is nothing left to probe.
func (l *learner) settled() bool {
	_, ok := l.next()
	return !ok
}

// next is the interval to probe, or false when the search is over: the
// maximum holds, or the gap between what held and what failed is within
// the policy's precision (or even the minimum failed).
func (l *learner) next() (time.Duration, bool) {
	good, bad := l.known.Good, l.known.Bad
	if bad == 0 {
		if good >= l.policy.Max {
			return 0, false
		}
		return l.clamp(time.Duration(float64(good) * l.policy.Growth)), true
	}
	if bad-good <= max(l.policy.Precision, good/10) {
		return 0, false
	}
	return good + (bad-good)/2, true
}

// held records that a connection survived d idle.
func (l *learner) held(d time.Duration, now time.Time) {
	if d <= l.known.Good {
		return
	}
	l.known.Good = l.clamp(d)
	if l.known.Bad != 0 && l.known.Bad <= l.known.Good {
		l.known.Bad = 0 // the network's timeout grew
	}
	l.known.Updated = now
}

// failed records that a connection died silently after d idle. When d is
// the interval in use, the network's timeout shrank: the search starts
// again below it, from half, which is where it would have come from. At
// the minimum there is nothing shorter to try: the minimum stays in use.
func (l *learner) failed(d time.Duration, now time.Time) {
	if l.known.Bad == 0 || d < l.known.Bad {
		l.known.Bad = d
	}
	if d <= l.known.Good {
		l.known.Good = l.clamp(d / 2)
	}
	l.known.Updated = now
}
