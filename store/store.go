// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Sentinel errors callers branch on; every error the store returns wraps
// one of them or the underlying bbolt or file-system error.
var (
	// ErrNotFound: no such credentials, app, registration or message.
	ErrNotFound = errors.New("not found")
	// ErrOwned: the app is bound to another owner than the one given.
	ErrOwned = errors.New("app owned by another user")
	// ErrOutboxFull: the app already has the maximum of pending upstream
	// messages.
	ErrOutboxFull = errors.New("outbox full")
	// ErrDuplicate: the app already has a pending upstream message with
	// that ID.
	ErrDuplicate = errors.New("duplicate message id")
)

var (
	bucketDevice = []byte("device")
	bucketApps   = []byte("apps")
	bucketSeen   = []byte("seen")
	bucketExpiry = []byte("expiry")
	bucketHeld   = []byte("held")
	// bucketArrivals lists the seen IDs in the order they came (a
	// sequence number → ID), so that those of messages no longer held can
	// go oldest first (Writes.SeenIDs).
	bucketArrivals = []byte("arrivals")

	keyServer   = []byte("server")
	keyDeviceID = []byte("device_id")
	keySecret   = []byte("secret")
	keyTimeMark = []byte("time_mark")

	// Inside an app's bucket.
	keyOwner      = []byte("owner")
	keyDropped    = []byte("dropped")
	keyUsage      = []byte("usage")
	bucketSenders = []byte("senders")
	// bucketStale marks the senders whose token was the device's before
	// it checked in anew (ForgetCredentials), with that token.
	bucketStale = []byte("stale")
	// bucketRefreshed holds the tokens that changed (sender → token) and
	// that the app has not been told of yet (TakeRefreshed).
	bucketRefreshed = []byte("refreshed")
	// bucketWebPush holds what a Web Push registration has besides its
	// token (sender → webPushRecord).
	bucketWebPush = []byte("webpush")
	bucketInbox   = []byte("inbox")
	bucketOutbox  = []byte("outbox")
)

// lockTimeout bounds the wait for the file lock: a second agent on the same
// file gets an error instead of hanging.
const lockTimeout = 2 * time.Second

// Store is the agent's bbolt file. Its methods are safe for concurrent use.
type Store struct {
	db *bolt.DB
}

// Open opens or creates the store at path, creating its directory with mode
// 0700 and the file with mode 0600 (an existing file is set to 0600 too:
// it holds secrets). An existing file is checked first: a damaged one is
// left as it is and the error wraps ErrDamaged.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("open store: %w", err)
	}
	db, err := openFile(path)
	if err != nil {
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: %w", path, err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, name := range [][]byte{bucketDevice, bucketApps, bucketSeen, bucketExpiry, bucketHeld, bucketArrivals} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		return recount(tx)
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("open store %s: create buckets: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the file; it waits for transactions in progress.
func (s *Store) Close() error {
	if err := s.db.Close(); err != nil {
		return fmt.Errorf("close store: %w", err)
	}
	return nil
}

// Credentials identify the device to the connection server at Server.
type Credentials struct {
	Server   string
	DeviceID string
	Secret   string
}

// Credentials returns the stored credentials, or ErrNotFound before the
// first check-in.
func (s *Store) Credentials() (Credentials, error) {
	var c Credentials
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevice)
		c = Credentials{
			Server:   string(b.Get(keyServer)),
			DeviceID: string(b.Get(keyDeviceID)),
			Secret:   string(b.Get(keySecret)),
		}
		if c.DeviceID == "" {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return Credentials{}, fmt.Errorf("read credentials: %w", err)
	}
	return c, nil
}

// SetCredentials stores the credentials of a check-in. Registration tokens
// belong to the device and server that issued them: when the device ID or
// the server changes, every registration is dropped in the same transaction
// (app owners, held and pending messages stay). SetServer is for the same
// device at a server known by other URLs. After ForgetCredentials there
// are no credentials to change: the registrations stay, stale.
func (s *Store) SetCredentials(c Credentials) error {
	if c.Server == "" || c.DeviceID == "" || c.Secret == "" {
		return fmt.Errorf("store credentials: server, device ID and secret are required")
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevice)
		oldID, oldServer := b.Get(keyDeviceID), b.Get(keyServer)
		if oldID != nil && (string(oldID) != c.DeviceID || string(oldServer) != c.Server) {
			if err := dropRegistrations(tx); err != nil {
				return err
			}
		}
		return firstErr(
			b.Put(keyServer, []byte(c.Server)),
			b.Put(keyDeviceID, []byte(c.DeviceID)),
			b.Put(keySecret, []byte(c.Secret)),
		)
	})
	if err != nil {
		return fmt.Errorf("store credentials: %w", err)
	}
	return nil
}

