// SPDX-License-Identifier: Apache-2.0

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

// RefreshToken replaces the token of (app, sender), and a Web Push
// registration's endpoint when endpoint is set, once per notice id, and
// keeps the new token for the app to be told (TakeRefreshed). It
// reports whether the notice was new and changed a registration; a notice
// for a registration the device no longer has is only marked seen.
func (s *Store) RefreshToken(app, sender, token, endpoint, id string, expires time.Time) (bool, error) {
	changed := false
	_, err := s.applyNotice(id, app, expires, func(tx *bolt.Tx) error {
		b := appBucket(tx, app)
		if b == nil || b.Bucket(bucketSenders) == nil || b.Bucket(bucketSenders).Get([]byte(sender)) == nil {
			return nil
		}
		changed = true
		if endpoint != "" {
			reg := Registration{App: app, Sender: sender}
			if err := webPush(b, &reg); err != nil {
				return err
			}
			reg.Endpoint = endpoint
			if err := putWebPush(b, []byte(sender), reg); err != nil {
				return err
			}
		}
		return firstErr(b.Bucket(bucketSenders).Put([]byte(sender), []byte(token)), noteRefreshed(b, []byte(sender), []byte(token)))
	})
	if err != nil {
		return false, fmt.Errorf("refresh token of app %q sender %q: %w", app, sender, err)
	}
	return changed, nil
}

// noteRefreshed keeps a new token of the app's registration with sender
// until the app is told of it.
func noteRefreshed(app *bolt.Bucket, sender, token []byte) error {
	refreshed, err := app.CreateBucketIfNotExists(bucketRefreshed)
	if err != nil {
		return err
	}
	return refreshed.Put(sender, token)
}

// TakeRefreshed returns the tokens of the app's registrations that changed
// since the last call (a token refresh, a registration made again after a
// new check-in), by sender, and forgets them. A token that is no longer
// the registration's (unregistered, or changed again since) is left out:
// only the current one is news.
func (s *Store) TakeRefreshed(app string) (map[string]string, error) {
	out := map[string]string{}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := appBucket(tx, app)
		if b == nil || b.Bucket(bucketRefreshed) == nil {
			return nil
		}
		err := b.Bucket(bucketRefreshed).ForEach(func(sender, token []byte) error {
			if current := senderToken(tx, app, string(sender)); current != nil && string(current) == string(token) {
				out[string(sender)] = string(token)
			}
			return nil
		})
		if err != nil {
			return err
		}
		return b.DeleteBucket(bucketRefreshed)
	})
	if err != nil {
		return nil, fmt.Errorf("take refreshed tokens of app %q: %w", app, err)
	}
	return out, nil
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
