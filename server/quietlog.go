// SPDX-License-Identifier: Apache-2.0

package server

import (
	"log/slog"
	"sync"
	"time"
)

// refusalLogInterval is how often at most one address's refusals are
// logged.
const refusalLogInterval = time.Minute

// quietLog logs what is refused at most once per key (an address) per
// interval, with the count of refusals it kept quiet since its last line:
// an attacker's thousands of attempts make a line a minute, not a
// gigabyte an hour, and the operator still sees who and how many.
type quietLog struct {
	log      *slog.Logger
	interval time.Duration
	now      func() time.Time

	mu      sync.Mutex
	keys    map[string]*quietKey
	pruneAt int
}

type quietKey struct {
	logged time.Time // of the last line
	quiet  int       // refusals since, not logged
}

func newQuietLog(log *slog.Logger, interval time.Duration, now func() time.Time) *quietLog {
	return &quietLog{log: log, interval: interval, now: now, keys: make(map[string]*quietKey), pruneAt: minPrune}
}

// refused logs msg with attrs for key, unless a line for key went out
// within the interval: then it counts it for key's next line.
func (q *quietLog) refused(key, msg string, attrs ...any) {
	now := q.now()
	q.mu.Lock()
	k := q.keys[key]
	if k != nil && now.Sub(k.logged) < q.interval {
		k.quiet++
		q.mu.Unlock()
		return
	}
	quiet := 0
	if k == nil {
		q.prune(now)
		k = &quietKey{}
		q.keys[key] = k
	}
	quiet, k.logged, k.quiet = k.quiet, now, 0
	q.mu.Unlock()
	q.log.Info(msg, append(attrs, "remote", key, "refused_quietly_since_last", quiet)...)
}

// prune forgets the keys whose interval is over, once the map has doubled
// since the last prune, logging what a forgotten key kept quiet: memory
// stays proportional to the addresses refused in the last interval.
func (q *quietLog) prune(now time.Time) {
	if len(q.keys) < q.pruneAt {
		return
	}
	for key, k := range q.keys {
		if now.Sub(k.logged) < q.interval {
			continue
		}
		if k.quiet > 0 {
			q.log.Info("refused quietly", "remote", key, "count", k.quiet)
		}
		delete(q.keys, key)
	}
	q.pruneAt = max(minPrune, 2*len(q.keys))
}