// SetServer replaces the server of device deviceID's stored credentials,
// keeping its secret, its registrations and every message: the device is
// the same at a server now known by other URLs, such as a cluster whose
// list of nodes changed (SetCredentials would take that for another server
// and drop the registrations). It fails with ErrNotFound when the store
// holds no credentials, or another device's.
func (s *Store) SetServer(deviceID, server string) error {
	if server == "" {
		return fmt.Errorf("store server of device %q: server is required", deviceID)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevice)
		if id := b.Get(keyDeviceID); id == nil || string(id) != deviceID {
			return ErrNotFound
		}
		return b.Put(keyServer, []byte(server))
	})
	if err != nil {
		return fmt.Errorf("store server of device %q: %w", deviceID, err)
	}
	return nil
}

// ForgetCredentials drops the credentials of device deviceID, which the
// server no longer knows, so that the device checks in anew, and marks
// every registration stale in the same transaction: its token was that
// device's. The registrations, their owners and every message stay; the
// next SetCredentials keeps them, and the agent registers each stale one
// again (Register clears the mark). It fails with ErrNotFound when the
// store holds no credentials, or another device's.
func (s *Store) ForgetCredentials(deviceID string) error {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketDevice)
		if id := b.Get(keyDeviceID); id == nil || string(id) != deviceID {
			return ErrNotFound
		}
		if err := firstErr(b.Delete(keyServer), b.Delete(keyDeviceID), b.Delete(keySecret)); err != nil {
			return err
		}
		return eachRegistered(tx, func(_ []byte, b, senders *bolt.Bucket) error {
			stale, err := b.CreateBucketIfNotExists(bucketStale)
			if err != nil {
				return err
			}
			return senders.ForEach(func(sender, token []byte) error { return stale.Put(bytes.Clone(sender), bytes.Clone(token)) })
		})
	})
	if err != nil {
		return fmt.Errorf("forget credentials of device %q: %w", deviceID, err)
	}
	return nil
}

// eachRegistered calls fn for each app that has registrations, with the
// app's bucket and its senders.
func eachRegistered(tx *bolt.Tx, fn func(app []byte, b, senders *bolt.Bucket) error) error {
	apps := tx.Bucket(bucketApps)
	return apps.ForEachBucket(func(app []byte) error {
		b := apps.Bucket(app)
		if senders := b.Bucket(bucketSenders); senders != nil {
			return fn(app, b, senders)
		}
		return nil
	})
}

// dropRegistrations drops every app's registrations, with what is kept
// about them (stale marks, refreshed tokens not told yet).
func dropRegistrations(tx *bolt.Tx) error {
	apps := tx.Bucket(bucketApps)
	return apps.ForEachBucket(func(app []byte) error {
		b := apps.Bucket(app)
		for _, name := range [][]byte{bucketSenders, bucketStale, bucketRefreshed, bucketWebPush} {
			if b.Bucket(name) == nil {
				continue
			}
			if err := b.DeleteBucket(name); err != nil {
				return err
			}
		}
		return nil
	})
}

// Registration is the token of (App, Sender), held for the app's owner.
type Registration struct {
	App    string
	Sender string
	Token  string
	// Owner is the Unix UID the app is bound to.
	Owner uint32
	// Stale marks a token the device had before it checked in anew
	// (ForgetCredentials); the agent registers it again. Register ignores
	// it.
	Stale bool
	// Endpoint is the URL app servers push to, for a registration with
	// the server's Web Push sender; VAPID the app server's public key it
	// was registered with, if any.
	Endpoint string
	VAPID    string
}

// webPushRecord is the value of a sender in bucketWebPush.
type webPushRecord struct {
	Endpoint string `json:"endpoint"`
	VAPID    string `json:"vapid,omitempty"`
}

// Register stores a registration. The first registration of an app binds
// the app to r.Owner; a later one must name the same owner, else ErrOwned
// and nothing changes. Registering a stale registration again clears its
// mark and, when the token changed, keeps the new one for the app to be
// told (TakeRefreshed), in the same transaction.
func (s *Store) Register(r Registration) error {
	if r.App == "" || r.Sender == "" || r.Token == "" {
		return fmt.Errorf("register app %q sender %q: app, sender and token are required", r.App, r.Sender)
	}
	err := s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.Bucket(bucketApps).CreateBucketIfNotExists([]byte(r.App))
		if err != nil {
			return err
		}
		if v := b.Get(keyOwner); v != nil {
			if decodeUint32(v) != r.Owner {
				return ErrOwned
			}
		} else if err := b.Put(keyOwner, encodeUint32(r.Owner)); err != nil {
			return err
		}
		senders, err := b.CreateBucketIfNotExists(bucketSenders)
		if err != nil {
			return err
		}
		sender := []byte(r.Sender)
		if stale := b.Bucket(bucketStale); stale != nil && stale.Get(sender) != nil {
			if err := stale.Delete(sender); err != nil {
				return err
			}
			if old := senders.Get(sender); string(old) != r.Token {
				if err := noteRefreshed(b, sender, []byte(r.Token)); err != nil {
					return err
				}
			}
		}
		if err := putWebPush(b, sender, r); err != nil {
			return err
		}
		return senders.Put(sender, []byte(r.Token))
	})
	if err != nil {
		return fmt.Errorf("register app %q sender %q: %w", r.App, r.Sender, err)
	}
	return nil
}

