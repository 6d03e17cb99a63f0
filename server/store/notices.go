// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// NoticeKind says what a Notice tells the device.
type NoticeKind int

// Kinds of notices.
const (
	// NoticeTokenRefresh: the registration of (App, Sender) has a new Token.
	NoticeTokenRefresh NoticeKind = iota + 1
	// NoticeDeleted: Count messages for App were dropped before delivery.
	NoticeDeleted
)

// Notice is something the device must be told once and acks by ID, like a
// message: the server sends it in every session until the ack.
type Notice struct {
	ID     string
	Kind   NoticeKind
	App    string
	Sender string // NoticeTokenRefresh
	Token  string // NoticeTokenRefresh: the new token
	Count  int    // NoticeDeleted
}

// Notice IDs start with these, which GCM-style message IDs ("0:...") never do.
const (
	refreshIDPrefix = "tr:"
	deletedIDPrefix = "dm:"
)

func isNoticeID(id string) bool {
	return strings.HasPrefix(id, refreshIDPrefix) || strings.HasPrefix(id, deletedIDPrefix)
}

func newNoticeID(prefix string) string {
	b := make([]byte, 12)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// deletedNotice counts an app's dropped messages on one device. Pending
// accumulates; a sealed notice has a fixed ID and count, which the device
// may have stored already, so it never changes until it is acked: drops in
// the meantime wait in Pending for the next notice.
type deletedNotice struct {
	Pending     int    `json:"pending"`
	SealedID    string `json:"sealed_id,omitempty"`
	SealedCount int    `json:"sealed_count,omitempty"`
}

// refreshNotice is a token refresh the device has not acked yet. A newer
// rotation of the same registration replaces it.
type refreshNotice struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

func addDeleted(tx *bolt.Tx, device, app string, n int) error {
	if n <= 0 {
		return nil
	}
	b, key := tx.Bucket(bucketDeleted), join(device, app)
	d, _, err := get[deletedNotice](b, key)
	if err != nil {
		return err
	}
	d.Pending += n
	return put(b, key, d)
}

// Notices returns what the device must be told, sealing counts of deleted
// messages into notices with fixed IDs first.
func (s *Store) Notices(ctx context.Context, device string) ([]Notice, error) {
	out, unsealed, err := s.readNotices(device)
	if err == nil && unsealed {
		err = s.batch(func(tx *bolt.Tx) error { return sealDeleted(tx, device) })
		if err == nil {
			out, _, err = s.readNotices(device)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("notices of device %s: %w", device, err)
	}
	return out, nil
}

func (s *Store) readNotices(device string) (out []Notice, unsealed bool, err error) {
	err = s.db.View(func(tx *bolt.Tx) error {
		out, unsealed = nil, false
		prefix := join(device, "")
		var err error
		if out, err = refreshNotices(tx, device); err != nil {
			return err
		}
		c := tx.Bucket(bucketDeleted).Cursor()
		for k, v := c.Seek(prefix); bytes.HasPrefix(k, prefix); k, v = c.Next() {
			d, err := decode[deletedNotice](v)
			if err != nil {
				return err
			}
			if d.SealedID != "" {
				out = append(out, Notice{ID: d.SealedID, Kind: NoticeDeleted, App: string(k[len(prefix):]), Count: d.SealedCount})
			} else if d.Pending > 0 {
				unsealed = true
			}
		}
		return nil
	})
	return out, unsealed, err
}

// refreshNotices lists the device's token refreshes not yet acked.
func refreshNotices(tx *bolt.Tx, device string) ([]Notice, error) {
	var out []Notice
	prefix := join(device, "")
	c := tx.Bucket(bucketRefresh).Cursor()
	for k, v := c.Seek(prefix); bytes.HasPrefix(k, prefix); k, v = c.Next() {
		r, err := decode[refreshNotice](v)
		if err != nil {
			return nil, err
		}
		parts := bytes.Split(k[len(prefix):], []byte{sep})
		if len(parts) != 2 {
			return nil, fmt.Errorf("token refresh key: %w", ErrCorrupt)
		}
		out = append(out, Notice{ID: r.ID, Kind: NoticeTokenRefresh, App: string(parts[0]), Sender: string(parts[1]), Token: r.Token})
	}
	return out, nil
}

func sealDeleted(tx *bolt.Tx, device string) error {
	prefix := join(device, "")
	b := tx.Bucket(bucketDeleted)
	type sealing struct {
		key []byte
		d   deletedNotice
	}
	var seal []sealing
	c := b.Cursor()
	for k, v := c.Seek(prefix); bytes.HasPrefix(k, prefix); k, v = c.Next() {
		d, err := decode[deletedNotice](v)
		if err != nil {
			return err
		}
		if d.SealedID == "" && d.Pending > 0 {
			d.SealedID, d.SealedCount, d.Pending = newNoticeID(deletedIDPrefix), d.Pending, 0
			seal = append(seal, sealing{bytes.Clone(k), d})
		}
	}
	// Written after the scan: a cursor must not run over a changing bucket.
	for _, s := range seal {
		if err := put(b, s.key, s.d); err != nil {
			return err
		}
	}
	return nil
}

// ackNotice forgets the device's notice id. An unknown id is ignored: the
// device may repeat an ack, or ack a refresh that a newer one replaced.
func ackNotice(tx *bolt.Tx, device, id string) error {
	prefix := join(device, "")
	if strings.HasPrefix(id, refreshIDPrefix) {
		b := tx.Bucket(bucketRefresh)
		c := b.Cursor()
		for k, v := c.Seek(prefix); bytes.HasPrefix(k, prefix); k, v = c.Next() {
			r, err := decode[refreshNotice](v)
			if err != nil {
				return err
			}
			if r.ID == id {
				return b.Delete(bytes.Clone(k))
			}
		}
		return nil
	}
	b := tx.Bucket(bucketDeleted)
	c := b.Cursor()
	for k, v := c.Seek(prefix); bytes.HasPrefix(k, prefix); k, v = c.Next() {
		d, err := decode[deletedNotice](v)
		if err != nil {
			return err
		}
		if d.SealedID != id {
			continue
		}
		key := bytes.Clone(k)
		if d.Pending == 0 {
			return b.Delete(key)
		}
		d.SealedID, d.SealedCount = "", 0
		return put(b, key, d)
	}
	return nil
}
