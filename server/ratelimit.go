package server

import (
	"context"
	"sync"
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
