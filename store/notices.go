package store

import (
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// The server repeats a notice (a token refresh, a count of deleted
// messages) until the device acks it, so each is applied once: its ID joins
// the seen IDs of downstream messages, kept until expires.

// AddDeleted adds count to app's count of messages dropped before delivery
// (see TakeDropped), once per notice id. It reports whether the notice was
// new. A notice for an app the device does not know is only marked seen.
func (s *Store) AddDeleted(app, id string, count int, expires time.Time) (bool, error) {
	added, err := s.applyNotice(id, app, expires, func(tx *bolt.Tx) error {
		b := appBucket(tx, app)
		if b == nil {
			return nil
		}
		return b.Put(keyDropped, encodeUint64(decodeUint64(b.Get(keyDropped))+uint64(count)))
	})
	if err != nil {
		return false, fmt.Errorf("add %d deleted messages for app %q: %w", count, app, err)
	}
	return added, nil
}

// RefreshToken replaces the token of (app, sender), once per notice id.
// It reports whether the notice was new and changed a registration; a
// notice for a registration the device no longer has is only marked seen.
func (s *Store) RefreshToken(app, sender, token, id string, expires time.Time) (bool, error) {
	changed := false
	_, err := s.applyNotice(id, app, expires, func(tx *bolt.Tx) error {
		b := appBucket(tx, app)
		if b == nil || b.Bucket(bucketSenders) == nil || b.Bucket(bucketSenders).Get([]byte(sender)) == nil {
			return nil
		}
		changed = true
		return b.Bucket(bucketSenders).Put([]byte(sender), []byte(token))
	})
	if err != nil {
		return false, fmt.Errorf("refresh token of app %q sender %q: %w", app, sender, err)
	}
	return changed, nil
}

// applyNotice runs apply in a transaction that also marks id seen, unless
// it was seen before; it reports whether apply ran.
func (s *Store) applyNotice(id, app string, expires time.Time, apply func(*bolt.Tx) error) (bool, error) {
	if id == "" {
		return false, fmt.Errorf("notice without ID")
	}
	applied := false
	err := s.db.Update(func(tx *bolt.Tx) error {
		seen := tx.Bucket(bucketSeen)
		if seen.Get([]byte(id)) != nil {
			return nil
		}
		if err := apply(tx); err != nil {
			return err
		}
		applied = true
		entry := seenEntry{expires: expires, app: app}
		return firstErr(seen.Put([]byte(id), entry.encode()), tx.Bucket(bucketExpiry).Put(expiryKey(expires, id), nil))
	})
	return applied, err
}
