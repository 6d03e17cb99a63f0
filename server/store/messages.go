// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Message is a downstream message waiting in a device's queue until the
// device acks it or it expires.
type Message struct {
	ID string `json:"id"`
	// Seq orders the queue; Enqueue assigns it.
	Seq         uint64 `json:"seq"`
	Device      string `json:"device"`
	Token       string `json:"token"`
	App         string `json:"app"`
	Sender      string `json:"sender"`
	CollapseKey string `json:"collapse_key,omitempty"`
	Priority    string `json:"priority,omitempty"`
	// DelayWhileIdle is GCM's delay_while_idle: the message waits while
	// the device is idle (on battery), whatever its priority.
	DelayWhileIdle bool              `json:"delay_while_idle,omitempty"`
	Data           map[string]string `json:"data,omitempty"`
	// Notification is GCM's notification payload, delivered apart from Data.
	Notification map[string]string `json:"notification,omitempty"`
	// Topic is the topic it was sent to, for a copy of a topic message.
	Topic string `json:"topic,omitempty"`
	// Raw is the binary payload: a Web Push message's body.
	Raw []byte `json:"raw,omitempty"`
	// Urgency is a Web Push message's (RFC 8030): very-low, low, normal
	// or high. It decides the holding in place of Priority.
	Urgency string `json:"urgency,omitempty"`
	// Receipt asks for a delivery receipt to the sender once the device
	// has the message (Ack returns it).
	Receipt bool `json:"receipt,omitempty"`
	// OriginID is the message_id the app server gave the message (over
	// XMPP, where it names the message in acks and receipts); empty for
	// a message sent over HTTP, which the server's own ID names.
	OriginID string    `json:"origin_id,omitempty"`
	Sent     time.Time `json:"sent"`
	// Expiry is when the message stops being delivered, by the server's
	// clock.
	Expiry time.Time `json:"expiry"`
}

// GCM's caps on what one app on one device may have stored.
const (
	// MaxPendingPerApp bounds the non-collapsible messages waiting for one
	// app on one device: stored and not in flight to the device's live
	// session (Live.Flowing). One more drops all of those (GCM's rule), and the
	// app is told how many it lost.
	MaxPendingPerApp = 100
	// MaxCollapseKeysPerApp bounds the distinct collapse keys stored for
	// one app on one device; a message under one more evicts the oldest.
	MaxCollapseKeysPerApp = 4
)

// Live is what the store knows of, and tells, the devices' live sessions
// while it queues messages for them. A nil Live knows of none.
type Live interface {
	// Flowing names the messages of one app in flight to its device's
	// live session: sent, and their ack not committed. GCM's caps apply
	// to what waits for a device, never to what flows to a device that
	// keeps up, so the stored messages it names neither count towards
	// MaxPendingPerApp nor are dropped by it.
	Flowing(device, app string) []string
	// Offer hands a live session m, queued in a transaction that has not
	// committed yet, so that the device may have it while the commit
	// runs. It must not block, and must not call the store. A session
	// that sends it sends it again if the transaction fails: it may then
	// have a message the app server was told was not accepted.
	Offer(m Message)
}

// appPending counts what the caps apply to, for one app on one device.
type appPending struct {
	Plain int `json:"plain"`
	// Keys are the collapse keys with a stored message.
	Keys []collapseRef `json:"keys,omitempty"`
}

