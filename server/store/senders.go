// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	mathrand "math/rand/v2"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Sender is an app server allowed to send to the registrations made for it.
type Sender struct {
	// ID is the numeric sender ID apps register for, like a GCM project
	// number. It is not a secret.
	ID      string `json:"id"`
	Name    string `json:"name"`
	Webhook string `json:"webhook,omitempty"`
	// KeyHash is the SHA-256 of the server key; the key itself is never
	// stored.
	KeyHash []byte    `json:"key_hash"`
	Created time.Time `json:"created"`
	// OldKeyHash is the hash of the key that RotateSenderKey replaced,
	// which still works until OldKeyUntil, so that app servers can move
	// to the new key without a gap.
	OldKeyHash  []byte    `json:"old_key_hash,omitempty"`
	OldKeyUntil time.Time `json:"old_key_until,omitzero"`
	// WebhookSecret signs the webhook's POSTs. Unlike the server key it
	// is kept as it is, since signing needs it; the store file is 0600.
	WebhookSecret string `json:"webhook_secret,omitempty"`
	// OldWebhookSecret is the secret a rotation replaced, which signs
	// beside the new one until OldWebhookSecretUntil, so that app servers
	// can move to the new one without refusing a POST.
	OldWebhookSecret      string    `json:"old_webhook_secret,omitempty"`
	OldWebhookSecretUntil time.Time `json:"old_webhook_secret_until,omitzero"`
	// ServiceKeys are the sender's service-account keys, with which app
	// servers get access tokens for the FCM HTTP v1 API. A sender may
	// have several, so that one can be replaced without a gap.
	ServiceKeys []ServiceKey `json:"service_keys,omitempty"`
}

// ServiceKey is the public half of a service-account key: the private
// key stays in the app server's service-account file.
type ServiceKey struct {
	// ID is the file's private_key_id, which the app server's JWTs name
	// as their kid.
	ID string `json:"id"`
	// Email is the file's client_email, the JWTs' issuer.
	Email string `json:"email"`
	// TokenURI is the file's token_uri, the JWTs' audience.
	TokenURI string `json:"token_uri"`
	// PublicKey is the RSA public key, PKIX DER.
	PublicKey []byte    `json:"public_key"`
	Created   time.Time `json:"created"`
	// TokenSecret signs the access tokens issued with this key, so that
	// any server of a cluster can check them, and they stop working when
	// the key is revoked. It is kept as it is, like the webhook secret.
	TokenSecret []byte `json:"token_secret"`
}

// ServiceKey returns the sender's service-account key with this ID.
func (snd Sender) ServiceKey(id string) (ServiceKey, bool) {
	for _, k := range snd.ServiceKeys {
		if k.ID == id {
			return k, true
		}
	}
	return ServiceKey{}, false
}

// webhookSecretPrefix marks webhook secrets, so that one pasted in the
// wrong place is recognised.
const webhookSecretPrefix = "whsec_"

// NewWebhookSecret returns a new webhook signing secret: 260 random bits.
func NewWebhookSecret() string {
	return webhookSecretPrefix + rand.Text() + rand.Text()
}

// WebhookSecrets are the secrets that sign the sender's webhook POSTs at
// now: the current one, and the replaced one within its grace period.
func (snd Sender) WebhookSecrets(now time.Time) []string {
	secrets := []string{snd.WebhookSecret}
	if snd.OldWebhookSecret != "" && now.Before(snd.OldWebhookSecretUntil) {
		secrets = append(secrets, snd.OldWebhookSecret)
	}
	return secrets
}

// SenderChange changes a sender in UpdateSender. It may be called more
// than once, each time on the sender as stored, and must not change its ID
// or key hashes.
type SenderChange func(*Sender) error

// KeyValid reports whether keyHash is the sender's key, or its replaced
// key within its grace period, comparing in constant time.
func (snd Sender) KeyValid(keyHash []byte, now time.Time) bool {
	current := subtle.ConstantTimeCompare(snd.KeyHash, keyHash) == 1
	old := subtle.ConstantTimeCompare(snd.OldKeyHash, keyHash) == 1 && now.Before(snd.OldKeyUntil)
	return current || old
}

// newSenderID returns 12 decimal digits. Sender IDs are public, so a
// non-cryptographic source is enough; uniqueness is checked by the caller.
func newSenderID() string {
	return strconv.FormatUint(100_000_000_000+mathrand.Uint64N(900_000_000_000), 10)
}

// AddSender stores a new sender with a fresh ID.
func (s *Store) AddSender(ctx context.Context, name, webhook string, keyHash []byte, now time.Time) (Sender, error) {
	snd := Sender{Name: name, Webhook: webhook, KeyHash: bytes.Clone(keyHash), Created: now.UTC(), WebhookSecret: NewWebhookSecret()}
	err := s.update(func(tx *bolt.Tx) error {
		senders, keys := tx.Bucket(bucketSenders), tx.Bucket(bucketSenderKeys)
		if keys.Get(keyHash) != nil {
			return fmt.Errorf("server key already in use")
		}
		for snd.ID = newSenderID(); senders.Get([]byte(snd.ID)) != nil; snd.ID = newSenderID() {
		}
		if err := put(senders, []byte(snd.ID), snd); err != nil {
			return err
		}
		return keys.Put(keyHash, []byte(snd.ID))
	})
	if err != nil {
		return Sender{}, fmt.Errorf("add sender %q: %w", name, err)
	}
	return snd, nil
}

