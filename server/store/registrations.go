// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"

	"tether/wire"
)

// Registration ties a token to one app on one device and one sender.
// It is kept after it is unregistered or replaced, so that sends to its
// token answer NotRegistered rather than InvalidRegistration.
type Registration struct {
	Token        string    `json:"token"`
	Device       string    `json:"device"`
	App          string    `json:"app"`
	Sender       string    `json:"sender"`
	Created      time.Time `json:"created"`
	Unregistered time.Time `json:"unregistered,omitzero"`
	// ReplacedBy is the token that replaced this one (RotateToken); sends
	// to this one reach it until GraceUntil.
	ReplacedBy string    `json:"replaced_by,omitempty"`
	GraceUntil time.Time `json:"grace_until,omitzero"`
	// VAPID is the app server's VAPID public key (RFC 8292) a Web Push
	// registration was made with, base64url; pushes to it must be signed
	// with that key. Empty: any push is taken.
	VAPID string `json:"vapid,omitempty"`
}

// WebPushSender is the sender ID of the built-in Web Push sender: it needs
// no Sender record, and its registrations take pushes at their endpoint.
const WebPushSender = wire.WebPushSender

// Active reports whether the registration still takes messages under its
// own token.
func (r Registration) Active() bool {
	return r.Token != "" && r.Unregistered.IsZero() && r.ReplacedBy == ""
}

// maxReplacements bounds how many replaced tokens a lookup follows.
const maxReplacements = 16

// TokenBytes is the number of random bytes in a token.
const TokenBytes = 48

