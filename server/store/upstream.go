// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Upstream is a message from an app on a device to its app server, or a
// delivery receipt for the app server, queued until a route delivers it or
// it expires.
type Upstream struct {
	// Type is "" for an app's message and UpstreamReceipt for a receipt.
	Type string `json:"type,omitempty"`
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

// UpstreamReceipt is the Type of a delivery receipt.
const UpstreamReceipt = "receipt"

// ReceiptTTL is how long a delivery receipt waits for its route.
const ReceiptTTL = 28 * 24 * time.Hour

// putReceipt queues the delivery receipt of m, in GCM's form: its ID is
// "dr2:" and the message's ID as the app server knows it, its data says the
// message reached the device.
func putReceipt(tx *bolt.Tx, m Message, now time.Time) (Upstream, error) {
	original := m.ID
	if m.OriginID != "" {
		original = m.OriginID
	}
	u := Upstream{
		Type: UpstreamReceipt, Device: m.Device, App: m.App, Sender: m.Sender, Token: m.Token, ID: "dr2:" + original,
		Data: map[string]string{
			"message_status":         "MESSAGE_SENT_TO_DEVICE",
			"original_message_id":    original,
			"device_registration_id": m.Token,
			"message_sent_timestamp": strconv.FormatInt(m.Sent.UnixMilli(), 10),
		},
		TTL: int64(ReceiptTTL / time.Second), Received: now, Expiry: now.Add(ReceiptTTL),
	}
	return u, queueUpstream(tx, &u)
}

// MaxUpstreamPerApp bounds the upstream messages of one app on one device
// that wait at the server for their app server: GCM's limit on an app
// instance's pending messages, which the agent keeps on its side too.
// Delivery receipts do not count.
const MaxUpstreamPerApp = 20

// queueUpstream stores u under a new Seq, in its lane and its app's count.
func queueUpstream(tx *bolt.Tx, u *Upstream) error {
	queue := tx.Bucket(bucketUpstream)
	var err error
	if u.Seq, err = queue.NextSequence(); err != nil {
		return err
	}
	if err := put(queue, be64(u.Seq), *u); err != nil {
		return err
	}
	return indexOne(tx, *u, 1)
}

// indexOne adds u to its lane and its app's count (by is 1), or takes it
// out of them (by is -1).
func indexOne(tx *bolt.Tx, u Upstream, by int) error {
	lanes := tx.Bucket(bucketUpLanes)
	key := append(laneKey(u.Device, u.Sender), be64(u.Seq)...)
	var err error
	if by > 0 {
		err = lanes.Put(key, nil)
	} else {
		err = lanes.Delete(key)
	}
	if err != nil || u.Type == UpstreamReceipt {
		return err
	}
	counts := tx.Bucket(bucketUpCounts)
	ck := join(u.Device, u.App)
	n := int(upCount(counts, ck)) + by
	if n <= 0 {
		return counts.Delete(ck)
	}
	return counts.Put(ck, be64(uint64(n)))
}

// laneKey is the prefix of a lane's entries: the messages of device for
// sender.
func laneKey(device, sender string) []byte { return append(join(device, sender), sep) }

func upCount(counts *bolt.Bucket, key []byte) uint64 {
	if v := counts.Get(key); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// indexUpstream builds the lanes and the counts of a store from before
// them.
func indexUpstream(tx *bolt.Tx) error {
	return tx.Bucket(bucketUpstream).ForEach(func(_, v []byte) error {
		u, err := decode[Upstream](v)
		if err != nil {
			return err
		}
		return indexOne(tx, u, 1)
	})
}

// PutOutcome says what PutUpstream did with a message.
type PutOutcome int

// Outcomes of PutUpstream.
const (
	UpstreamQueued          PutOutcome = iota // stored for delivery
	UpstreamDuplicate                         // a repeat of one seen before; not stored again
	UpstreamNotRegistered                     // no active registration of (device, app, sender), or no such sender
	UpstreamTooManyMessages                   // the app has MaxUpstreamPerApp queued already; not stored
)

// PutUpstream queues u unless its (device, app, id) was seen before and that
// sighting has not expired, or the app has MaxUpstreamPerApp queued; the
// sighting is remembered until seenUntil. A repeat is a duplicate even
// when the app is at the cap. It fills in u's Token and Seq.
func (s *Store) PutUpstream(ctx context.Context, u *Upstream, seenUntil time.Time) (outcome PutOutcome, err error) {
	need := messageCost(payloadSize(u.Data))
	err = s.batch(func(tx *bolt.Tx) error {
		outcome = UpstreamNotRegistered
		if s.room(tx) < need {
			return ErrFull
		}
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
		if upCount(tx.Bucket(bucketUpCounts), join(u.Device, u.App)) >= MaxUpstreamPerApp {
			outcome = UpstreamTooManyMessages
			return nil
		}
		if err := queueUpstream(tx, u); err != nil {
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
func (s *Store) Upstream(ctx context.Context, seq uint64) (Upstream, error) {
	u, err := lookup[Upstream](s.db, bucketUpstream, be64(seq))
	if err != nil {
		return Upstream{}, fmt.Errorf("upstream message %d: %w", seq, err)
	}
	return u, nil
}

// NextUpstream returns up to limit upstream messages of device for sender
// with Seq above after, in order: the next of the dispatcher's lane of
// (sender, device).
func (s *Store) NextUpstream(ctx context.Context, device, sender string, after uint64, limit int) ([]Upstream, error) {
	var out []Upstream
	err := s.db.View(func(tx *bolt.Tx) error {
		prefix := laneKey(device, sender)
		queue := tx.Bucket(bucketUpstream)
		c := tx.Bucket(bucketUpLanes).Cursor()
		for k, _ := c.Seek(append(prefix, be64(after+1)...)); k != nil && bytes.HasPrefix(k, prefix) && len(out) < limit; k, _ = c.Next() {
			u, ok, err := get[Upstream](queue, k[len(prefix):])
			if err != nil {
				return err
			}
			if ok {
				out = append(out, u)
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read upstream lane of device %s to sender %s: %w", device, sender, err)
	}
	return out, nil
}

// EachUpstream calls fn for every queued upstream message in order, within
// one read transaction.
func (s *Store) EachUpstream(ctx context.Context, fn func(Upstream) error) error {
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
func (s *Store) DeleteUpstream(ctx context.Context, seq uint64) error {
	err := s.batch(func(tx *bolt.Tx) error {
		queue := tx.Bucket(bucketUpstream)
		u, ok, err := get[Upstream](queue, be64(seq))
		if !ok && err == nil {
			return nil
		}
		if err := queue.Delete(be64(seq)); err != nil {
			return err
		}
		if err != nil {
			// A record that does not decode names no lane: it goes, and
			// readers of its lane skip the entry left.
			return nil
		}
		return indexOne(tx, u, -1)
	})
	if err != nil {
		return fmt.Errorf("delete upstream message %d: %w", seq, err)
	}
	return nil
}
