// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"encoding/binary"
	"fmt"

	bolt "go.etcd.io/bbolt"
)

// Quota bounds the downstream messages the store holds for apps, so that
// no app, however much its senders send while it is away, fills the store
// for the others or for the bookkeeping of acks and upstream messages.
// A message's size is the size of its record. A zero field sets no bound.
type Quota struct {
	// AppMessages and AppBytes bound what one app holds.
	AppMessages int
	AppBytes    int64
	// Bytes bounds what all apps hold together.
	Bytes int64
	// Flowing, when set, names an app's held messages that its listener
	// has and has not acked yet. The bounds of one app are on what waits
	// for it, not on what flows to an app that keeps up: those do not
	// count towards them, and no bound drops them.
	Flowing func(app string) []string
}

// usage is what an app's inbox holds: how many messages, and their
// records' bytes. It is kept in the app's bucket (keyUsage), changed with
// every record put into or taken out of the inbox (hold, unhold) in the
// same transaction, and counted afresh at Open.
type usage struct{ n, bytes int64 }

func usageOf(app *bolt.Bucket) usage {
	v := app.Get(keyUsage)
	if len(v) != 16 {
		return usage{}
	}
	return usage{int64(binary.BigEndian.Uint64(v)), int64(binary.BigEndian.Uint64(v[8:]))}
}

func (u usage) put(app *bolt.Bucket) error {
	v := binary.BigEndian.AppendUint64(nil, uint64(max(u.n, 0)))
	return app.Put(keyUsage, binary.BigEndian.AppendUint64(v, uint64(max(u.bytes, 0))))
}

// hold puts a message record into the app's inbox under key and counts it.
func hold(app, inbox *bolt.Bucket, key, record []byte) error {
	u := usageOf(app)
	u.n++
	u.bytes += int64(len(record))
	return firstErr(inbox.Put(key, record), u.put(app))
}

// unhold takes the record under key out of the app's inbox and uncounts
// it; false when there was none. The indexes of the message are the
// caller's to update.
func unhold(app *bolt.Bucket, key []byte) (bool, error) {
	inbox := app.Bucket(bucketInbox)
	if inbox == nil {
		return false, nil
	}
	record := inbox.Get(key)
	if record == nil {
		return false, nil
	}
	u := usageOf(app)
	u.n--
	u.bytes -= int64(len(record))
	return true, firstErr(inbox.Delete(key), u.put(app))
}

// recount counts every app's inbox afresh: a count written by another
// version of the agent, or by none, is not trusted. The file is small and
// Open reads it whole anyway.
func recount(tx *bolt.Tx) error {
	apps := tx.Bucket(bucketApps)
	return apps.ForEachBucket(func(name []byte) error {
		app := apps.Bucket(name)
		var u usage
		if inbox := app.Bucket(bucketInbox); inbox != nil {
			err := inbox.ForEach(func(_, record []byte) error {
				u.n++
				u.bytes += int64(len(record))
				return nil
			})
			if err != nil {
				return err
			}
		}
		if u == usageOf(app) {
			return nil
		}
		return u.put(app)
	})
}

// quotaRun applies a Quota to the messages one transaction holds.
type quotaRun struct {
	q  Quota
	tx *bolt.Tx
	// apps is every app's usage and total their sum, kept only when the
	// quota bounds the total.
	apps    map[string]usage
	total   int64
	dropped Swept
}

func newQuotaRun(tx *bolt.Tx, q Quota) (*quotaRun, error) {
	r := &quotaRun{q: q, tx: tx, dropped: Swept{}}
	if q.Bytes <= 0 {
		return r, nil
	}
	r.apps = map[string]usage{}
	apps := tx.Bucket(bucketApps)
	err := apps.ForEachBucket(func(name []byte) error {
		if u := usageOf(apps.Bucket(name)); u.n > 0 {
			r.apps[string(name)] = u
			r.total += u.bytes
		}
		return nil
	})
	return r, err
}

// hold holds a message record for app, after dropping what it must to
// keep within the quota (makeRoom).
func (r *quotaRun) hold(app *bolt.Bucket, name string, key, record []byte) error {
	size := int64(len(record))
	if err := r.makeRoom(app, name, size); err != nil {
		return err
	}
	inbox, err := app.CreateBucketIfNotExists(bucketInbox)
	if err != nil {
		return err
	}
	if err := hold(app, inbox, key, record); err != nil {
		return err
	}
	r.counted(name, usage{1, size})
	return nil
}