type collapseRef struct {
	Token string `json:"token"`
	Key   string `json:"key"`
	Seq   uint64 `json:"seq"` // of the message stored under it
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
// token and collapse key as an older one replaces it. The caps apply: a
// message under a fifth collapse key of its app on its device evicts the
// oldest, and a non-collapsible message beyond MaxPendingPerApp waiting
// drops the app's waiting non-collapsible ones (those flowing to live
// stay); what they drop is counted for a DeletedMessages notice. Each
// queued message is offered to live before the commit. Calls from many
// goroutines share one commit.
func (s *Store) Enqueue(ctx context.Context, msgs []Message, live Live) (queued []bool, err error) {
	var need int64
	for _, m := range msgs {
		need += messageCost(payloadSize(m.Data, m.Notification))
	}
	err = s.batch(func(tx *bolt.Tx) error {
		queued = make([]bool, len(msgs))
		if s.room(tx) < need {
			return ErrFull
		}
		for i := range msgs {
			var err error
			if queued[i], err = s.enqueueOne(tx, &msgs[i], live); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("enqueue %d messages: %w", len(msgs), err)
	}
	return queued, nil
}

// payloadSize counts keys and values of a message's data and notification.
func payloadSize(maps ...map[string]string) int {
	n := 0
	for _, m := range maps {
		for k, v := range m {
			n += len(k) + len(v)
		}
	}
	return n
}

// enqueueOne stores one message under the collapse rule and the caps, and
// offers it to live.
func (s *Store) enqueueOne(tx *bolt.Tx, m *Message, live Live) (bool, error) {
	queued, err := s.queueOne(tx, m, live)
	if queued && err == nil && live != nil {
		live.Offer(*m)
	}
	return queued, err
}

func (s *Store) queueOne(tx *bolt.Tx, m *Message, live Live) (bool, error) {
	reg, _, err := get[Registration](tx.Bucket(bucketRegs), []byte(m.Token))
	if err != nil {
		return false, err
	}
	if !reg.Active() || reg.Device != m.Device {
		return false, nil
	}
	bmsgs := tx.Bucket(bucketMsgs)
	if m.Seq, err = bmsgs.NextSequence(); err != nil {
		return false, err
	}
	if m.CollapseKey == "" {
		counts, err := loadPending(tx, m.Device, m.App)
		if err != nil {
			return false, err
		}
		if counts.Plain >= MaxPendingPerApp {
			// Looked up only here, where the cap may bite: most sends
			// find the app far below it.
			flow := storedFlowing(tx, live, m.Device, m.App)
			if counts.Plain-len(flow) >= MaxPendingPerApp {
				n, err := dropPlain(tx, m.Device, m.App, flow)
				if err != nil {
					return false, err
				}
				s.dropped(tx, DropCap, n)
			}
		}
		return true, putMessage(tx, *m)
	}
	if old := tx.Bucket(bucketCollapse).Get(join(m.Token, m.CollapseKey)); old != nil {
		if err := deleteMessageID(tx, old); err != nil {
			return false, err
		}
		s.dropped(tx, DropCollapsed, 1)
	}
	if err := putMessage(tx, *m); err != nil {
		return false, err
	}
	counts, err := loadPending(tx, m.Device, m.App)
	if err != nil || len(counts.Keys) <= MaxCollapseKeysPerApp {
		return true, err
	}
	oldest := counts.Keys[0]
	for _, k := range counts.Keys[1:] {
		if k.Seq < oldest.Seq {
			oldest = k
		}
	}
	if err := deleteMessageID(tx, tx.Bucket(bucketCollapse).Get(join(oldest.Token, oldest.Key))); err != nil {
		return false, err
	}
	s.dropped(tx, DropCap, 1)
	return true, addDeleted(tx, m.Device, m.App, 1)
}

// storedFlowing is the set of app's messages on device that live names
// flowing and that are still stored: an ack may have deleted some already.
func storedFlowing(tx *bolt.Tx, live Live, device, app string) map[string]bool {
	if live == nil {
		return nil
	}
	bmsgs := tx.Bucket(bucketMsgs)
	set := map[string]bool{}
	for _, id := range live.Flowing(device, app) {
		if bmsgs.Get([]byte(id)) != nil {
			set[id] = true
		}
	}
	return set
}

// dropPlain deletes the non-collapsible messages stored for app on device,
// but those in flight (flow), counts them as deleted and returns how many.
func dropPlain(tx *bolt.Tx, device, app string, flow map[string]bool) (int, error) {
	queued, err := queuedMessages(tx, device)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, m := range queued {
		if m.App != app || m.CollapseKey != "" || flow[m.ID] {
			continue
		}
		if err := deleteMessage(tx, m); err != nil {
			return 0, err
		}
		n++
	}
	return n, addDeleted(tx, device, app, n)
}

func pendingKey(device, app string) []byte { return join(device, app) }

func loadPending(tx *bolt.Tx, device, app string) (appPending, error) {
	p, _, err := get[appPending](tx.Bucket(bucketAppPending), pendingKey(device, app))
	return p, err
}

func savePending(tx *bolt.Tx, device, app string, p appPending) error {
	b := tx.Bucket(bucketAppPending)
	if p.Plain <= 0 && len(p.Keys) == 0 {
		return b.Delete(pendingKey(device, app))
	}
	return put(b, pendingKey(device, app), p)
}

// countMessage adds m to (or, with remove, takes it from) its app's counts.
func countMessage(tx *bolt.Tx, m Message, remove bool) error {
	p, err := loadPending(tx, m.Device, m.App)
	if err != nil {
		return err
	}
	switch {
	case m.CollapseKey == "" && remove:
		p.Plain = max(p.Plain-1, 0)
	case m.CollapseKey == "":
		p.Plain++
	default:
		p.Keys = slices.DeleteFunc(p.Keys, func(k collapseRef) bool { return k.Token == m.Token && k.Key == m.CollapseKey })
		if !remove {
			p.Keys = append(p.Keys, collapseRef{Token: m.Token, Key: m.CollapseKey, Seq: m.Seq})
		}
	}
	return savePending(tx, m.Device, m.App, p)
}

// recountPending rebuilds every app's counts from the stored messages.
func recountPending(tx *bolt.Tx) error {
	return tx.Bucket(bucketMsgs).ForEach(func(_, v []byte) error {
		m, err := decode[Message](v)
		if err != nil {
			return err
		}
		return countMessage(tx, m, false)
	})
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
		if err := tx.Bucket(bucketCollapse).Put(join(m.Token, m.CollapseKey), []byte(m.ID)); err != nil {
			return err
		}
	}
	return countMessage(tx, m, false)
}

// deleteMessageID deletes the message with this ID, if it is stored.
func deleteMessageID(tx *bolt.Tx, id []byte) error {
	if id == nil {
		return nil
	}
	m, ok, err := get[Message](tx.Bucket(bucketMsgs), id)
	if err != nil || !ok {
		return err
	}
	return deleteMessage(tx, m)
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
			if err := collapse.Delete(key); err != nil {
				return err
			}
		}
	}
	return countMessage(tx, m, true)
}

