package store

import (
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Upstream is a message from an app on a device to its app server, queued
// until a route delivers it or it expires.
type Upstream struct {
	// Seq orders the queue; PutUpstream assigns it.
	Seq    uint64 `json:"seq"`
	Device string `json:"device"`
	App    string `json:"app"`
	// Sender is the sender ID the message goes to.
	Sender string `json:"sender"`
	// Token is the registration token of (Device, App, Sender), which the
	// app server knows the app by.
	Token    string            `json:"token"`
	ID       string            `json:"id"`
	Priority string            `json:"priority,omitempty"`
	Data     map[string]string `json:"data,omitempty"`
	TTL      int64             `json:"ttl"`
	Received time.Time         `json:"received"`
	Expiry   time.Time         `json:"expiry"`
}

// PutOutcome says what PutUpstream did with a message.
type PutOutcome int

// Outcomes of PutUpstream.
const (
	UpstreamQueued        PutOutcome = iota // stored for delivery
	UpstreamDuplicate                       // a repeat of one seen before; not stored again
	UpstreamNotRegistered                   // no active registration of (device, app, sender), or no such sender
)

// PutUpstream queues u unless its (device, app, id) was seen before and that
// sighting has not expired; the sighting is remembered until seenUntil.
// It fills in u's Token and Seq.
func (s *Store) PutUpstream(u *Upstream, seenUntil time.Time) (outcome PutOutcome, err error) {
	err = s.db.Batch(func(tx *bolt.Tx) error {
		outcome = UpstreamNotRegistered
		token := tx.Bucket(bucketRegIndex).Get(join(u.Device, u.App, u.Sender))
		if token == nil || tx.Bucket(bucketSenders).Get([]byte(u.Sender)) == nil {
			return nil
		}
		u.Token = string(token)
		seen, expiry := tx.Bucket(bucketSeen), tx.Bucket(bucketExpiry)
		seenKey := join(u.Device, u.App, u.ID)
		if until := seen.Get(seenKey); until != nil {
			if time.Unix(0, int64(binary.BigEndian.Uint64(until))).After(u.Received) {
				outcome = UpstreamDuplicate
				return nil
			}
			// Expired but not yet swept: the sweep skips entries renewed here.
		}
		queue := tx.Bucket(bucketUpstream)
		var err error
		if u.Seq, err = queue.NextSequence(); err != nil {
			return err
		}
		if err := put(queue, be64(u.Seq), u); err != nil {
			return err
		}
		if err := seen.Put(seenKey, be64(uint64(seenUntil.UnixNano()))); err != nil {
			return err
		}
		if err := expiry.Put(expiryKey(seenUntil, expirySeen, seenKey), nil); err != nil {
			return err
		}
		outcome = UpstreamQueued
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("queue upstream message %q of app %q: %w", u.ID, u.App, err)
	}
	return outcome, nil
}

// Upstream returns the queued upstream message seq.
func (s *Store) Upstream(seq uint64) (Upstream, error) {
	u, err := lookup[Upstream](s.db, bucketUpstream, be64(seq))
	if err != nil {
		return Upstream{}, fmt.Errorf("upstream message %d: %w", seq, err)
	}
	return u, nil
}

// EachUpstream calls fn for every queued upstream message in order, within
// one read transaction.
func (s *Store) EachUpstream(fn func(Upstream) error) error {
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUpstream).ForEach(func(_, v []byte) error {
			u, err := decode[Upstream](v)
			if err != nil {
				return err
			}
			return fn(u)
		})
	})
	if err != nil {
		return fmt.Errorf("read upstream queue: %w", err)
	}
	return nil
}

// DeleteUpstream removes seq from the queue once it is delivered or
// expired. Deleting a message that is gone is not an error.
func (s *Store) DeleteUpstream(seq uint64) error {
	err := s.db.Batch(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketUpstream).Delete(be64(seq))
	})
	if err != nil {
		return fmt.Errorf("delete upstream message %d: %w", seq, err)
	}
	return nil
}
