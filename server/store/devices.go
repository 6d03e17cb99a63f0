// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Device is an agent that has checked in.
type Device struct {
	ID string `json:"id"`
	// SecretHash is the SHA-256 of the device secret.
	SecretHash []byte    `json:"secret_hash"`
	Created    time.Time `json:"created"`
	// LastSeen is when a session of the device last opened or was last
	// noted alive, to a few minutes (SeenDevice); zero before the first.
	LastSeen time.Time `json:"last_seen,omitzero"`
	// Agent and PowerMode are what the device last said of itself.
	Agent     string `json:"agent,omitempty"`
	PowerMode string `json:"power_mode,omitempty"`
	// EnrolledBy says how it checked in: "key:ID" for an enrollment key,
	// "fleet" for the fleet-wide key, "cert" for a client certificate,
	// "open" without any.
	EnrolledBy string `json:"enrolled_by,omitempty"`
	// CertID is the identity of the client certificate it checked in
	// with, bound to it: its sessions must present that certificate.
	CertID string `json:"cert_id,omitempty"`
	// Revoked is when the device was revoked: its sessions are refused.
	Revoked time.Time `json:"revoked,omitzero"`
	// Replaced is the device of the same certificate identity that this
	// one replaced (a factory reset), and Inherited its registrations
	// then, by app and sender (regKey): when this device registers the
	// same app for the same sender, the old token leads to the new one.
	Replaced  string            `json:"replaced,omitempty"`
	Inherited map[string]string `json:"inherited,omitempty"`
}

// SeenAt is when the device was last seen, or when it was created if
// never since.
func (d Device) SeenAt() time.Time {
	if d.LastSeen.IsZero() {
		return d.Created
	}
	return d.LastSeen
}

// DeviceInfo is a device with its count of active registrations.
type DeviceInfo struct {
	Device
	Registrations int `json:"registrations"`
}

// InheritGrace is how long the token of a replaced device's registration
// leads to the new device's, once that registers the same app: as long
// as a message may wait.
const InheritGrace = 28 * 24 * time.Hour

// regKey names an app's registration for a sender on a device, for
// Device.Inherited.
func regKey(app, sender string) string { return app + "\x00" + sender }

// ErrRevoked is wrapped when a device or certificate was revoked.
var ErrRevoked = errors.New("revoked")

// EnrollKey lets devices check in: one, or a batch of Uses.
type EnrollKey struct {
	ID string `json:"id"`
	// Hash is the SHA-256 of the key; the key itself is never stored.
	Hash    []byte    `json:"hash"`
	Uses    int       `json:"uses"`
	Used    int       `json:"used"`
	Created time.Time `json:"created"`
	// Expires, when set, ends the key.
	Expires time.Time `json:"expires,omitzero"`
	Revoked time.Time `json:"revoked,omitzero"`
}

// Usable reports whether the key lets one more device check in at now.
func (k EnrollKey) Usable(now time.Time) bool {
	return k.Revoked.IsZero() && k.Used < k.Uses && (k.Expires.IsZero() || now.Before(k.Expires))
}

