package store

import (
	"crypto/rand"
	"encoding/base64"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Registration ties a token to one app on one device and one sender.
// It is kept after it is unregistered, so that sends to its token answer
// NotRegistered rather than InvalidRegistration.
type Registration struct {
	Token        string    `json:"token"`
	Device       string    `json:"device"`
	App          string    `json:"app"`
	Sender       string    `json:"sender"`
	Created      time.Time `json:"created"`
	Unregistered time.Time `json:"unregistered,omitzero"`
}

// Active reports whether the registration still takes messages.
func (r Registration) Active() bool { return r.Token != "" && r.Unregistered.IsZero() }

// TokenBytes is the number of random bytes in a token.
const TokenBytes = 48

func newToken() string {
	b := make([]byte, TokenBytes)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// Register returns the active registration of (device, app, sender),
// creating it with a new token if there is none. The sender must exist.
func (s *Store) Register(device, app, sender string, now time.Time) (Registration, error) {
	var reg Registration
	var unknownSender bool
	err := s.db.Batch(func(tx *bolt.Tx) error {
		reg, unknownSender = Registration{}, false
		if tx.Bucket(bucketSenders).Get([]byte(sender)) == nil {
			unknownSender = true
			return nil
		}
		regs, index := tx.Bucket(bucketRegs), tx.Bucket(bucketRegIndex)
		key := join(device, app, sender)
		if token := index.Get(key); token != nil {
			var err error
			reg, _, err = get[Registration](regs, token)
			return err
		}
		reg = Registration{Device: device, App: app, Sender: sender, Created: now.UTC()}
		for reg.Token = newToken(); regs.Get([]byte(reg.Token)) != nil; reg.Token = newToken() {
		}
		if err := put(regs, []byte(reg.Token), reg); err != nil {
			return err
		}
		return index.Put(key, []byte(reg.Token))
	})
	switch {
	case err != nil:
		return Registration{}, fmt.Errorf("register app %q for sender %s: %w", app, sender, err)
	case unknownSender:
		return Registration{}, fmt.Errorf("register app %q: sender %s: %w", app, sender, ErrNotFound)
	}
	return reg, nil
}

// Unregister ends the active registration of (device, app, sender) and
// drops the messages queued for its token. It returns ErrNotFound when
// there is no active registration.
func (s *Store) Unregister(device, app, sender string, now time.Time) (dropped int, err error) {
	var found bool
	err = s.db.Batch(func(tx *bolt.Tx) error {
		dropped, found = 0, false
		regs, index := tx.Bucket(bucketRegs), tx.Bucket(bucketRegIndex)
		key := join(device, app, sender)
		token := index.Get(key)
		if token == nil {
			return nil
		}
		found = true
		reg, _, err := get[Registration](regs, token)
		if err != nil {
			return err
		}
		reg.Unregistered = now.UTC()
		if err := put(regs, []byte(reg.Token), reg); err != nil {
			return err
		}
		if err := index.Delete(key); err != nil {
			return err
		}
		queued, err := queuedMessages(tx, device)
		if err != nil {
			return err
		}
		for _, m := range queued {
			if m.Token != reg.Token {
				continue
			}
			if err := deleteMessage(tx, m); err != nil {
				return err
			}
			dropped++
		}
		return nil
	})
	switch {
	case err != nil:
		return 0, fmt.Errorf("unregister app %q for sender %s: %w", app, sender, err)
	case !found:
		return 0, fmt.Errorf("unregister app %q for sender %s: %w", app, sender, ErrNotFound)
	}
	return dropped, nil
}

// LookupTokens returns the registration of each token, active or not, in
// the order given; an unknown token gets a zero Registration.
func (s *Store) LookupTokens(tokens []string) ([]Registration, error) {
	out := make([]Registration, len(tokens))
	err := s.db.View(func(tx *bolt.Tx) error {
		regs := tx.Bucket(bucketRegs)
		for i, t := range tokens {
			if t == "" || len(t) > bolt.MaxKeySize {
				continue
			}
			var err error
			if out[i], _, err = get[Registration](regs, []byte(t)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("look up %d tokens: %w", len(tokens), err)
	}
	return out, nil
}

// ActiveRegistration returns the active registration of (device, app,
// sender), or ErrNotFound.
func (s *Store) ActiveRegistration(device, app, sender string) (Registration, error) {
	var reg Registration
	err := s.db.View(func(tx *bolt.Tx) error {
		token := tx.Bucket(bucketRegIndex).Get(join(device, app, sender))
		if token == nil {
			return ErrNotFound
		}
		var err error
		reg, _, err = get[Registration](tx.Bucket(bucketRegs), token)
		return err
	})
	if err != nil {
		return Registration{}, fmt.Errorf("registration of app %q for sender %s: %w", app, sender, err)
	}
	return reg, nil
}
