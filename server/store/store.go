// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

var (
	// ErrNotFound is wrapped by lookups of a sender, device or registration
	// that does not exist.
	ErrNotFound = errors.New("not found")
	// ErrLocked means another process has the file open.
	ErrLocked = errors.New("store is in use by another process")
	// ErrCorrupt is wrapped when a record cannot be decoded: the file is
	// damaged or was written by something else. Retrying does not help.
	ErrCorrupt = errors.New("corrupt record")
	// ErrFull is wrapped when a store with a MaxSize has no room for more
	// messages. Deletions still work: they use the room kept back, so that
	// devices can drain the store.
	ErrFull = errors.New("store is full")
)

// schemaVersion is written into a new file; Open moves a file of an
// earlier version up (migrate) and refuses one of a later.
const schemaVersion = 3

// Buckets. Keys joined with sep never contain sep themselves: IDs, tokens
// and app IDs are free of control characters.
var (
	bucketMeta       = []byte("meta")          // "version" → schemaVersion
	bucketSenders    = []byte("senders")       // sender ID → Sender
	bucketSenderKeys = []byte("sender_keys")   // hash of server key → sender ID
	bucketDevices    = []byte("devices")       // device ID → Device
	bucketRegs       = []byte("regs")          // token → Registration, kept after unregister
	bucketRegIndex   = []byte("reg_index")     // device sep app sep sender → token of the active registration
	bucketMsgs       = []byte("msgs")          // message ID → Message, in a binary record (record.go)
	bucketQueue      = []byte("queue")         // device sep seq → message ID
	bucketCollapse   = []byte("collapse")      // token sep collapse key → message ID
	bucketExpiry     = []byte("expiry")        // expiry kind id → nil, for the sweep
	bucketUpstream   = []byte("upstream")      // seq → Upstream
	bucketSeen       = []byte("upstream_seen") // device sep app sep id → expiry, for dedupe
	bucketAppPending = []byte("app_pending")   // device sep app → appPending: what the caps count
	bucketDeleted    = []byte("deleted")       // device sep app → deletedNotice
	bucketRefresh    = []byte("token_refresh") // device sep app sep sender → refreshNotice
	bucketTopicSubs  = []byte("topic_subs")    // sender sep topic sep token → present
	bucketTokenTopic = []byte("token_topics")  // token sep topic → present
	bucketTopicMsgs  = []byte("topic_msgs")    // seq → TopicMessage, until fanned out
	// Since version 2.
	bucketCerts        = []byte("certs")         // certificate identity → CertBinding
	bucketEnrollKeys   = []byte("enroll_keys")   // enrollment key ID → EnrollKey
	bucketEnrollHashes = []byte("enroll_hashes") // hash of an enrollment key → its ID
	// Built at Open from the upstream queue when missing: what the
	// dispatcher reads a lane by, and what the cap on an app counts.
	bucketUpLanes  = []byte("upstream_lanes")  // device sep sender sep seq → nil
	bucketUpCounts = []byte("upstream_counts") // device sep app → the app's messages queued, receipts aside
)

const sep = 0

// Kinds of entries in bucketExpiry.
const (
	expiryMessage = 'm'
	expirySeen    = 's'
)

// Options tune Open.
type Options struct {
	// LockTimeout bounds the wait for the file lock; zero means one second.
	LockTimeout time.Duration
	// MaxSize caps the file in bytes; writes that would grow it further
	// fail. Messages are refused with ErrFull before that, while an eighth
	// of it (at least 128 KiB, at most half) is still free for the
	// deletions that acks and expiry make.
	// fail. Zero means no cap.
	MaxSize int
	// Observer, when set, is told of each commit and of the messages the
	// rules drop.
	Observer Observer
}

// Store is the server's bbolt file. Its methods are safe for concurrent use.
type Store struct {
	db       *bolt.DB
	maxSize  int64 // 0 for no cap
	reserve  int64 // bytes kept back for deletions
	pageSize int64
	obs      Observer
	group    *groupCommitter
}

// maxGroup bounds the writes that share a transaction, as bbolt's
// MaxBatchSize did.
const maxGroup = 1000

