// SPDX-License-Identifier: Apache-2.0

package natsstore

import (
	"context"
	"fmt"

	"tether/server/store"
)

// statsSkip bounds the deleted bodies (purge markers, which live a
// second) that Stats steps over in one shard before it takes the next
// record as the oldest.
const statsSkip = 16

// Stats reads the bytes of every stream and the time the oldest queued
// message was stored, a few requests per shard. JetStream has no cheap
// count of the bodies among a stream's records, so Messages is -1, and
// the space of deleted records is the engine's to reclaim: Free is -1.
func (s *Store) Stats(ctx context.Context) (store.Stats, error) {
	st := store.Stats{Messages: -1, Free: -1}
	streams := []string{s.metaStream()}
	for i := range s.shards {
		streams = append(streams, s.shardStream(i))
	}
	for _, name := range streams {
		str, err := s.js.Stream(ctx, name)
		if err != nil {
			return store.Stats{}, fmt.Errorf("read stats of stream %s: %w", name, classify(err))
		}
		st.Bytes += int64(str.CachedInfo().State.Bytes)
	}
	for i := range s.shards {
		req := map[string]any{"next_by_subj": s.shardSubject(i, "m.>")}
		for range statsSkip {
			m, err := s.getMsg(ctx, s.shardStream(i), req)
			if err != nil {
				return store.Stats{}, fmt.Errorf("read stats: %w", err)
			}
			if m == nil {
				break
			}
			if m.Header.Get(kvOperation) == "" {
				if st.Oldest.IsZero() || m.Time.Before(st.Oldest) {
					st.Oldest = m.Time
				}
				break
			}
			req["seq"] = m.Sequence + 1
		}
	}
	return st, nil
}