func newToken() string {
	b := make([]byte, TokenBytes)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// MaxRegistrationsPerDevice bounds the active registrations of one device,
// so that a device cannot fill the store with them.
const MaxRegistrationsPerDevice = 100

// ErrTooManyRegistrations is wrapped when a device has
// MaxRegistrationsPerDevice active registrations already.
var ErrTooManyRegistrations = errors.New("too many registrations on the device")

// Register returns the active registration of (device, app, sender),
// creating it with a new token if there is none. The sender must exist, or
// be WebPushSender; vapid is kept with a new registration (an existing
// one keeps the key it was made with).
func (s *Store) Register(ctx context.Context, device, app, sender, vapid string, now time.Time) (Registration, error) {
	var reg Registration
	var unknownSender bool
	err := s.batch(func(tx *bolt.Tx) error {
		reg, unknownSender = Registration{}, false
		if sender != WebPushSender && tx.Bucket(bucketSenders).Get([]byte(sender)) == nil {
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
		prefix, n := join(device, ""), 0
		c := index.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
			if n++; n >= MaxRegistrationsPerDevice {
				return ErrTooManyRegistrations
			}
		}
		reg = Registration{Device: device, App: app, Sender: sender, Created: now.UTC(), VAPID: vapid}
		for reg.Token = newToken(); regs.Get([]byte(reg.Token)) != nil; reg.Token = newToken() {
		}
		if err := put(regs, []byte(reg.Token), reg); err != nil {
			return err
		}
		if err := inherit(tx, device, app, sender, reg.Token, now); err != nil {
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

// inherit leads the token that (app, sender) had on the device this one
// replaced, if any, to token, for InheritGrace: app servers that send to
// it get token as its canonical registration_id.
func inherit(tx *bolt.Tx, device, app, sender, token string, now time.Time) error {
	devices := tx.Bucket(bucketDevices)
	dev, ok, err := get[Device](devices, []byte(device))
	if err != nil || !ok {
		return err
	}
	old, ok := dev.Inherited[regKey(app, sender)]
	if !ok {
		return nil
	}
	delete(dev.Inherited, regKey(app, sender))
	if err := put(devices, []byte(device), dev); err != nil {
		return err
	}
	regs := tx.Bucket(bucketRegs)
	prev, ok, err := get[Registration](regs, []byte(old))
	if err != nil || !ok {
		return err
	}
	prev.ReplacedBy, prev.GraceUntil = token, now.Add(InheritGrace).UTC()
	return put(regs, []byte(old), prev)
}

// Unregister ends the active registration of (device, app, sender) and
// drops the messages queued for its token. It returns ErrNotFound when
// there is no active registration.
func (s *Store) Unregister(ctx context.Context, device, app, sender string, now time.Time) (dropped int, err error) {
	var found bool
	err = s.batch(func(tx *bolt.Tx) error {
		dropped, found = 0, false
		token := tx.Bucket(bucketRegIndex).Get(join(device, app, sender))
		if token == nil {
			return nil
		}
		found = true
		dropped, err = endRegistration(tx, string(token), now)
		return err
	})
	switch {
	case err != nil:
		return 0, fmt.Errorf("unregister app %q for sender %s: %w", app, sender, err)
	case !found:
		return 0, fmt.Errorf("unregister app %q for sender %s: %w", app, sender, ErrNotFound)
	}
	return dropped, nil
}

// endRegistration ends the active registration of token: it answers
// NotRegistered from now on, loses its subscriptions and its token
// refresh, and its queued messages are dropped; it returns how many.
func endRegistration(tx *bolt.Tx, token string, now time.Time) (dropped int, err error) {
	regs := tx.Bucket(bucketRegs)
	reg, _, err := get[Registration](regs, []byte(token))
	if err != nil {
		return 0, err
	}
	key := join(reg.Device, reg.App, reg.Sender)
	reg.Unregistered = now.UTC()
	if err := put(regs, []byte(reg.Token), reg); err != nil {
		return 0, err
	}
	if err := tx.Bucket(bucketRegIndex).Delete(key); err != nil {
		return 0, err
	}
	if err := unsubscribeAll(tx, reg); err != nil {
		return 0, err
	}
	if err := tx.Bucket(bucketRefresh).Delete(key); err != nil {
		return 0, err
	}
	queued, err := queuedMessages(tx, reg.Device)
	if err != nil {
		return 0, err
	}
	for _, m := range queued {
		if m.Token != reg.Token {
			continue
		}
		if err := deleteMessage(tx, m); err != nil {
			return 0, err
		}
		dropped++
	}
	return dropped, nil
}

// activeTokens lists the tokens of the device's active registrations.
func activeTokens(tx *bolt.Tx, device string) [][]byte {
	var out [][]byte
	prefix := join(device, "")
	c := tx.Bucket(bucketRegIndex).Cursor()
	for k, v := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		out = append(out, bytes.Clone(v))
	}
	return out
}

// Resolution is what a send to one token reaches.
type Resolution struct {
	// Given is the registration of the token as given; its Token is empty
	// when the token was never issued.
	Given Registration
	// Reg is the active registration that takes the message: Given itself,
	// or the one that replaced it while its grace period lasts. Its Token
	// is empty when there is none: the token is not registered.
	Reg Registration
}

// Canonical reports whether the message goes to another token than the
// one given: the sender should use Reg.Token from now on.
func (r Resolution) Canonical() bool { return r.Reg.Token != "" && r.Reg.Token != r.Given.Token }

// ResolveTokens resolves each token, in the order given, as of now.
func (s *Store) ResolveTokens(ctx context.Context, tokens []string, now time.Time) ([]Resolution, error) {
	out := make([]Resolution, len(tokens))
	err := s.db.View(func(tx *bolt.Tx) error {
		regs := tx.Bucket(bucketRegs)
		for i, t := range tokens {
			if t == "" || len(t) > bolt.MaxKeySize {
				continue
			}
			var err error
			if out[i], err = resolve(regs, t, now); err != nil {
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

func resolve(regs *bolt.Bucket, token string, now time.Time) (Resolution, error) {
	return Resolve(token, now, func(t string) (Registration, error) {
		reg, _, err := get[Registration](regs, []byte(t))
		return reg, err
	})
}

// Resolve finds what a send to token reaches as of now, reading
// registrations by token with lookup (a zero Registration for none): the
// token's own, or, within its grace period, the one that replaced it,
// following at most maxReplacements replacements.
func Resolve(token string, now time.Time, lookup func(token string) (Registration, error)) (Resolution, error) {
	given, err := lookup(token)
	if err != nil || given.Token == "" {
		return Resolution{}, err
	}
	r := Resolution{Given: given}
	if given.Active() {
		r.Reg = given
		return r, nil
	}
	if given.ReplacedBy == "" || !now.Before(given.GraceUntil) {
		return r, nil
	}
	next := given
	for range maxReplacements {
		if next, err = lookup(next.ReplacedBy); err != nil || next.Token == "" {
			return r, err
		}
		if next.Active() {
			r.Reg = next
			return r, nil
		}
		if next.ReplacedBy == "" {
			break
		}
	}
	return r, nil
}

// RotateToken replaces the active registration of token with a new token
// for the same app, device and sender. Sends to the old token reach the
// new one until now+grace. The new token's subscriptions and stored
// messages are the old one's, and the device is told with a
// NoticeTokenRefresh. It wraps ErrNotFound when token is not an active
// registration.
func (s *Store) RotateToken(ctx context.Context, token string, grace time.Duration, now time.Time) (Registration, error) {
	var fresh Registration
	err := s.update(func(tx *bolt.Tx) error {
		regs := tx.Bucket(bucketRegs)
		old, ok, err := get[Registration](regs, []byte(token))
		if err != nil {
			return err
		}
		if !ok || !old.Active() {
			return ErrNotFound
		}
		fresh = Registration{Device: old.Device, App: old.App, Sender: old.Sender, Created: now.UTC()}
		for fresh.Token = newToken(); regs.Get([]byte(fresh.Token)) != nil; fresh.Token = newToken() {
		}
		old.ReplacedBy, old.GraceUntil = fresh.Token, now.Add(grace).UTC()
		if err := put(regs, []byte(old.Token), old); err != nil {
			return err
		}
		if err := put(regs, []byte(fresh.Token), fresh); err != nil {
			return err
		}
		key := join(old.Device, old.App, old.Sender)
		if err := tx.Bucket(bucketRegIndex).Put(key, []byte(fresh.Token)); err != nil {
			return err
		}
		if err := put(tx.Bucket(bucketRefresh), key, refreshNotice{ID: newNoticeID(refreshIDPrefix), Token: fresh.Token}); err != nil {
			return err
		}
		if err := moveSubscriptions(tx, old, fresh.Token); err != nil {
			return err
		}
		queued, err := queuedMessages(tx, old.Device)
		if err != nil {
			return err
		}
		for _, m := range queued {
			if m.Token != old.Token {
				continue
			}
			if err := deleteMessage(tx, m); err != nil {
				return err
			}
			m.Token = fresh.Token
			if err := putMessage(tx, m); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return Registration{}, fmt.Errorf("rotate token: %w", err)
	}
	return fresh, nil
}

// ActiveRegistration returns the active registration of (device, app,
// sender), or ErrNotFound.
func (s *Store) ActiveRegistration(ctx context.Context, device, app, sender string) (Registration, error) {
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