// NewDeviceID is a fresh device ID; every backend makes its IDs so.
func NewDeviceID() string {
	b := make([]byte, 8)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// NewEnrollKeyID is an enrollment key's public name.
func NewEnrollKeyID() string {
	b := make([]byte, 6)
	rand.Read(b)
	return "ek-" + hex.EncodeToString(b)
}

// CertBinding binds a client certificate identity to its device, or
// marks the identity revoked.
type CertBinding struct {
	CertID  string    `json:"cert_id"`
	Device  string    `json:"device,omitempty"`
	Revoked time.Time `json:"revoked,omitzero"`
}

// AddDevice stores a new device with a fresh ID. A device with
// dev.CertID replaces the one of the same certificate identity, if any:
// that one is removed, and its registrations are the new one's
// Inherited. It wraps ErrRevoked when the certificate was revoked.
func (s *Store) AddDevice(ctx context.Context, dev Device) (Device, error) {
	dev.SecretHash, dev.Created = bytes.Clone(dev.SecretHash), dev.Created.UTC()
	err := s.batch(func(tx *bolt.Tx) error {
		devices, certs := tx.Bucket(bucketDevices), tx.Bucket(bucketCerts)
		for dev.ID = NewDeviceID(); devices.Get([]byte(dev.ID)) != nil; dev.ID = NewDeviceID() {
		}
		dev.Replaced, dev.Inherited = "", nil
		if dev.CertID != "" {
			rec, _, err := get[CertBinding](certs, []byte(dev.CertID))
			if err != nil {
				return err
			}
			if !rec.Revoked.IsZero() {
				return ErrRevoked
			}
			if rec.Device != "" {
				old, ok, err := get[Device](devices, []byte(rec.Device))
				if err != nil {
					return err
				}
				if ok {
					if dev.Inherited, err = inheritance(tx, old.ID); err != nil {
						return err
					}
					dev.Replaced = old.ID
					if err := removeDevice(tx, old, dev.Created); err != nil {
						return err
					}
				}
			}
			if err := put(certs, []byte(dev.CertID), CertBinding{CertID: dev.CertID, Device: dev.ID}); err != nil {
				return err
			}
		}
		return put(devices, []byte(dev.ID), dev)
	})
	if err != nil {
		return Device{}, fmt.Errorf("add device: %w", err)
	}
	return dev, nil
}

// inheritance is the device's active registrations by regKey.
func inheritance(tx *bolt.Tx, device string) (map[string]string, error) {
	out := map[string]string{}
	for _, token := range activeTokens(tx, device) {
		reg, _, err := get[Registration](tx.Bucket(bucketRegs), token)
		if err != nil {
			return nil, err
		}
		out[regKey(reg.App, reg.Sender)] = reg.Token
	}
	return out, nil
}

// Device returns the device with this ID.
func (s *Store) Device(ctx context.Context, id string) (Device, error) {
	dev, err := lookup[Device](s.db, bucketDevices, []byte(id))
	if err != nil {
		return Device{}, fmt.Errorf("device %s: %w", id, err)
	}
	return dev, nil
}

// DeviceInfo returns the device with this ID and its count of active
// registrations.
func (s *Store) DeviceInfo(ctx context.Context, id string) (DeviceInfo, error) {
	var info DeviceInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		dev, ok, err := get[Device](tx.Bucket(bucketDevices), []byte(id))
		if err != nil {
			return err
		}
		if !ok {
			return ErrNotFound
		}
		info = DeviceInfo{Device: dev, Registrations: len(activeTokens(tx, id))}
		return nil
	})
	if err != nil {
		return DeviceInfo{}, fmt.Errorf("device %.40s: %w", id, err)
	}
	return info, nil
}

