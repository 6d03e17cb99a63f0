package store

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Message is a downstream message waiting in a device's queue until the
// device acks it or it expires.
type Message struct {
	ID string `json:"id"`
	// Seq orders the queue; Enqueue assigns it.
	Seq         uint64            `json:"seq"`
	Device      string            `json:"device"`
	Token       string            `json:"token"`
	App         string            `json:"app"`
	Sender      string            `json:"sender"`
	CollapseKey string            `json:"collapse_key,omitempty"`
	Priority    string            `json:"priority,omitempty"`
	Data        map[string]string `json:"data,omitempty"`
	Sent        time.Time         `json:"sent"`
	// Expiry is when the message stops being delivered, by the server's
	// clock.
	Expiry time.Time `json:"expiry"`
}

func queueKey(device string, seq uint64) []byte {
	return binary.BigEndian.AppendUint64(join(device, ""), seq)
}

func expiryKey(t time.Time, kind byte, id []byte) []byte {
	k := binary.BigEndian.AppendUint64(nil, uint64(t.UnixNano()))
	k = append(k, kind)
	return append(k, id...)
}

// Enqueue stores messages in their devices' queues, assigning each its
// Seq. A message whose token is no longer active for its device is not
// stored: queued[i] reports which were. A queued message with the same
// token and collapse key as an older one replaces it. Calls from many
// goroutines share one commit.
func (s *Store) Enqueue(msgs []Message) (queued []bool, err error) {
	err = s.db.Batch(func(tx *bolt.Tx) error {
		queued = make([]bool, len(msgs))
		regs, bmsgs := tx.Bucket(bucketRegs), tx.Bucket(bucketMsgs)
		collapse := tx.Bucket(bucketCollapse)
		for i := range msgs {
			m := &msgs[i]
			reg, _, err := get[Registration](regs, []byte(m.Token))
			if err != nil {
				return err
			}
			if !reg.Active() || reg.Device != m.Device {
				continue
			}
			if m.Seq, err = bmsgs.NextSequence(); err != nil {
				return err
			}
			if m.CollapseKey != "" {
				if old := collapse.Get(join(m.Token, m.CollapseKey)); old != nil {
					prev, ok, err := get[Message](bmsgs, old)
					if err != nil {
						return err
					}
					if ok {
						if err := deleteMessage(tx, prev); err != nil {
							return err
						}
					}
				}
			}
			if err := putMessage(tx, *m); err != nil {
				return err
			}
			queued[i] = true
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("enqueue %d messages: %w", len(msgs), err)
	}
	return queued, nil
}

func putMessage(tx *bolt.Tx, m Message) error {
	if err := put(tx.Bucket(bucketMsgs), []byte(m.ID), m); err != nil {
		return err
	}
	if err := tx.Bucket(bucketQueue).Put(queueKey(m.Device, m.Seq), []byte(m.ID)); err != nil {
		return err
	}
	if err := tx.Bucket(bucketExpiry).Put(expiryKey(m.Expiry, expiryMessage, []byte(m.ID)), nil); err != nil {
		return err
	}
	if m.CollapseKey != "" {
		return tx.Bucket(bucketCollapse).Put(join(m.Token, m.CollapseKey), []byte(m.ID))
	}
	return nil
}

func deleteMessage(tx *bolt.Tx, m Message) error {
	if err := tx.Bucket(bucketMsgs).Delete([]byte(m.ID)); err != nil {
		return err
	}
	if err := tx.Bucket(bucketQueue).Delete(queueKey(m.Device, m.Seq)); err != nil {
		return err
	}
	if err := tx.Bucket(bucketExpiry).Delete(expiryKey(m.Expiry, expiryMessage, []byte(m.ID))); err != nil {
		return err
	}
	if m.CollapseKey != "" {
		collapse, key := tx.Bucket(bucketCollapse), join(m.Token, m.CollapseKey)
		if bytes.Equal(collapse.Get(key), []byte(m.ID)) {
			return collapse.Delete(key)
		}
	}
	return nil
}

// queuedMessages returns a device's whole queue in order.
func queuedMessages(tx *bolt.Tx, device string) ([]Message, error) {
	return pending(tx, device, 0, 0)
}

func pending(tx *bolt.Tx, device string, after uint64, limit int) ([]Message, error) {
	var out []Message
	prefix := join(device, "")
	bmsgs := tx.Bucket(bucketMsgs)
	c := tx.Bucket(bucketQueue).Cursor()
	for k, id := c.Seek(queueKey(device, after+1)); bytes.HasPrefix(k, prefix); k, id = c.Next() {
		m, ok, err := get[Message](bmsgs, id)
		if err != nil {
			return nil, err
		}
		if !ok {
			continue
		}
		out = append(out, m)
		if len(out) == limit {
			break
		}
	}
	return out, nil
}

// Pending returns up to limit messages (all when limit is 0) queued for a
// device with Seq above after, in order. Expired messages not yet swept are
// included; the caller checks Expiry.
func (s *Store) Pending(device string, after uint64, limit int) ([]Message, error) {
	var out []Message
	err := s.db.View(func(tx *bolt.Tx) error {
		var err error
		out, err = pending(tx, device, after, limit)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("pending messages of device %s: %w", device, err)
	}
	return out, nil
}

// Ack deletes the device's messages with these IDs and returns how many it
// found; IDs of other devices' messages are ignored.
func (s *Store) Ack(device string, ids []string) (acked int, err error) {
	err = s.db.Batch(func(tx *bolt.Tx) error {
		acked = 0
		bmsgs := tx.Bucket(bucketMsgs)
		for _, id := range ids {
			m, ok, err := get[Message](bmsgs, []byte(id))
			if err != nil {
				return err
			}
			if !ok || m.Device != device {
				continue
			}
			if err := deleteMessage(tx, m); err != nil {
				return err
			}
			acked++
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("ack %d messages of device %s: %w", len(ids), device, err)
	}
	return acked, nil
}

// sweepBatch bounds the deletions of one sweep transaction.
const sweepBatch = 1000

// SweepExpired deletes the messages and upstream dedupe entries that have
// expired by now, and returns when the next one expires (zero if none).
func (s *Store) SweepExpired(now time.Time) (next time.Time, removed int, err error) {
	for {
		var n int
		var more bool
		err := s.db.Update(func(tx *bolt.Tx) error {
			var err error
			n, more, next, err = sweep(tx, now)
			return err
		})
		if err != nil {
			return time.Time{}, removed, fmt.Errorf("sweep expired: %w", err)
		}
		removed += n
		if !more {
			return next, removed, nil
		}
	}
}

func sweep(tx *bolt.Tx, now time.Time) (removed int, more bool, next time.Time, err error) {
	expiry := tx.Bucket(bucketExpiry)
	var due [][]byte
	c := expiry.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if len(due) == sweepBatch {
			return len(due), true, time.Time{}, sweepKeys(tx, due)
		}
		if t := time.Unix(0, int64(binary.BigEndian.Uint64(k))); t.After(now) {
			next = t
			break
		}
		due = append(due, bytes.Clone(k))
	}
	return len(due), false, next, sweepKeys(tx, due)
}

func sweepKeys(tx *bolt.Tx, due [][]byte) error {
	expiry, bmsgs, seen := tx.Bucket(bucketExpiry), tx.Bucket(bucketMsgs), tx.Bucket(bucketSeen)
	for _, k := range due {
		at, kind, id := k[:8], k[8], k[9:]
		switch kind {
		case expiryMessage:
			m, ok, err := get[Message](bmsgs, id)
			if err != nil {
				return err
			}
			if ok {
				if err := deleteMessage(tx, m); err != nil {
					return err
				}
			}
		case expirySeen:
			// A later repeat may have renewed the entry under a new expiry.
			if bytes.Equal(seen.Get(id), at) {
				if err := seen.Delete(id); err != nil {
					return err
				}
			}
		}
		if err := expiry.Delete(k); err != nil {
			return err
		}
	}
	return nil
}