// Open opens or creates the store at path with mode 0600. An existing file
// is checked first: a damaged one is left as it is and the error wraps
// ErrDamaged.
func Open(path string, opt Options) (*Store, error) {
	if opt.LockTimeout <= 0 {
		opt.LockTimeout = time.Second
	}
	db, err := openFile(path, opt)
	if errors.Is(err, berrors.ErrTimeout) {
		return nil, fmt.Errorf("open store %s: %w", path, ErrLocked)
	}
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	// bbolt applies the mode only when it creates the file.
	if err := os.Chmod(path, 0o600); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		// A store from before the per-app caps has no counts yet.
		countPending := tx.Bucket(bucketAppPending) == nil
		indexUp := tx.Bucket(bucketUpLanes) == nil
		for _, name := range [][]byte{bucketMeta, bucketSenders, bucketSenderKeys, bucketDevices, bucketRegs,
			bucketRegIndex, bucketMsgs, bucketQueue, bucketCollapse, bucketExpiry, bucketUpstream, bucketSeen,
			bucketAppPending, bucketDeleted, bucketRefresh, bucketTopicSubs, bucketTokenTopic, bucketTopicMsgs,
			bucketCerts, bucketEnrollKeys, bucketEnrollHashes, bucketUpLanes, bucketUpCounts} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		if countPending {
			if err := recountPending(tx); err != nil {
				return err
			}
		}
		if indexUp {
			if err := indexUpstream(tx); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		v := meta.Get([]byte("version"))
		if v == nil {
			return meta.Put([]byte("version"), be64(schemaVersion))
		}
		got := binary.BigEndian.Uint64(v)
		if got > schemaVersion {
			return fmt.Errorf("schema version %d, this server reads %d and earlier", got, schemaVersion)
		}
		if err := migrate(tx, got); err != nil {
			return fmt.Errorf("move the store from schema version %d to %d: %w", got, schemaVersion, err)
		}
		return meta.Put([]byte("version"), be64(schemaVersion))
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	st := &Store{db: db, maxSize: int64(opt.MaxSize), pageSize: int64(db.Info().PageSize), obs: ObserverOrNone(opt.Observer),
		group: &groupCommitter{db: db, maxGroup: maxGroup}}
	if st.maxSize > 0 {
		st.reserve = min(max(st.maxSize/8, 128<<10), st.maxSize/2)
	}
	return st, nil
}

// migrate moves a store of schema version from up to schemaVersion, in the
// transaction that opens it; the buckets of the later version exist by
// then.
func migrate(tx *bolt.Tx, from uint64) error {
	if from < 2 {
		// Version 2 knows when a device was last seen, and removes the
		// devices not seen for a while: a device of version 1 counts as
		// seen when the store moved, not when it was created, so that
		// none is removed for having been quiet before it was watched.
		now := time.Now().UTC()
		err := rewrite(tx.Bucket(bucketDevices), func(dev *Device) bool {
			if !dev.LastSeen.IsZero() {
				return false
			}
			dev.LastSeen = now
			return true
		})
		if err != nil {
			return err
		}
	}
	if from < 3 {
		// Version 3 signs webhook POSTs with a secret of each sender:
		// senders from before get one, which their operator learns by
		// rotating it (docs/server-api.md).
		err := rewrite(tx.Bucket(bucketSenders), func(snd *Sender) bool {
			if snd.WebhookSecret != "" {
				return false
			}
			snd.WebhookSecret = NewWebhookSecret()
			return true
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// rewrite stores anew each record of b that change changed (returned
// true).
func rewrite[T any](b *bolt.Bucket, change func(*T) bool) error {
	type changed struct {
		key []byte
		v   T
	}
	var moved []changed
	err := b.ForEach(func(k, raw []byte) error {
		v, err := decode[T](raw)
		if err == nil && change(&v) {
			moved = append(moved, changed{bytes.Clone(k), v})
		}
		return err
	})
	if err != nil {
		return err
	}
	for _, m := range moved {
		if err := put(b, m.key, m.v); err != nil {
			return err
		}
	}
	return nil
}

// room is the number of bytes a write transaction may still use for new
// messages: what the file may grow by and what is free inside it, less
// the reserve for deletions. Without a cap it is as good as unlimited.
func (s *Store) room(tx *bolt.Tx) int64 {
	if s.maxSize == 0 {
		return math.MaxInt64
	}
	// The counts are those after the last write transaction: close enough.
	free := int64(s.db.Stats().FreePageN) * s.pageSize
	return s.maxSize - tx.Size() + free - s.reserve
}

// messageCost estimates what storing a message of this payload takes,
// with its index entries.
func messageCost(payload int) int64 { return int64(payload) + 1024 }

// update runs fn in a write transaction of its own.
func (s *Store) update(fn func(*bolt.Tx) error) error { return s.timed(s.db.Update, fn) }

// batch runs fn in a write transaction that other calls may share
// (groupCommitter): many writes, one fsync. fn may run more than once.
func (s *Store) batch(fn func(*bolt.Tx) error) error { return s.timed(s.group.do, fn) }

// timed runs fn with write and tells the observer how long it took to be
// durable, the wait for a shared commit included: that is what a send or
// an ack waits.
func (s *Store) timed(write func(func(*bolt.Tx) error) error, fn func(*bolt.Tx) error) error {
	start := time.Now()
	err := write(fn)
	if err == nil {
		s.obs.Committed(time.Since(start))
	}
	return err
}

// dropped tells the observer, once tx commits, of n messages dropped for
// reason.
func (s *Store) dropped(tx *bolt.Tx, reason DropReason, n int) {
	if n > 0 {
		tx.OnCommit(func() { s.obs.Dropped(reason, n) })
	}
}

// Stats counts the queued messages (a walk of the message bucket's pages,
// a few milliseconds for 100,000 messages: BenchmarkStats), finds the
// oldest by its ID, which begins with the time it was made, and reads the
// file's size and its free pages.
func (s *Store) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	err := s.db.View(func(tx *bolt.Tx) error {
		msgs := tx.Bucket(bucketMsgs)
		st.Messages, st.Bytes = msgs.Stats().KeyN, tx.Size()
		// As room counts it: after the last write transaction.
		st.Free = int64(s.db.Stats().FreePageN) * s.pageSize
		if _, v := msgs.Cursor().First(); v != nil {
			m, err := decode[Message](v)
			if err != nil {
				return err
			}
			st.Oldest = m.Sent
		}
		return ctx.Err()
	})
	if err != nil {
		return Stats{}, fmt.Errorf("read store stats: %w", err)
	}
	return st, nil
}

// Close closes the file. It waits for transactions in progress.
func (s *Store) Close() error { return s.db.Close() }

// Path is the file's path.
func (s *Store) Path() string { return s.db.Path() }

func be64(n uint64) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint64(b, n)
	return b
}

// join builds a compound key from parts separated by sep.
func join(parts ...string) []byte {
	n := len(parts) - 1
	for _, p := range parts {
		n += len(p)
	}
	k := make([]byte, 0, n)
	for i, p := range parts {
		if i > 0 {
			k = append(k, sep)
		}
		k = append(k, p...)
	}
	return k
}

// get decodes the record at key; ok is false when there is none.
func get[T any](b *bolt.Bucket, key []byte) (v T, ok bool, err error) {
	raw := b.Get(key)
	if raw == nil {
		return v, false, nil
	}
	v, err = decode[T](raw)
	return v, err == nil, err
}

// lookup reads one record in its own transaction.
func lookup[T any](db *bolt.DB, bucket, key []byte) (T, error) {
	var v T
	err := db.View(func(tx *bolt.Tx) error {
		var ok bool
		var err error
		v, ok, err = get[T](tx.Bucket(bucket), key)
		if err == nil && !ok {
			err = ErrNotFound
		}
		return err
	})
	return v, err
}

// decode reads a record: a queued message's is binary (record.go), every
// other JSON.
func decode[T any](raw []byte) (T, error) {
	var v T
	if m, ok := any(&v).(*Message); ok {
		// Apart from the return: Go leaves unsaid whether v would be
		// read before or after the call that fills it.
		err := decodeMessage(raw, m)
		return v, err
	}
	return decodeJSON[T](raw)
}

// decodeJSON is apart from decode so that the message decode[Message]
// returns stays off the heap: given to json, it would not.
func decodeJSON[T any](raw []byte) (T, error) {
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, fmt.Errorf("decode record: %w: %v", ErrCorrupt, err)
	}
	return v, nil
}

// put writes v's record: a queued message's binary (record.go), any other
// value's JSON.
func put(b *bolt.Bucket, key []byte, v any) error {
	var raw []byte
	switch m := v.(type) {
	case Message:
		raw = encodeMessage(nil, &m)
	case *Message:
		raw = encodeMessage(nil, m)
	default:
		var err error
		if raw, err = json.Marshal(v); err != nil {
			return err
		}
	}
	return b.Put(key, raw)
}