// queuedMessages returns a device's whole queue in order.
func queuedMessages(tx *bolt.Tx, device string) ([]Message, error) {
	msgs, _, err := pending(tx, device, 0, 0, nil)
	return msgs, err
}

func pending(tx *bolt.Tx, device string, after uint64, limit int, skip func(id string) bool) (out []Message, last uint64, err error) {
	last = after
	prefix := join(device, "")
	bmsgs := tx.Bucket(bucketMsgs)
	c := tx.Bucket(bucketQueue).Cursor()
	for k, id := c.Seek(queueKey(device, after+1)); bytes.HasPrefix(k, prefix); k, id = c.Next() {
		last = binary.BigEndian.Uint64(k[len(prefix):])
		// The queue holds the ID: a skipped message's record is not
		// read, which is most of the cost.
		if skip != nil && skip(string(id)) {
			continue
		}
		m, ok, err := get[Message](bmsgs, id)
		if err != nil {
			return nil, 0, err
		}
		if !ok {
			continue
		}
		out = append(out, m)
		if len(out) == limit {
			break
		}
	}
	return out, last, nil
}

// Pending returns up to limit messages (all when limit is 0) queued for a
// device with Seq above after, in order, leaving out without reading them
// those whose ID skip reports (none when skip is nil); last is the Seq of
// the last queue entry looked at, returned or left out, or after when none
// was. Expired messages not yet swept are included; the caller checks
// Expiry. skip runs inside the read transaction.
func (s *Store) Pending(ctx context.Context, device string, after uint64, limit int, skip func(id string) bool) (msgs []Message, last uint64, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		var err error
		msgs, last, err = pending(tx, device, after, limit, skip)
		return err
	})
	if err != nil {
		return nil, 0, fmt.Errorf("pending messages of device %s: %w", device, err)
	}
	return msgs, last, nil
}