// Sender returns the sender with this ID.
func (s *Store) Sender(ctx context.Context, id string) (Sender, error) {
	snd, err := lookup[Sender](s.db, bucketSenders, []byte(id))
	if err != nil {
		return Sender{}, fmt.Errorf("sender %s: %w", id, err)
	}
	return snd, nil
}

// SenderByKeyHash returns the sender whose server key hashes to keyHash.
// The caller still compares the hashes in constant time.
func (s *Store) SenderByKeyHash(ctx context.Context, keyHash []byte) (Sender, error) {
	var snd Sender
	err := s.db.View(func(tx *bolt.Tx) error {
		id := tx.Bucket(bucketSenderKeys).Get(keyHash)
		if id == nil {
			return ErrNotFound
		}
		var ok bool
		var err error
		snd, ok, err = get[Sender](tx.Bucket(bucketSenders), id)
		if err == nil && !ok {
			err = ErrNotFound
		}
		return err
	})
	if err != nil {
		return Sender{}, fmt.Errorf("sender by key: %w", err)
	}
	return snd, nil
}

// RotateSenderKey gives sender id the key hashing to keyHash. The key it
// had keeps working until now plus grace (not at all with grace 0); a key
// replaced before stops at once.
func (s *Store) RotateSenderKey(ctx context.Context, id string, keyHash []byte, grace time.Duration, now time.Time) (Sender, error) {
	snd, err := s.changeSender(id, func(tx *bolt.Tx, snd *Sender) error {
		keys := tx.Bucket(bucketSenderKeys)
		if keys.Get(keyHash) != nil {
			return fmt.Errorf("server key already in use")
		}
		if snd.OldKeyHash != nil {
			if err := keys.Delete(snd.OldKeyHash); err != nil {
				return err
			}
		}
		snd.OldKeyHash, snd.OldKeyUntil = nil, time.Time{}
		if grace > 0 {
			snd.OldKeyHash, snd.OldKeyUntil = snd.KeyHash, now.Add(grace).UTC()
		} else if err := keys.Delete(snd.KeyHash); err != nil {
			return err
		}
		snd.KeyHash = bytes.Clone(keyHash)
		return keys.Put(keyHash, []byte(id))
	})
	if err != nil {
		return Sender{}, fmt.Errorf("rotate key of sender %s: %w", id, err)
	}
	return snd, nil
}

// UpdateSender applies change to sender id and stores the result: its
// webhook or webhook secrets, not its keys (RotateSenderKey).
func (s *Store) UpdateSender(ctx context.Context, id string, change SenderChange) (Sender, error) {
	snd, err := s.changeSender(id, func(_ *bolt.Tx, snd *Sender) error { return change(snd) })
	if err != nil {
		return Sender{}, fmt.Errorf("update sender %s: %w", id, err)
	}
	return snd, nil
}

// changeSender reads sender id, lets change alter it and what else tx
// holds, and stores it, in one transaction.
func (s *Store) changeSender(id string, change func(*bolt.Tx, *Sender) error) (Sender, error) {
	var snd Sender
	err := s.update(func(tx *bolt.Tx) error {
		senders := tx.Bucket(bucketSenders)
		var ok bool
		var err error
		if snd, ok, err = get[Sender](senders, []byte(id)); err != nil {
			return err
		} else if !ok {
			return ErrNotFound
		}
		if err := change(tx, &snd); err != nil {
			return err
		}
		return put(senders, []byte(id), snd)
	})
	return snd, err
}

// Senders returns all senders ordered by ID.
func (s *Store) Senders(ctx context.Context) ([]Sender, error) {
	var out []Sender
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSenders).ForEach(func(_, v []byte) error {
			snd, err := decode[Sender](v)
			out = append(out, snd)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list senders: %w", err)
	}
	return out, nil
}

// RemoveSender deletes a sender and its key: its app servers can no longer
// send. Registrations made for it stay, unusable, so its ID is never reused
// by accident (IDs are random and checked for collisions).
func (s *Store) RemoveSender(ctx context.Context, id string) error {
	err := s.update(func(tx *bolt.Tx) error {
		senders := tx.Bucket(bucketSenders)
		snd, ok, err := get[Sender](senders, []byte(id))
		if err != nil {
			return err
		}
		if !ok {
			return ErrNotFound
		}
		for _, hash := range [][]byte{snd.KeyHash, snd.OldKeyHash} {
			if hash == nil {
				continue
			}
			if err := tx.Bucket(bucketSenderKeys).Delete(hash); err != nil {
				return err
			}
		}
		return senders.Delete([]byte(id))
	})
	if err != nil {
		return fmt.Errorf("remove sender %s: %w", id, err)
	}
	return nil
}
