// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"testing"
	"time"

	"tether/store"
)

// network simulates middleboxes that drop a connection idle for timeout or
// longer (never, when zero). It runs the learner as the agent does: the
// connection that carries messages uses the learned interval and fails when
// that is too long; probes try longer ones.
func (l *learner) learn(t *testing.T, timeout time.Duration) (probes, carrierFailures int) {
	t.Helper()
	now := time.Date(2026, 11, 27, 0, 0, 0, 0, time.UTC)
	drops := func(d time.Duration) bool { return timeout != 0 && d >= timeout }
	for range 40 {
		if in := l.interval(); drops(in) && in > l.policy.Min {
			carrierFailures++
			l.failed(in, now)
			continue
		}
		d, ok := l.next()
		if !ok {
			return probes, carrierFailures
		}
		probes++
		if drops(d) {
			l.failed(d, now)
		} else {
			l.held(d, now)
		}
	}
	t.Fatalf("not settled after 40 rounds: %+v", l.known)
	return
}

func under(timeout, within time.Duration) func(time.Duration) bool {
	return func(d time.Duration) bool { return d < timeout && timeout-d <= within }
}

// The learner settles on the longest interval under the network's timeout,
// within the policy's precision, in few probes, and the connection that
// carries messages fails only when what it started from was too long.
func TestLearnerSettlesUnderTheTimeout(t *testing.T) {
	p := DefaultHeartbeatPolicy
	tests := []struct {
		name            string
		timeout         time.Duration
		known           store.Heartbeat
		want            func(time.Duration) bool
		maxProbes       int
		carrierFailures int
	}{
		{"carrier NAT at 5 min", 5 * time.Minute, store.Heartbeat{}, under(5*time.Minute, 30*time.Second), 7, 0},
		{"home router at 10 min", 10 * time.Minute, store.Heartbeat{}, under(10*time.Minute, time.Minute), 8, 0},
		{"aggressive NAT at 45 s", 45 * time.Second, store.Heartbeat{}, under(45*time.Second, p.Precision), 2, 1},
		{"nothing drops", 0, store.Heartbeat{}, func(d time.Duration) bool { return d == p.Max }, 5, 0},
		{"timeout under the minimum", 10 * time.Second, store.Heartbeat{}, func(d time.Duration) bool { return d == p.Min }, 1, 1},
		{"learned before", 5 * time.Minute, store.Heartbeat{Good: 4*time.Minute + 50*time.Second, Bad: 5 * time.Minute}, under(5*time.Minute, p.Precision), 0, 0},
		{"the timeout shrank since", 7 * time.Minute, store.Heartbeat{Good: 10 * time.Minute, Bad: 10*time.Minute + 30*time.Second}, under(7*time.Minute, 45*time.Second), 4, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := newLearner(p, tt.known)
			probes, failures := l.learn(t, tt.timeout)
			if !tt.want(l.interval()) {
				t.Errorf("settled on %v (known %+v)", l.interval(), l.known)
			}
			if probes > tt.maxProbes {
				t.Errorf("%d probes, want at most %d", probes, tt.maxProbes)
			}
			if failures != tt.carrierFailures {
				t.Errorf("the connection in use failed %d times, want %d", failures, tt.carrierFailures)
			}
		})
	}
}

// A probe that holds past the shortest failure seen means the network's
// timeout grew: the learner forgets the failure and searches upward.
func TestLearnerFollowsATimeoutThatGrew(t *testing.T) {
	l := newLearner(DefaultHeartbeatPolicy, store.Heartbeat{Good: 4 * time.Minute, Bad: 5 * time.Minute})
	l.held(6*time.Minute, time.Now())
	if l.known.Bad != 0 || l.interval() != 6*time.Minute {
		t.Fatalf("after a hold at 6 min: %+v", l.known)
	}
	if d, ok := l.next(); !ok || d != 12*time.Minute {
		t.Fatalf("next probe %v, %v; want 12m", d, ok)
	}
}

func TestHeartbeatPolicyCheck(t *testing.T) {
	ok := DefaultHeartbeatPolicy
	if err := ok.Check(); err != nil {
		t.Fatalf("default policy: %v", err)
	}
	bad := []func(*HeartbeatPolicy){
		func(p *HeartbeatPolicy) { p.Min = 0 },
		func(p *HeartbeatPolicy) { p.Max = p.Min - 1 },
		func(p *HeartbeatPolicy) { p.Start = p.Max + 1 },
		func(p *HeartbeatPolicy) { p.Growth = 1 },
		func(p *HeartbeatPolicy) { p.Precision = 0 },
	}
	for i, change := range bad {
		p := ok
		change(&p)
		if err := p.Check(); err == nil {
			t.Errorf("case %d: %+v accepted", i, p)
		}
	}
}