// putWebPush keeps r's endpoint and VAPID key in the app's bucket b, or
// forgets those of an earlier registration when r has none.
func putWebPush(b *bolt.Bucket, sender []byte, r Registration) error {
	if r.Endpoint == "" {
		if wp := b.Bucket(bucketWebPush); wp != nil {
			return wp.Delete(sender)
		}
		return nil
	}
	wp, err := b.CreateBucketIfNotExists(bucketWebPush)
	if err != nil {
		return err
	}
	v, err := json.Marshal(webPushRecord{Endpoint: r.Endpoint, VAPID: r.VAPID})
	if err != nil {
		return err
	}
	return wp.Put(sender, v)
}

// webPush fills in reg's endpoint and VAPID key from the app's bucket b.
func webPush(b *bolt.Bucket, reg *Registration) error {
	wp := b.Bucket(bucketWebPush)
	if wp == nil {
		return nil
	}
	v := wp.Get([]byte(reg.Sender))
	if v == nil {
		return nil
	}
	var rec webPushRecord
	if err := json.Unmarshal(v, &rec); err != nil {
		return fmt.Errorf("decode the web push record of app %q: %w", reg.App, err)
	}
	reg.Endpoint, reg.VAPID = rec.Endpoint, rec.VAPID
	return nil
}

// Registration returns the registration of (app, sender), or ErrNotFound.
func (s *Store) Registration(app, sender string) (Registration, error) {
	var reg Registration
	err := s.db.View(func(tx *bolt.Tx) error {
		token := senderToken(tx, app, sender)
		if token == nil {
			return ErrNotFound
		}
		b := appBucket(tx, app)
		reg = Registration{App: app, Sender: sender, Token: string(token), Owner: decodeUint32(b.Get(keyOwner))}
		if stale := b.Bucket(bucketStale); stale != nil && stale.Get([]byte(sender)) != nil {
			reg.Stale = true
		}
		return webPush(b, &reg)
	})
	if err != nil {
		return Registration{}, fmt.Errorf("registration of app %q sender %q: %w", app, sender, err)
	}
	return reg, nil
}