// Ack deletes the device's messages and notices with these IDs and returns
// how many messages it found; IDs of other devices' messages are ignored.
// For each acked message that asked for a delivery receipt it queues the
// receipt for the sender, in the same transaction, and returns it for
// delivery.
func (s *Store) Ack(ctx context.Context, device string, ids []string, now time.Time) (acked int, receipts []Upstream, err error) {
	err = s.batch(func(tx *bolt.Tx) error {
		acked, receipts = 0, nil
		bmsgs := tx.Bucket(bucketMsgs)
		for _, id := range ids {
			if isNoticeID(id) {
				if err := ackNotice(tx, device, id); err != nil {
					return err
				}
				continue
			}
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
			if m.Receipt {
				u, err := putReceipt(tx, m, now)
				if err != nil {
					return err
				}
				receipts = append(receipts, u)
			}
		}
		return nil
	})
	if err != nil {
		return 0, nil, fmt.Errorf("ack %d messages of device %s: %w", len(ids), device, err)
	}
	return acked, receipts, nil
}

// AddReceipts queues delivery receipts for messages the device acked that
// were never stored (time to live 0), and returns them.
func (s *Store) AddReceipts(ctx context.Context, msgs []Message, now time.Time) (receipts []Upstream, err error) {
	err = s.batch(func(tx *bolt.Tx) error {
		receipts = nil
		for _, m := range msgs {
			u, err := putReceipt(tx, m, now)
			if err != nil {
				return err
			}
			receipts = append(receipts, u)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("queue %d delivery receipts: %w", len(msgs), err)
	}
	return receipts, nil
}

// sweepBatch bounds the deletions of one sweep transaction.
const sweepBatch = 1000

// SweepExpired deletes the messages and upstream dedupe entries that have
// expired by now, and returns when the next one expires (zero if none).
func (s *Store) SweepExpired(ctx context.Context, now time.Time) (next time.Time, removed int, err error) {
	for {
		var n int
		var more bool
		err := s.update(func(tx *bolt.Tx) error {
			var err error
			n, more, next, err = s.sweep(tx, now)
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

func (s *Store) sweep(tx *bolt.Tx, now time.Time) (removed int, more bool, next time.Time, err error) {
	expiry := tx.Bucket(bucketExpiry)
	var due [][]byte
	c := expiry.Cursor()
	for k, _ := c.First(); k != nil; k, _ = c.Next() {
		if len(due) == sweepBatch {
			return len(due), true, time.Time{}, s.sweepKeys(tx, due)
		}
		if t := time.Unix(0, int64(binary.BigEndian.Uint64(k))); t.After(now) {
			next = t
			break
		}
		due = append(due, bytes.Clone(k))
	}
	return len(due), false, next, s.sweepKeys(tx, due)
}

func (s *Store) sweepKeys(tx *bolt.Tx, due [][]byte) error {
	expiry, seen := tx.Bucket(bucketExpiry), tx.Bucket(bucketSeen)
	for _, k := range due {
		at, kind, id := k[:8], k[8], k[9:]
		switch kind {
		case expiryMessage:
			if err := deleteMessageID(tx, id); err != nil {
				return err
			}
			s.dropped(tx, DropExpired, 1)
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