// makeRoom drops held messages, oldest first, so that a record of size
// bytes for the app named fits: first the app's own while it would go over
// its bounds, then, while all apps together would go over theirs, those of
// whichever app holds the most bytes (the app itself, or the one that is
// crowding the others out). The new record is kept even when it alone is
// over a bound: the quota drops older messages, never the one arriving,
// which the agent acknowledges once it is stored.
func (r *quotaRun) makeRoom(app *bolt.Bucket, name string, size int64) error {
	for {
		u := usageOf(app)
		over := r.q.AppMessages > 0 && u.n+1 > int64(r.q.AppMessages) || r.q.AppBytes > 0 && u.bytes+size > r.q.AppBytes
		if over {
			// Looked up only here, where the quota may bite.
			f := r.flowing(app, name)
			u.n -= f.n
			u.bytes -= f.bytes
			over = r.q.AppMessages > 0 && u.n+1 > int64(r.q.AppMessages) || r.q.AppBytes > 0 && u.bytes+size > r.q.AppBytes
		}
		if !over || u.n <= 0 {
			break
		}
		if dropped, err := r.dropOldest(app, name); err != nil || !dropped {
			return err
		}
	}
	full := map[string]bool{} // apps with nothing left to drop
	for r.q.Bytes > 0 && r.total+size > r.q.Bytes {
		largest := ""
		for n, u := range r.apps {
			if full[n] {
				continue
			}
			if largest == "" || u.bytes > r.apps[largest].bytes || u.bytes == r.apps[largest].bytes && n < largest {
				largest = n
			}
		}
		if largest == "" {
			break
		}
		dropped, err := r.dropOldest(appBucket(r.tx, largest), largest)
		if err != nil {
			return err
		}
		full[largest] = !dropped
	}
	return nil
}

// flowing is the usage of the app's held messages that Quota.Flowing names.
func (r *quotaRun) flowing(app *bolt.Bucket, name string) usage {
	var u usage
	inbox := app.Bucket(bucketInbox)
	if r.q.Flowing == nil || inbox == nil {
		return u
	}
	seen := r.tx.Bucket(bucketSeen)
	for _, id := range r.q.Flowing(name) {
		v := seen.Get([]byte(id))
		if v == nil {
			continue
		}
		e, err := decodeSeen(v)
		if err != nil || e.app != name || e.seq == 0 {
			continue
		}
		if record := inbox.Get(encodeUint64(e.seq)); record != nil {
			u.n++
			u.bytes += int64(len(record))
		}
	}
	return u
}

// dropOldest drops the app's oldest held message that is not flowing to
// its listener, counting it for the app's next DeletedMessages
// (TakeDropped); false when there is none. Its ID stays seen, so that a
// redelivery is still a duplicate.
func (r *quotaRun) dropOldest(app *bolt.Bucket, name string) (bool, error) {
	inbox := app.Bucket(bucketInbox)
	if inbox == nil || func() bool { k, _ := inbox.Cursor().First(); return k == nil }() {
		// Nothing to drop after all: the count was wrong. Right it, so
		// that the quota does not look here again.
		r.counted(name, usage{-usageOf(app).n, -usageOf(app).bytes})
		return false, usage{}.put(app)
	}
	var flow map[string]bool
	if r.q.Flowing != nil {
		flow = map[string]bool{}
		for _, id := range r.q.Flowing(name) {
			flow[id] = true
		}
	}
	var m Message
	var key, record []byte
	c := inbox.Cursor()
	for key, record = c.First(); key != nil; key, record = c.Next() {
		if err := decodeMessage(record, &m); err != nil {
			return false, err
		}
		if !flow[m.ID] {
			break
		}
	}
	if key == nil {
		return false, nil // every one flows to the app's listener
	}
	size := int64(len(record))
	if _, err := unhold(app, bytes.Clone(key)); err != nil {
		return false, err
	}
	err := firstErr(
		r.tx.Bucket(bucketHeld).Delete(expiryKey(m.Expires, m.ID)),
		app.Put(keyDropped, encodeUint64(decodeUint64(app.Get(keyDropped))+1)),
	)
	if err != nil {
		return false, err
	}
	r.dropped[name] = append(r.dropped[name], m.ID)
	r.counted(name, usage{-1, -size})
	return true, nil
}

// counted follows a change of the app's usage in the total.
func (r *quotaRun) counted(name string, d usage) {
	if r.apps == nil {
		return
	}
	u := r.apps[name]
	u.n += d.n
	u.bytes += d.bytes
	r.total += d.bytes
	if u.n <= 0 {
		delete(r.apps, name)
		return
	}
	r.apps[name] = u
}

// Check reports whether q is usable: no bound negative, and one app's
// bytes within all apps' together.
func (q Quota) Check() error {
	switch {
	case q.AppMessages < 0 || q.AppBytes < 0 || q.Bytes < 0:
		return fmt.Errorf("quota %+v: a bound is negative", q)
	case q.AppBytes > 0 && q.Bytes > 0 && q.AppBytes > q.Bytes:
		return fmt.Errorf("quota: %d bytes for one app is more than the %d bytes for all apps together", q.AppBytes, q.Bytes)
	}
	return nil
}
