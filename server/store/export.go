// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Record is one thing Export reads; exactly one field is set.
type Record struct {
	Sender *Sender
	Device *Device
	// Registration is every registration, active or not (ended ones keep
	// answering NotRegistered), with the topics it is subscribed to.
	Registration *Registration
	Topics       []string
	// TopicsAdded are when the registration's subscriptions were made,
	// by topic; a subscription from before dates were kept has none.
	TopicsAdded  map[string]time.Time
	Queue        *Queue
	Upstream     *Upstream
	Seen         *Seen
	TopicMessage *TopicMessage
	EnrollKey    *EnrollKey
	Cert         *CertBinding
}

// Queue is what waits for one device: its messages in order, and what it
// must be told.
type Queue struct {
	Device   string
	Messages []Message
	// Refresh are the token refreshes it has not acked.
	Refresh []Notice
	// Deleted are its apps' counts of dropped messages.
	Deleted []DeletedCount
}

// DeletedCount is one app's count of dropped messages on one device: a
// notice sealed with an ID and a count the device may hold already, and
// what was dropped since.
type DeletedCount struct {
	App         string
	Pending     int
	SealedID    string
	SealedCount int
}

// Seen is an upstream message ID seen lately, which a repeat until Until
// is a duplicate of.
type Seen struct {
	Device, App, ID string
	Until           time.Time
}

// Export calls fn for everything the store holds, in one read transaction:
// senders, devices and their certificate bindings, enrollment keys,
// registrations, the queue of each device, upstream
// messages, upstream IDs seen, and topic messages not yet fanned out. It
// is how tether-server migrate moves a store into a cluster.
func (s *Store) Export(ctx context.Context, fn func(Record) error) error {
	err := s.db.View(func(tx *bolt.Tx) error {
		for _, step := range []func(*bolt.Tx, func(Record) error) error{
			exportEach[Sender](bucketSenders, func(v *Sender) Record { return Record{Sender: v} }),
			exportEach[Device](bucketDevices, func(v *Device) Record { return Record{Device: v} }),
			exportEach[CertBinding](bucketCerts, func(v *CertBinding) Record { return Record{Cert: v} }),
			exportEach[EnrollKey](bucketEnrollKeys, func(v *EnrollKey) Record { return Record{EnrollKey: v} }),
			exportRegistrations, exportQueues,
			exportEach[Upstream](bucketUpstream, func(v *Upstream) Record { return Record{Upstream: v} }),
			exportSeen,
			exportEach[TopicMessage](bucketTopicMsgs, func(v *TopicMessage) Record { return Record{TopicMessage: v} }),
		} {
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := step(tx, fn); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("export the store: %w", err)
	}
	return nil
}

// exportEach exports every record of a bucket.
func exportEach[T any](bucket []byte, wrap func(*T) Record) func(*bolt.Tx, func(Record) error) error {
	return func(tx *bolt.Tx, fn func(Record) error) error {
		return tx.Bucket(bucket).ForEach(func(_, raw []byte) error {
			v, err := decode[T](raw)
			if err != nil {
				return err
			}
			return fn(wrap(&v))
		})
	}
}

func exportRegistrations(tx *bolt.Tx, fn func(Record) error) error {
	return tx.Bucket(bucketRegs).ForEach(func(_, raw []byte) error {
		reg, err := decode[Registration](raw)
		if err != nil {
			return err
		}
		rec := Record{Registration: &reg}
		for _, sub := range subscriptionsOf(tx, reg.Token) {
			rec.Topics = append(rec.Topics, sub.Topic)
			if !sub.Added.IsZero() {
				if rec.TopicsAdded == nil {
					rec.TopicsAdded = map[string]time.Time{}
				}
				rec.TopicsAdded[sub.Topic] = sub.Added
			}
		}
		return fn(rec)
	})
}

// exportQueues exports, device by device, the queued messages, the token
// refreshes and the deleted counts.
func exportQueues(tx *bolt.Tx, fn func(Record) error) error {
	return tx.Bucket(bucketDevices).ForEach(func(id, _ []byte) error {
		q := Queue{Device: string(id)}
		var err error
		if q.Messages, err = queuedMessages(tx, q.Device); err != nil {
			return err
		}
		if q.Refresh, err = refreshNotices(tx, q.Device); err != nil {
			return err
		}
		prefix := join(q.Device, "")
		c := tx.Bucket(bucketDeleted).Cursor()
		for k, v := c.Seek(prefix); bytes.HasPrefix(k, prefix); k, v = c.Next() {
			d, err := decode[deletedNotice](v)
			if err != nil {
				return err
			}
			q.Deleted = append(q.Deleted, DeletedCount{App: string(k[len(prefix):]), Pending: d.Pending, SealedID: d.SealedID, SealedCount: d.SealedCount})
		}
		if len(q.Messages) == 0 && len(q.Refresh) == 0 && len(q.Deleted) == 0 {
			return nil
		}
		return fn(Record{Queue: &q})
	})
}

func exportSeen(tx *bolt.Tx, fn func(Record) error) error {
	return tx.Bucket(bucketSeen).ForEach(func(k, v []byte) error {
		parts := bytes.SplitN(k, []byte{sep}, 3)
		if len(parts) != 3 || len(v) != 8 {
			return fmt.Errorf("upstream sighting key: %w", ErrCorrupt)
		}
		until := time.Unix(0, int64(binary.BigEndian.Uint64(v))).UTC()
		return fn(Record{Seen: &Seen{Device: string(parts[0]), App: string(parts[1]), ID: string(parts[2]), Until: until}})
	})
}
