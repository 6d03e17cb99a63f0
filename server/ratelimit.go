// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// limiter counts events per key against a rate: rateLimiter on one
// process, clusterLimiter across the nodes of a cluster.
type limiter interface {
	// allow takes one event for key, or reports that key is over its rate.
	allow(ctx context.Context, key string) bool
	// exhausted reports, without taking an event, whether key is over
	// its rate.
	exhausted(ctx context.Context, key string) bool
}

// swapLimiter is a limiter that Reload may replace with one of another
// rate: each event is counted by the one in place when it comes.
type swapLimiter struct {
	cur atomic.Pointer[rate]
}

// rate is a limiter with the rate it was made for.
type rate struct {
	limiter
	perMinute int
}

func (l *swapLimiter) allow(ctx context.Context, key string) bool {
	return l.cur.Load().allow(ctx, key)
}

func (l *swapLimiter) exhausted(ctx context.Context, key string) bool {
	return l.cur.Load().exhausted(ctx, key)
}

// perMinute is the rate of the limiter in place.
func (l *swapLimiter) perMinute() int { return l.cur.Load().perMinute }

// setLimits makes the rate limits of cfg, whose defaults are set, and puts
// them in place of those whose rate changed: a limit left as it was keeps
// its counts. Nothing changes if one cannot be made.
func (s *Server) setLimits(cfg Config) error {
	type change struct {
		dst *swapLimiter
		new *rate
	}
	var changes []change
	for _, l := range []struct {
		dst       *swapLimiter
		name      string // of a limit that holds across a cluster; empty for one per node
		perMinute int
		now       func() time.Time
	}{
		{&s.deviceRate, "device", cfg.DeviceRateLimit, cfg.Now}, {&s.topicRate, "topic", cfg.TopicRateLimit, cfg.Now},
		{&s.reconnects, "reconnect", cfg.ReconnectLimit, cfg.Now}, {&s.checkIns, "checkin", cfg.CheckInLimit, cfg.Now},
		{&s.upstreamRate, "", cfg.UpstreamRateLimit, cfg.Now},
		{&s.authFailures, "", cfg.AuthFailureLimit, time.Now}, {&s.enrollFailures, "", cfg.EnrollFailureLimit, time.Now},
	} {
		if cur := l.dst.cur.Load(); cur != nil && cur.perMinute == l.perMinute {
			continue
		}
		var lim limiter = newRateLimiter(l.perMinute, l.now)
		if l.name != "" {
			var err error
			if lim, err = s.limiterFor(l.name, l.perMinute, l.now); err != nil {
				return err
			}
		}
		changes = append(changes, change{l.dst, &rate{limiter: lim, perMinute: l.perMinute}})
	}
	for _, c := range changes {
		c.dst.cur.Store(c.new)
	}
	return nil
}

// rateLimiter allows each key perMinute events a minute, in bursts of up
// to perMinute: a token bucket per key, refilled continuously. A nil
// rateLimiter allows everything.
type rateLimiter struct {
	perMinute float64
	now       func() time.Time

	mu      sync.Mutex
	buckets map[string]*rateBucket
	pruneAt int
}

type rateBucket struct {
	tokens float64
	at     time.Time
}

// minPrune is the number of buckets below which none are pruned.
const minPrune = 1024

func newRateLimiter(perMinute int, now func() time.Time) *rateLimiter {
	if perMinute <= 0 {
		return nil
	}
	return &rateLimiter{perMinute: float64(perMinute), now: now, buckets: make(map[string]*rateBucket), pruneAt: minPrune}
}

// allow takes one event for key, or reports that key is over its rate.
func (l *rateLimiter) allow(_ context.Context, key string) bool {
	if l == nil {
		return true
	}
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		l.prune(now)
		b = &rateBucket{tokens: l.perMinute, at: now}
		l.buckets[key] = b
	}
	l.refill(b, now)
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// exhausted reports, without taking an event, whether key is over its
// rate.
func (l *rateLimiter) exhausted(_ context.Context, key string) bool {
	if l == nil {
		return false
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		return false
	}
	l.refill(b, l.now())
	return b.tokens < 1
}

func (l *rateLimiter) refill(b *rateBucket, now time.Time) {
	if elapsed := now.Sub(b.at); elapsed > 0 {
		b.tokens = min(l.perMinute, b.tokens+elapsed.Minutes()*l.perMinute)
		b.at = now
	}
}

// prune forgets the keys whose buckets have filled up again, which behave
// as new ones, once the map has doubled since the last prune: memory stays
// proportional to the keys active in the last minute.
func (l *rateLimiter) prune(now time.Time) {
	if len(l.buckets) < l.pruneAt {
		return
	}
	for k, b := range l.buckets {
		if l.refill(b, now); b.tokens >= l.perMinute {
			delete(l.buckets, k)
		}
	}
	l.pruneAt = max(minPrune, 2*len(l.buckets))
}