// Owner returns the Unix UID the app is bound to, or ErrNotFound for an app
// never registered. An app stays bound after its last unregistration.
func (s *Store) Owner(app string) (uint32, error) {
	var uid uint32
	err := s.db.View(func(tx *bolt.Tx) error {
		b := appBucket(tx, app)
		if b == nil || b.Get(keyOwner) == nil {
			return ErrNotFound
		}
		uid = decodeUint32(b.Get(keyOwner))
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("owner of app %q: %w", app, err)
	}
	return uid, nil
}

// Registrations returns every registration, app by app, with its owner
// and whether it is stale.
func (s *Store) Registrations() ([]Registration, error) {
	var out []Registration
	err := s.db.View(func(tx *bolt.Tx) error {
		return eachRegistered(tx, func(app []byte, b, senders *bolt.Bucket) error {
			stale := b.Bucket(bucketStale)
			owner := decodeUint32(b.Get(keyOwner))
			return senders.ForEach(func(sender, token []byte) error {
				reg := Registration{
					App: string(app), Sender: string(sender), Token: string(token), Owner: owner,
					Stale: stale != nil && stale.Get(sender) != nil,
				}
				out = append(out, reg)
				return webPush(b, &out[len(out)-1])
			})
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read registrations: %w", err)
	}
	return out, nil
}

// Token returns the registration token of (app, sender), or ErrNotFound.
func (s *Store) Token(app, sender string) (string, error) {
	var token string
	err := s.db.View(func(tx *bolt.Tx) error {
		token = string(senderToken(tx, app, sender))
		if token == "" {
			return ErrNotFound
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("token of app %q sender %q: %w", app, sender, err)
	}
	return token, nil
}

// Unregister drops the registration of (app, sender) and the held messages
// from that sender to that app, and returns the dropped messages' IDs.
// Their IDs stay in the seen set, so a redelivery is still recognised.
// The app stays bound to its owner.
func (s *Store) Unregister(app, sender string) ([]string, error) {
	var dropped []string
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := appBucket(tx, app)
		if senderToken(tx, app, sender) == nil {
			return ErrNotFound
		}
		for _, name := range [][]byte{bucketSenders, bucketStale, bucketRefreshed, bucketWebPush} {
			if kept := b.Bucket(name); kept != nil {
				if err := kept.Delete([]byte(sender)); err != nil {
					return err
				}
			}
		}
		inbox := b.Bucket(bucketInbox)
		if inbox == nil {
			return nil
		}
		var keys [][]byte
		err := inbox.ForEach(func(k, v []byte) error {
			var m Message
			if err := decodeMessage(v, &m); err != nil {
				return err
			}
			if m.From == sender {
				keys = append(keys, k)
				dropped = append(dropped, m.ID)
				return tx.Bucket(bucketHeld).Delete(expiryKey(m.Expires, m.ID))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range keys {
			if _, err := unhold(b, k); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("unregister app %q sender %q: %w", app, sender, err)
	}
	return dropped, nil
}

// Message is one downstream message as the agent holds it for its app.
// Its record is binary (record.go); the JSON tags are those of the records
// of earlier versions, which the store still reads.
type Message struct {
	// Seq orders an app's messages by arrival; AddMessages sets it.
	Seq uint64 `json:"-"`
	ID  string `json:"id"`
	App string `json:"app"`
	// From is the sender ID.
	From string `json:"from"`
	// Token is the registration the server delivered the message to;
	// AddMessages checks it and does not store it.
	Token       string            `json:"-"`
	CollapseKey string            `json:"collapse_key,omitempty"`
	Data        map[string]string `json:"data,omitempty"`
	Priority    string            `json:"priority,omitempty"`
	// SentTime is when the app server sent it, Unix milliseconds by the
	// server's clock; zero when unknown.
	SentTime     int64             `json:"sent_time,omitempty"`
	Notification map[string]string `json:"notification,omitempty"`
	Topic        string            `json:"topic,omitempty"`
	// Raw is the binary payload, a Web Push message's body.
	Raw []byte `json:"raw,omitempty"`
	// TTL is the time to live left at receipt, in seconds.
	TTL      int64     `json:"ttl"`
	Received time.Time `json:"received"`
	// Expires is when the message and its seen entry go.
	Expires time.Time `json:"expires"`
}

// Outcome is what AddMessages did with one message.
type Outcome int

const (
	// Stored: the message is new and now held for its app.
	Stored Outcome = iota
	// Duplicate: the message ID was seen before; nothing changed.
	Duplicate
	// NoRegistration: the message's (app, sender) has no registration with
	// its token, so no app can read it. It is not held, but its ID is now
	// seen, so a redelivery counts as a Duplicate.
	NoRegistration
)

func (o Outcome) String() string {
	switch o {
	case Stored:
		return "stored"
	case Duplicate:
		return "duplicate"
	case NoRegistration:
		return "no registration"
	}
	return fmt.Sprintf("outcome(%d)", int(o))
}

// AddMessages stores a batch of downstream messages in one transaction and
// reports one outcome per message, in order. A message whose ID was seen
// before, earlier in the batch included, is a Duplicate. Stored messages
// get their Seq set in msgs.
//
// Within q, making room for a message drops older held messages in the
// same transaction (Quota), and AddMessages returns their IDs by app; each
// app's count of messages dropped unread grows by its share (TakeDropped).
// A message of the batch may be among them.
func (s *Store) AddMessages(msgs []Message, q Quota) ([]Outcome, Swept, error) {
	return s.Commit(Writes{Messages: msgs, Quota: q})
}

// Writes are what Commit does in one transaction.
type Writes struct {
	// Messages are stored within Quota, as AddMessages does.
	Messages []Message
	Quota    Quota
	// Acks are, by app, the IDs of held messages the app acknowledged,
	// removed as Ack does, after Messages are stored.
	Acks map[string][]string
	// SeenIDs, when above zero, bounds the IDs the store keeps of
	// messages it no longer holds (acknowledged, dropped, or for no
	// registration), with which it recognises a redelivery as a
	// Duplicate: past it the oldest to arrive go before their time to
	// live runs out. The server redelivers only what it has not had the
	// agent's ack for, at most its window of the latest; a redelivery of
	// an ID gone is stored and handed to its app again, a duplicate, never
	// a loss. The IDs of held messages are always kept. At zero, every ID
	// is kept until its time to live runs out.
	SeenIDs int
}

// Commit stores w.Messages and then removes what w.Acks names in one
// transaction, with one commit to disk for all of them. It reports what
// AddMessages reports for w.Messages.
func (s *Store) Commit(w Writes) ([]Outcome, Swept, error) {
	outcomes := make([]Outcome, len(w.Messages))
	var dropped Swept
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		if dropped, err = addMessages(tx, w.Messages, w.Quota, w.SeenIDs > 0, outcomes); err != nil {
			return err
		}
		for _, app := range slices.Sorted(maps.Keys(w.Acks)) {
			if _, err := ackHeld(tx, app, w.Acks[app]); err != nil {
				return err
			}
		}
		if w.SeenIDs > 0 {
			return trimSeen(tx, w.SeenIDs)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("store %d downstream messages and the acks of %d apps: %w", len(w.Messages), len(w.Acks), err)
	}
	return outcomes, dropped, nil
}

// addMessages is AddMessages inside tx; it fills in outcomes. With
// ordered, it lists the new seen IDs in order of arrival, for trimSeen.
func addMessages(tx *bolt.Tx, msgs []Message, q Quota, ordered bool, outcomes []Outcome) (Swept, error) {
	seen := tx.Bucket(bucketSeen)
	index := tx.Bucket(bucketExpiry)
	quota, err := newQuotaRun(tx, q)
	if err != nil {
		return nil, err
	}
	var latest time.Time
	for i := range msgs {
		m := &msgs[i]
		if m.ID == "" || m.App == "" {
			return nil, fmt.Errorf("message without ID or app")
		}
		if m.Received.After(latest) {
			latest = m.Received
		}
		if seen.Get([]byte(m.ID)) != nil {
			outcomes[i] = Duplicate
			continue
		}
		var seq uint64
		if tok := senderToken(tx, m.App, m.From); tok == nil || string(tok) != m.Token {
			outcomes[i] = NoRegistration
		} else {
			app := appBucket(tx, m.App)
			inbox, err := app.CreateBucketIfNotExists(bucketInbox)
			if err != nil {
				return nil, err
			}
			if seq, err = inbox.NextSequence(); err != nil {
				return nil, err
			}
			if err := quota.hold(app, m.App, encodeUint64(seq), encodeMessage(nil, m)); err != nil {
				return nil, err
			}
			if err := tx.Bucket(bucketHeld).Put(expiryKey(m.Expires, m.ID), nil); err != nil {
				return nil, err
			}
			m.Seq = seq
			outcomes[i] = Stored
		}
		entry := seenEntry{expires: m.Expires, app: m.App, seq: seq}
		if err := seen.Put([]byte(m.ID), entry.encode()); err != nil {
			return nil, err
		}
		if err := index.Put(expiryKey(m.Expires, m.ID), nil); err != nil {
			return nil, err
		}
		if ordered {
			if err := arrived(tx, m.ID); err != nil {
				return nil, err
			}
		}
	}
	return quota.dropped, advanceTimeMark(tx, latest)
}

// Fresh reports, message by message, which of msgs AddMessages would store
// now: an ID not seen before, earlier in msgs included, and the token of
// its app and sender. It reads and writes nothing else, so that a message
// may be handed to its app while the transaction that stores it runs.
func (s *Store) Fresh(msgs []Message) ([]bool, error) {
	fresh := make([]bool, len(msgs))
	err := s.db.View(func(tx *bolt.Tx) error {
		seen := tx.Bucket(bucketSeen)
		batch := make(map[string]bool, len(msgs))
		for i, m := range msgs {
			if batch[m.ID] || seen.Get([]byte(m.ID)) != nil {
				continue
			}
			batch[m.ID] = true
			tok := senderToken(tx, m.App, m.From)
			fresh[i] = m.ID != "" && tok != nil && string(tok) == m.Token
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look up %d downstream messages: %w", len(msgs), err)
	}
	return fresh, nil
}

// Inbox returns up to limit messages held for app with Seq above after, in
// arrival order, skipping those expired at now.
func (s *Store) Inbox(app string, after uint64, limit int, now time.Time) ([]Message, error) {
	var out []Message
	err := s.db.View(func(tx *bolt.Tx) error {
		b := appBucket(tx, app)
		if b == nil || b.Bucket(bucketInbox) == nil {
			return nil
		}
		c := b.Bucket(bucketInbox).Cursor()
		for k, v := c.Seek(encodeUint64(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			var m Message
			if err := decodeMessage(v, &m); err != nil {
				return err
			}
			if expired(m.Expires, now) {
				continue
			}
			m.Seq = decodeUint64(k)
			out = append(out, m)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read inbox of app %q: %w", app, err)
	}
	return out, nil
}

// Ack removes the app's held messages with these IDs in one transaction and
// reports how many it removed. IDs that are not held for app (acked before,
// expired, another app's, unknown) are skipped: acking is idempotent.
func (s *Store) Ack(app string, ids []string) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bolt.Tx) error {
		var err error
		n, err = ackHeld(tx, app, ids)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("ack %d messages of app %q: %w", len(ids), app, err)
	}
	return n, nil
}

// ackHeld is Ack inside tx.
func ackHeld(tx *bolt.Tx, app string, ids []string) (int, error) {
	b := appBucket(tx, app)
	if b == nil || b.Bucket(bucketInbox) == nil {
		return 0, nil
	}
	n := 0
	seen := tx.Bucket(bucketSeen)
	for _, id := range ids {
		v := seen.Get([]byte(id))
		if v == nil {
			continue
		}
		e, err := decodeSeen(v)
		if err != nil {
			return n, err
		}
		if e.app != app || e.seq == 0 {
			continue
		}
		switch removed, err := unhold(b, encodeUint64(e.seq)); {
		case err != nil:
			return n, err
		case !removed:
			continue
		}
		if err := tx.Bucket(bucketHeld).Delete(expiryKey(e.expires, id)); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// Swept is, for each app, the IDs of held messages removed before the app
// acknowledged them: those that expired (Sweep), or that a Quota dropped
// (AddMessages).
type Swept map[string][]string

// Sweep removes, in one transaction, the seen entries expired at now and
// the held messages among them. Each app's count of messages that expired
// unacknowledged grows by what was removed (see TakeDropped).
func (s *Store) Sweep(now time.Time) (Swept, error) {
	swept := Swept{}
	err := s.db.Update(func(tx *bolt.Tx) error {
		seen := tx.Bucket(bucketSeen)
		index := tx.Bucket(bucketExpiry)
		held := tx.Bucket(bucketHeld)
		var due [][]byte
		c := index.Cursor()
		for k, _ := c.First(); k != nil; k, _ = c.Next() {
			if len(k) < 8 || !expired(decodeTime(k), now) {
				break
			}
			due = append(due, bytes.Clone(k))
		}
		dropped := map[string]uint64{}
		for _, k := range due {
			id := k[8:]
			if v := seen.Get(id); v != nil {
				e, err := decodeSeen(v)
				if err != nil {
					return err
				}
				removed, err := removeHeld(tx, e)
				if err != nil {
					return err
				}
				if removed {
					swept[e.app] = append(swept[e.app], string(id))
					dropped[e.app]++
				}
				if err := seen.Delete(id); err != nil {
					return err
				}
			}
			if err := firstErr(index.Delete(k), held.Delete(k)); err != nil {
				return err
			}
		}
		for app, n := range dropped {
			b := appBucket(tx, app)
			if err := b.Put(keyDropped, encodeUint64(decodeUint64(b.Get(keyDropped))+n)); err != nil {
				return err
			}
		}
		return advanceTimeMark(tx, now)
	})
	if err != nil {
		return nil, fmt.Errorf("sweep expired messages: %w", err)
	}
	return swept, nil
}

// arrived appends id to the seen IDs in order of arrival.
func arrived(tx *bolt.Tx, id string) error {
	arrivals := tx.Bucket(bucketArrivals)
	n, err := arrivals.NextSequence()
	if err != nil {
		return err
	}
	return arrivals.Put(encodeUint64(n), []byte(id))
}

// trimSeen removes the oldest seen IDs of messages no longer held, so that
// at most limit arrivals are listed beyond those of held messages. The
// arrivals of held messages it meets go to the back of the list: they are
// kept, and looked at again when newer ones have arrived. An arrival whose
// seen entry a sweep removed just goes. Arrivals are only ever removed
// from the front, so their sequence numbers run without a gap from the
// first to the last, and their count needs no walk.
func trimSeen(tx *bolt.Tx, limit int) error {
	arrivals := tx.Bucket(bucketArrivals)
	first, _ := arrivals.Cursor().First()
	if first == nil {
		return nil
	}
	over := int64(arrivals.Sequence()-decodeUint64(first)+1) - int64(limit)
	seen := tx.Bucket(bucketSeen)
	var held [][]byte
	for ; over > 0; over-- {
		k, id := arrivals.Cursor().First()
		id = bytes.Clone(id)
		if err := arrivals.Delete(k); err != nil {
			return err
		}
		v := seen.Get(id)
		if v == nil {
			continue
		}
		e, err := decodeSeen(v)
		if err != nil {
			return err
		}
		if isHeld(tx, e) {
			held = append(held, id)
			continue
		}
		if err := firstErr(seen.Delete(id), tx.Bucket(bucketExpiry).Delete(expiryKey(e.expires, string(id)))); err != nil {
			return err
		}
	}
	for _, id := range held {
		if err := arrived(tx, string(id)); err != nil {
			return err
		}
	}
	return nil
}

// isHeld reports whether the message of a seen entry is in its app's
// inbox.
func isHeld(tx *bolt.Tx, e seenEntry) bool {
	if e.seq == 0 {
		return false
	}
	b := appBucket(tx, e.app)
	if b == nil || b.Bucket(bucketInbox) == nil {
		return false
	}
	return b.Bucket(bucketInbox).Get(encodeUint64(e.seq)) != nil
}

func removeHeld(tx *bolt.Tx, e seenEntry) (bool, error) {
	if e.seq == 0 {
		return false, nil
	}
	b := appBucket(tx, e.app)
	if b == nil {
		return false, nil
	}
	return unhold(b, encodeUint64(e.seq))
}

// NextExpiry returns when the earliest held message expires; false when no
// message is held. Seen IDs of messages no longer held do not count: they
// go with the next sweep whenever it runs, so that they never cost a
// wake-up of their own.
func (s *Store) NextExpiry() (time.Time, bool, error) {
	var next time.Time
	var ok bool
	err := s.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketHeld).Cursor().First()
		if len(k) >= 8 {
			next, ok = decodeTime(k), true
		}
		return nil
	})
	if err != nil {
		return time.Time{}, false, fmt.Errorf("read next expiry: %w", err)
	}
	return next, ok, nil
}

// TakeDropped returns how many of the app's messages expired before it
// acknowledged them since the last call, and resets the count.
func (s *Store) TakeDropped(app string) (int, error) {
	var n uint64
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := appBucket(tx, app)
		if b == nil || b.Get(keyDropped) == nil {
			return nil
		}
		n = decodeUint64(b.Get(keyDropped))
		return b.Delete(keyDropped)
	})
	if err != nil {
		return 0, fmt.Errorf("take dropped count of app %q: %w", app, err)
	}
	return int(n), nil
}

// Upstream is one pending upstream message.
type Upstream struct {
	// Seq orders an app's pending messages; AddUpstream sets it.
	Seq uint64 `json:"-"`
	App string `json:"app"`
	// To is the sender ID it goes to.
	To       string            `json:"to"`
	ID       string            `json:"id"`
	TTL      int64             `json:"ttl"`
	Priority string            `json:"priority,omitempty"`
	Data     map[string]string `json:"data,omitempty"`
	Created  time.Time         `json:"created"`
	Expires  time.Time         `json:"expires"`
}

// Expired reports whether u's time to live has run out at now.
func (u Upstream) Expired(now time.Time) bool { return expired(u.Expires, now) }

// AddUpstream appends u to its app's outbox unless the app already has max
// pending (ErrOutboxFull) or one with the same ID (ErrDuplicate). The app
// must have an owner (else ErrNotFound). It returns u with Seq set.
func (s *Store) AddUpstream(u Upstream, max int) (Upstream, error) {
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := appBucket(tx, u.App)
		if b == nil || b.Get(keyOwner) == nil {
			return ErrNotFound
		}
		outbox, err := b.CreateBucketIfNotExists(bucketOutbox)
		if err != nil {
			return err
		}
		n := 0
		err = outbox.ForEach(func(_, v []byte) error {
			var p Upstream
			if err := json.Unmarshal(v, &p); err != nil {
				return fmt.Errorf("decode pending upstream: %w", err)
			}
			if p.ID == u.ID {
				return ErrDuplicate
			}
			n++
			return nil
		})
		if err != nil {
			return err
		}
		if n >= max {
			return fmt.Errorf("%w: %d pending", ErrOutboxFull, n)
		}
		if u.Seq, err = outbox.NextSequence(); err != nil {
			return err
		}
		v, err := json.Marshal(u)
		if err != nil {
			return err
		}
		return firstErr(outbox.Put(encodeUint64(u.Seq), v), advanceTimeMark(tx, u.Created))
	})
	if err != nil {
		return Upstream{}, fmt.Errorf("queue upstream message %q of app %q: %w", u.ID, u.App, err)
	}
	return u, nil
}

// Outbox returns every pending upstream message, app by app in order.
func (s *Store) Outbox() ([]Upstream, error) {
	var out []Upstream
	err := s.db.View(func(tx *bolt.Tx) error {
		return eachOutbox(tx, func(_ *bolt.Bucket, k []byte, u Upstream) error {
			out = append(out, u)
			return nil
		})
	})
	if err != nil {
		return nil, fmt.Errorf("read outbox: %w", err)
	}
	return out, nil
}

// RemoveUpstream removes the app's pending message id and returns it, or
// ErrNotFound.
func (s *Store) RemoveUpstream(app, id string) (Upstream, error) {
	var found Upstream
	err := s.db.Update(func(tx *bolt.Tx) error {
		b := appBucket(tx, app)
		if b == nil || b.Bucket(bucketOutbox) == nil {
			return ErrNotFound
		}
		outbox := b.Bucket(bucketOutbox)
		c := outbox.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var u Upstream
			if err := json.Unmarshal(v, &u); err != nil {
				return fmt.Errorf("decode pending upstream: %w", err)
			}
			if u.ID == id {
				u.Seq = decodeUint64(k)
				found = u
				return outbox.Delete(k)
			}
		}
		return ErrNotFound
	})
	if err != nil {
		return Upstream{}, fmt.Errorf("remove upstream message %q of app %q: %w", id, app, err)
	}
	return found, nil
}

// ExpireUpstream removes, in one transaction, the pending upstream messages
// whose time to live has run out at now, and returns them.
func (s *Store) ExpireUpstream(now time.Time) ([]Upstream, error) {
	var out []Upstream
	err := s.db.Update(func(tx *bolt.Tx) error {
		type doomed struct {
			outbox *bolt.Bucket
			key    []byte
		}
		var del []doomed
		err := eachOutbox(tx, func(outbox *bolt.Bucket, k []byte, u Upstream) error {
			if u.Expired(now) {
				out = append(out, u)
				del = append(del, doomed{outbox, bytes.Clone(k)})
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, d := range del {
			if err := d.outbox.Delete(d.key); err != nil {
				return err
			}
		}
		return advanceTimeMark(tx, now)
	})
	if err != nil {
		return nil, fmt.Errorf("expire upstream messages: %w", err)
	}
	return out, nil
}

func eachOutbox(tx *bolt.Tx, fn func(outbox *bolt.Bucket, k []byte, u Upstream) error) error {
	apps := tx.Bucket(bucketApps)
	return apps.ForEachBucket(func(app []byte) error {
		outbox := apps.Bucket(app).Bucket(bucketOutbox)
		if outbox == nil {
			return nil
		}
		return outbox.ForEach(func(k, v []byte) error {
			var u Upstream
			if err := json.Unmarshal(v, &u); err != nil {
				return fmt.Errorf("decode pending upstream: %w", err)
			}
			u.Seq = decodeUint64(k)
			return fn(outbox, k, u)
		})
	})
}

// TimeMark returns the latest time a caller passed to a write that takes
// one (AddMessages' Received, AddUpstream's Created, the now of Sweep and
// ExpireUpstream), or the zero time before the first. It outlives restarts
// so that a caller whose clock can be stepped knows, when it starts, how far
// its clock had got: the store's expiries are by that clock.
func (s *Store) TimeMark() (time.Time, error) {
	var mark time.Time
	err := s.db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket(bucketDevice).Get(keyTimeMark); len(v) == 8 {
			mark = decodeTime(v)
		}
		return nil
	})
	if err != nil {
		return time.Time{}, fmt.Errorf("read time mark: %w", err)
	}
	return mark, nil
}

// advanceTimeMark raises the time mark to t; it never lowers it, so that a
// write stamped by a clock that went back does not hide how far it had got.
func advanceTimeMark(tx *bolt.Tx, t time.Time) error {
	if t.IsZero() {
		return nil
	}
	b := tx.Bucket(bucketDevice)
	if v := b.Get(keyTimeMark); len(v) == 8 && !t.After(decodeTime(v)) {
		return nil
	}
	return b.Put(keyTimeMark, encodeTime(t))
}

// Stats counts what the store holds.
type Stats struct {
	// Apps is the number of apps bound to an owner.
	Apps int
	// Held is the number of downstream messages waiting for their app.
	Held int
	// Pending is the number of upstream messages waiting for the server.
	Pending int
}

// Stats counts apps, held messages and pending upstream messages.
func (s *Store) Stats() (Stats, error) {
	var st Stats
	err := s.db.View(func(tx *bolt.Tx) error {
		apps := tx.Bucket(bucketApps)
		return apps.ForEachBucket(func(app []byte) error {
			b := apps.Bucket(app)
			if b.Get(keyOwner) != nil {
				st.Apps++
			}
			if inbox := b.Bucket(bucketInbox); inbox != nil {
				st.Held += inbox.Stats().KeyN
			}
			if outbox := b.Bucket(bucketOutbox); outbox != nil {
				st.Pending += outbox.Stats().KeyN
			}
			return nil
		})
	})
	if err != nil {
		return Stats{}, fmt.Errorf("count store entries: %w", err)
	}
	return st, nil
}

// expired reports whether something expiring at exp is gone at now.
func expired(exp, now time.Time) bool { return !now.Before(exp) }

func appBucket(tx *bolt.Tx, app string) *bolt.Bucket {
	return tx.Bucket(bucketApps).Bucket([]byte(app))
}

func senderToken(tx *bolt.Tx, app, sender string) []byte {
	b := appBucket(tx, app)
	if b == nil || b.Bucket(bucketSenders) == nil {
		return nil
	}
	return b.Bucket(bucketSenders).Get([]byte(sender))
}

// seenEntry is the value of a seen message ID: when it expires, and where
// it is held (seq 0: not held).
type seenEntry struct {
	expires time.Time
	app     string
	seq     uint64
}

func (e seenEntry) encode() []byte {
	v := make([]byte, 16, 16+len(e.app))
	binary.BigEndian.PutUint64(v, uint64(e.expires.UnixNano()))
	binary.BigEndian.PutUint64(v[8:], e.seq)
	return append(v, e.app...)
}

func decodeSeen(v []byte) (seenEntry, error) {
	if len(v) < 16 {
		return seenEntry{}, fmt.Errorf("seen entry of %d bytes", len(v))
	}
	return seenEntry{expires: decodeTime(v), seq: binary.BigEndian.Uint64(v[8:]), app: string(v[16:])}, nil
}

// expiryKey sorts by expiry, then ID. Expiries are after 1970, so the
// unsigned big-endian nanoseconds sort in time order.
func expiryKey(exp time.Time, id string) []byte { return append(encodeTime(exp), id...) }

func encodeTime(t time.Time) []byte { return encodeUint64(uint64(t.UnixNano())) }

func decodeTime(b []byte) time.Time { return time.Unix(0, int64(binary.BigEndian.Uint64(b))) }

func encodeUint64(n uint64) []byte { return binary.BigEndian.AppendUint64(nil, n) }

func decodeUint64(b []byte) uint64 {
	if len(b) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(b)
}

func encodeUint32(n uint32) []byte { return binary.BigEndian.AppendUint32(nil, n) }

func decodeUint32(b []byte) uint32 {
	if len(b) != 4 {
		return 0
	}
	return binary.BigEndian.Uint32(b)
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
