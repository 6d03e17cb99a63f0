package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
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
)

// schemaVersion is written into a new file; Open refuses files of another.
const schemaVersion = 1

// Buckets. Keys joined with sep never contain sep themselves: IDs, tokens
// and app IDs are free of control characters.
var (
	bucketMeta       = []byte("meta")          // "version" → schemaVersion
	bucketSenders    = []byte("senders")       // sender ID → Sender
	bucketSenderKeys = []byte("sender_keys")   // hash of server key → sender ID
	bucketDevices    = []byte("devices")       // device ID → Device
	bucketRegs       = []byte("regs")          // token → Registration, kept after unregister
	bucketRegIndex   = []byte("reg_index")     // device sep app sep sender → token of the active registration
	bucketMsgs       = []byte("msgs")          // message ID → Message
	bucketQueue      = []byte("queue")         // device sep seq → message ID
	bucketCollapse   = []byte("collapse")      // token sep collapse key → message ID
	bucketExpiry     = []byte("expiry")        // expiry kind id → nil, for the sweep
	bucketUpstream   = []byte("upstream")      // seq → Upstream
	bucketSeen       = []byte("upstream_seen") // device sep app sep id → expiry, for dedupe
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
	// fail. Zero means no cap.
	MaxSize int
}

// Store is the server's bbolt file. Its methods are safe for concurrent use.
type Store struct {
	db *bolt.DB
}

// Open opens or creates the store at path with mode 0600.
func Open(path string, opt Options) (*Store, error) {
	if opt.LockTimeout <= 0 {
		opt.LockTimeout = time.Second
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: opt.LockTimeout, MaxSize: opt.MaxSize})
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
		for _, name := range [][]byte{bucketMeta, bucketSenders, bucketSenderKeys, bucketDevices, bucketRegs,
			bucketRegIndex, bucketMsgs, bucketQueue, bucketCollapse, bucketExpiry, bucketUpstream, bucketSeen} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		v := meta.Get([]byte("version"))
		if v == nil {
			return meta.Put([]byte("version"), be64(schemaVersion))
		}
		if got := binary.BigEndian.Uint64(v); got != schemaVersion {
			return fmt.Errorf("schema version %d, this server reads %d", got, schemaVersion)
		}
		return nil
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	return &Store{db: db}, nil
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

func decode[T any](raw []byte) (T, error) {
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, fmt.Errorf("decode record: %w", err)
	}
	return v, nil
}

func put(b *bolt.Bucket, key []byte, v any) error {
	raw, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return b.Put(key, raw)
}