// Devices lists every device, ordered by ID, with its count of active
// registrations.
func (s *Store) Devices(ctx context.Context) ([]DeviceInfo, error) {
	var out []DeviceInfo
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketDevices).ForEach(func(_, v []byte) error {
			dev, err := decode[Device](v)
			if err != nil {
				return err
			}
			out = append(out, DeviceInfo{Device: dev, Registrations: len(activeTokens(tx, dev.ID))})
			return ctx.Err()
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return out, nil
}

// SeenDevice notes that the device was seen at, running agent in power
// mode. The server calls it at most every few minutes for a device.
func (s *Store) SeenDevice(ctx context.Context, id string, at time.Time, agent, mode string) error {
	err := s.batch(func(tx *bolt.Tx) error {
		devices := tx.Bucket(bucketDevices)
		dev, ok, err := get[Device](devices, []byte(id))
		if err != nil || !ok {
			return err
		}
		dev.LastSeen, dev.Agent, dev.PowerMode = at.UTC(), agent, mode
		return put(devices, []byte(id), dev)
	})
	if err != nil {
		return fmt.Errorf("note device %s seen: %w", id, err)
	}
	return nil
}

// RevokeDevice revokes the device: its registrations end (their tokens
// answer NotRegistered), its queue is dropped, and it stays revoked, its
// certificate with it, until it is removed.
func (s *Store) RevokeDevice(ctx context.Context, id string, now time.Time) (Device, error) {
	var dev Device
	err := s.update(func(tx *bolt.Tx) error {
		devices := tx.Bucket(bucketDevices)
		var ok bool
		var err error
		if dev, ok, err = get[Device](devices, []byte(id)); err != nil {
			return err
		} else if !ok {
			return ErrNotFound
		}
		if err := endDevice(tx, dev.ID, now); err != nil {
			return err
		}
		if dev.Revoked.IsZero() {
			dev.Revoked = now.UTC()
		}
		if dev.CertID != "" {
			if err := put(tx.Bucket(bucketCerts), []byte(dev.CertID), CertBinding{CertID: dev.CertID, Device: dev.ID, Revoked: dev.Revoked}); err != nil {
				return err
			}
		}
		return put(devices, []byte(id), dev)
	})
	if err != nil {
		return Device{}, fmt.Errorf("revoke device %s: %w", id, err)
	}
	return dev, nil
}

// RemoveDevice deletes the device with its registrations (their tokens
// answer NotRegistered), its queue and its notices. A revoked device's
// certificate stays revoked.
func (s *Store) RemoveDevice(ctx context.Context, id string, now time.Time) (Device, error) {
	var dev Device
	err := s.update(func(tx *bolt.Tx) error {
		var ok bool
		var err error
		if dev, ok, err = get[Device](tx.Bucket(bucketDevices), []byte(id)); err != nil {
			return err
		} else if !ok {
			return ErrNotFound
		}
		return removeDevice(tx, dev, now)
	})
	if err != nil {
		return Device{}, fmt.Errorf("remove device %s: %w", id, err)
	}
	return dev, nil
}

// ExpireDevices removes the devices not seen since before (SeenAt), and
// returns their IDs.
func (s *Store) ExpireDevices(ctx context.Context, before, now time.Time) ([]string, error) {
	var gone []string
	err := s.update(func(tx *bolt.Tx) error {
		var stale []Device
		err := tx.Bucket(bucketDevices).ForEach(func(_, v []byte) error {
			dev, err := decode[Device](v)
			if err != nil {
				return err
			}
			if dev.SeenAt().Before(before) {
				stale = append(stale, dev)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, dev := range stale {
			if err := removeDevice(tx, dev, now); err != nil {
				return err
			}
			gone = append(gone, dev.ID)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("expire devices seen before %s: %w", before.Format(time.DateOnly), err)
	}
	return gone, nil
}

// CertRevoked reports whether the certificate identity was revoked.
func (s *Store) CertRevoked(ctx context.Context, certID string) (bool, error) {
	rec, err := lookup[CertBinding](s.db, bucketCerts, []byte(certID))
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("certificate %s: %w", certID, err)
	}
	return !rec.Revoked.IsZero(), nil
}

// endDevice ends every registration of the device and drops what is
// queued for it and what it must be told.
func endDevice(tx *bolt.Tx, device string, now time.Time) error {
	for _, token := range activeTokens(tx, device) {
		if _, err := endRegistration(tx, string(token), now); err != nil {
			return err
		}
	}
	queued, err := queuedMessages(tx, device)
	if err != nil {
		return err
	}
	for _, m := range queued {
		if err := deleteMessage(tx, m); err != nil {
			return err
		}
	}
	for _, b := range [][]byte{bucketDeleted, bucketRefresh} {
		if err := deletePrefix(tx.Bucket(b), join(device, "")); err != nil {
			return err
		}
	}
	return nil
}

// removeDevice ends the device and deletes its record; a certificate
// binding goes with it unless revoked.
func removeDevice(tx *bolt.Tx, dev Device, now time.Time) error {
	if err := endDevice(tx, dev.ID, now); err != nil {
		return err
	}
	if dev.CertID != "" && dev.Revoked.IsZero() {
		certs := tx.Bucket(bucketCerts)
		rec, _, err := get[CertBinding](certs, []byte(dev.CertID))
		if err != nil {
			return err
		}
		if rec.Device == dev.ID {
			if err := certs.Delete([]byte(dev.CertID)); err != nil {
				return err
			}
		}
	}
	return tx.Bucket(bucketDevices).Delete([]byte(dev.ID))
}

// deletePrefix deletes every key of b that starts with prefix.
func deletePrefix(b *bolt.Bucket, prefix []byte) error {
	var keys [][]byte
	c := b.Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		keys = append(keys, bytes.Clone(k))
	}
	for _, k := range keys {
		if err := b.Delete(k); err != nil {
			return err
		}
	}
	return nil
}

// AddEnrollKey stores a new enrollment key with a fresh ID; k has its
// Hash, Uses, Created and, if it ends, Expires.
func (s *Store) AddEnrollKey(ctx context.Context, k EnrollKey) (EnrollKey, error) {
	k.Hash, k.Used, k.Revoked = bytes.Clone(k.Hash), 0, time.Time{}
	err := s.update(func(tx *bolt.Tx) error {
		keys, hashes := tx.Bucket(bucketEnrollKeys), tx.Bucket(bucketEnrollHashes)
		if hashes.Get(k.Hash) != nil {
			return errors.New("enrollment key already in use")
		}
		for k.ID = NewEnrollKeyID(); keys.Get([]byte(k.ID)) != nil; k.ID = NewEnrollKeyID() {
		}
		if err := hashes.Put(k.Hash, []byte(k.ID)); err != nil {
			return err
		}
		return put(keys, []byte(k.ID), k)
	})
	if err != nil {
		return EnrollKey{}, fmt.Errorf("add enrollment key: %w", err)
	}
	return k, nil
}

// EnrollKeys lists the enrollment keys, ordered by ID.
func (s *Store) EnrollKeys(ctx context.Context) ([]EnrollKey, error) {
	var out []EnrollKey
	err := s.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketEnrollKeys).ForEach(func(_, v []byte) error {
			k, err := decode[EnrollKey](v)
			out = append(out, k)
			return err
		})
	})
	if err != nil {
		return nil, fmt.Errorf("list enrollment keys: %w", err)
	}
	slices.SortFunc(out, func(a, b EnrollKey) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// RevokeEnrollKey ends an enrollment key; devices it enrolled stay.
func (s *Store) RevokeEnrollKey(ctx context.Context, id string, now time.Time) error {
	err := s.update(func(tx *bolt.Tx) error {
		keys := tx.Bucket(bucketEnrollKeys)
		k, ok, err := get[EnrollKey](keys, []byte(id))
		if err != nil {
			return err
		}
		if !ok {
			return ErrNotFound
		}
		if k.Revoked.IsZero() {
			k.Revoked = now.UTC()
		}
		return put(keys, []byte(id), k)
	})
	if err != nil {
		return fmt.Errorf("revoke enrollment key %.40s: %w", id, err)
	}
	return nil
}

// SpendEnrollKey takes one use of the usable key whose hash is hash, or
// wraps ErrNotFound: no such key, or it is spent, expired or revoked.
func (s *Store) SpendEnrollKey(ctx context.Context, hash []byte, now time.Time) (EnrollKey, error) {
	// A wrong key costs a read, not a commit: guesses come by the
	// thousand.
	var known bool
	s.db.View(func(tx *bolt.Tx) error {
		known = tx.Bucket(bucketEnrollHashes).Get(hash) != nil
		return nil
	})
	if !known {
		return EnrollKey{}, fmt.Errorf("spend enrollment key: %w", ErrNotFound)
	}
	var k EnrollKey
	err := s.batch(func(tx *bolt.Tx) error {
		id := tx.Bucket(bucketEnrollHashes).Get(hash)
		if id == nil {
			return ErrNotFound
		}
		keys := tx.Bucket(bucketEnrollKeys)
		var ok bool
		var err error
		if k, ok, err = get[EnrollKey](keys, id); err != nil {
			return err
		}
		if !ok || !k.Usable(now) {
			return ErrNotFound
		}
		k.Used++
		return put(keys, id, k)
	})
	if err != nil {
		return EnrollKey{}, fmt.Errorf("spend enrollment key: %w", err)
	}
	return k, nil
}

// RefundEnrollKey gives back a use of key id, taken for a check-in that
// then failed.
func (s *Store) RefundEnrollKey(ctx context.Context, id string) error {
	err := s.batch(func(tx *bolt.Tx) error {
		keys := tx.Bucket(bucketEnrollKeys)
		k, ok, err := get[EnrollKey](keys, []byte(id))
		if err != nil || !ok || k.Used == 0 {
			return err
		}
		k.Used--
		return put(keys, []byte(id), k)
	})
	if err != nil {
		return fmt.Errorf("refund enrollment key %s: %w", id, err)
	}
	return nil
}
