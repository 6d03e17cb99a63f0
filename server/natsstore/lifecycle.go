// SPDX-License-Identifier: Apache-2.0

package natsstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"tether/server/store"
)

// A device's life: its record, the certificate identity bound to it, the
// enrollment keys that let devices check in. A change that spans streams
// (a device's shard and the meta stream) is a sequence of writes ordered so
// that running it again after a crash completes it.

// modify reads the record at subject, lets fn change it, and writes it
// back only if it is still the record read; a conflict reads again. fn
// returning errUnchanged ends it without a write.
func modify[T any](ctx context.Context, s *Store, stream, subject, what string, fn func(v *T, found bool) error) (T, error) {
	var v T
	err := s.retry(ctx, func(ctx context.Context) error {
		raw, seq, err := s.get(ctx, stream, subject)
		if err != nil {
			return err
		}
		var zero T
		v = zero
		if raw != nil {
			if v, err = decode[T](raw, what); err != nil {
				return err
			}
		}
		if err := fn(&v, raw != nil); err != nil {
			return err
		}
		_, err = s.commit(ctx, stream, []write{{subject: subject, data: encode(v), expect: ptr(seq)}})
		return err
	})
	if errors.Is(err, errUnchanged) {
		err = nil
	}
	return v, err
}

// AddDevice stores a new device with a fresh ID. A device with CertID
// replaces the one of the same certificate identity, if any: that one is
// removed and its registrations are the new one's Inherited. It wraps
// store.ErrRevoked when the certificate was revoked.
//
// The binding moves to the new ID first, then the old device goes, then
// the new one is written: a crash between leaves a binding to a device the
// next check-in of the certificate replaces.
func (s *Store) AddDevice(ctx context.Context, dev store.Device) (store.Device, error) {
	dev.SecretHash, dev.Created = slices.Clone(dev.SecretHash), dev.Created.UTC()
	dev.Replaced, dev.Inherited = "", nil
	dev.ID = store.NewDeviceID()
	if dev.CertID != "" {
		var old string
		_, err := modify(ctx, s, s.metaStream(), s.metaKey(certKey(dev.CertID)), "certificate binding", func(b *store.CertBinding, _ bool) error {
			if !b.Revoked.IsZero() {
				return store.ErrRevoked
			}
			old = b.Device
			*b = store.CertBinding{CertID: dev.CertID, Device: dev.ID}
			return nil
		})
		if err != nil {
			return store.Device{}, fmt.Errorf("add device: bind its certificate: %w", err)
		}
		if old != "" {
			replaced, err := s.removeDevice(ctx, old, dev.Created, false)
			switch {
			case errors.Is(err, store.ErrNotFound):
			case err != nil:
				return store.Device{}, fmt.Errorf("add device: remove the one it replaces: %w", err)
			default:
				dev.Replaced = old
				dev.Inherited = replaced
			}
		}
	}
	err := s.retry(ctx, func(ctx context.Context) error {
		shard := s.ShardOf(dev.ID)
		_, err := s.commit(ctx, s.shardStream(shard), []write{{subject: s.shardSubject(shard, devKey(dev.ID)), data: encode(dev), expect: ptr(0)}})
		return err
	})
	if err != nil {
		return store.Device{}, fmt.Errorf("add device: %w", err)
	}
	return dev, nil
}

// Device returns the device with this ID.
func (s *Store) Device(ctx context.Context, id string) (store.Device, error) {
	if !validToken(id) {
		return store.Device{}, fmt.Errorf("device %.40q: %w", id, store.ErrNotFound)
	}
	shard := s.ShardOf(id)
	raw, _, err := s.get(ctx, s.shardStream(shard), s.shardSubject(shard, devKey(id)))
	if err == nil && raw == nil {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Device{}, fmt.Errorf("device %s: %w", id, err)
	}
	return decode[store.Device](raw, "device "+id)
}

// DeviceInfo returns the device with this ID and its count of active
// registrations.
func (s *Store) DeviceInfo(ctx context.Context, id string) (store.DeviceInfo, error) {
	dev, err := s.Device(ctx, id)
	if err != nil {
		return store.DeviceInfo{}, err
	}
	d, err := s.readDevice(ctx, id)
	if err != nil {
		return store.DeviceInfo{}, fmt.Errorf("device %s: %w", id, err)
	}
	return store.DeviceInfo{Device: dev, Registrations: len(d.Regs)}, nil
}

// Devices lists every device, ordered by ID, with its count of active
// registrations. It reads the shards' replicas, so a device changed a
// moment ago may show as it was.
func (s *Store) Devices(ctx context.Context) ([]store.DeviceInfo, error) {
	var out []store.DeviceInfo
	for shard := range s.shards {
		regs := map[string]int{}
		err := s.scan(ctx, s.shardStream(shard), s.shardSubject(shard, queueKey("*")), func(m *jetstream.RawStreamMsg) error {
			d, err := decode[device](m.Data, "queue of a device")
			regs[strings.TrimPrefix(m.Subject, s.shardSubject(shard, queueKey("")))] = len(d.Regs)
			return err
		})
		if err == nil {
			err = s.scan(ctx, s.shardStream(shard), s.shardSubject(shard, devKey("*")), func(m *jetstream.RawStreamMsg) error {
				dev, err := decode[store.Device](m.Data, "device")
				out = append(out, store.DeviceInfo{Device: dev, Registrations: regs[dev.ID]})
				return err
			})
		}
		if err != nil {
			return nil, fmt.Errorf("list devices: %w", err)
		}
	}
	slices.SortFunc(out, func(a, b store.DeviceInfo) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// SeenDevice notes that the device was seen at, running agent in power
// mode. The server calls it at most every few minutes for a device.
func (s *Store) SeenDevice(ctx context.Context, id string, at time.Time, agent, mode string) error {
	if !validToken(id) {
		return nil
	}
	shard := s.ShardOf(id)
	_, err := modify(ctx, s, s.shardStream(shard), s.shardSubject(shard, devKey(id)), "device "+id, func(dev *store.Device, found bool) error {
		if !found {
			return errUnchanged
		}
		dev.LastSeen, dev.Agent, dev.PowerMode = at.UTC(), agent, mode
		return nil
	})
	if err != nil {
		return fmt.Errorf("note device %s seen: %w", id, err)
	}
	return nil
}

// RevokeDevice revokes the device: its registrations end (their tokens
// answer NotRegistered), its queue is dropped, and it stays revoked, its
// certificate with it, until it is removed. The mark comes first, so
// that the device's next hello is refused whatever follows; revoking again
// completes what a crash left.
func (s *Store) RevokeDevice(ctx context.Context, id string, now time.Time) (store.Device, error) {
	if !validToken(id) {
		return store.Device{}, fmt.Errorf("revoke device %.40q: %w", id, store.ErrNotFound)
	}
	shard := s.ShardOf(id)
	dev, err := modify(ctx, s, s.shardStream(shard), s.shardSubject(shard, devKey(id)), "device "+id, func(dev *store.Device, found bool) error {
		switch {
		case !found:
			return store.ErrNotFound
		case !dev.Revoked.IsZero():
			return errUnchanged
		}
		dev.Revoked = now.UTC()
		return nil
	})
	if err == nil && dev.CertID != "" {
		_, err = modify(ctx, s, s.metaStream(), s.metaKey(certKey(dev.CertID)), "certificate binding", func(b *store.CertBinding, _ bool) error {
			*b = store.CertBinding{CertID: dev.CertID, Device: id, Revoked: dev.Revoked}
			return nil
		})
	}
	if err == nil {
		_, err = s.endDevice(ctx, id, now)
	}
	if err != nil {
		return store.Device{}, fmt.Errorf("revoke device %s: %w", id, err)
	}
	return dev, nil
}

// RemoveDevice deletes the device with its registrations (their tokens
// answer NotRegistered), its queue and its notices. A revoked device's
// certificate stays revoked.
func (s *Store) RemoveDevice(ctx context.Context, id string, now time.Time) (store.Device, error) {
	dev, err := s.Device(ctx, id)
	if err == nil {
		_, err = s.removeDevice(ctx, id, now, true)
	}
	if err != nil {
		return store.Device{}, fmt.Errorf("remove device %.40s: %w", id, err)
	}
	return dev, nil
}

// removeDevice ends the device and deletes its records, and returns the
// registrations it had, by regKey. unbind deletes its certificate's
// binding too, unless revoked or moved to another device.
func (s *Store) removeDevice(ctx context.Context, id string, now time.Time, unbind bool) (map[string]string, error) {
	dev, err := s.Device(ctx, id)
	if err != nil {
		return nil, err
	}
	regs, err := s.endDevice(ctx, id, now)
	if err != nil {
		return nil, err
	}
	if unbind && dev.CertID != "" && dev.Revoked.IsZero() {
		subject := s.metaKey(certKey(dev.CertID))
		err := s.retry(ctx, func(ctx context.Context) error {
			raw, seq, err := s.get(ctx, s.metaStream(), subject)
			if err != nil || raw == nil {
				return err
			}
			b, err := decode[store.CertBinding](raw, "certificate binding")
			if err != nil || b.Device != id || !b.Revoked.IsZero() {
				return err
			}
			_, err = s.commit(ctx, s.metaStream(), []write{{subject: subject, purge: true, expect: ptr(seq)}})
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("unbind its certificate: %w", err)
		}
	}
	shard := s.ShardOf(id)
	err = s.retry(ctx, func(ctx context.Context) error {
		_, err := s.commit(ctx, s.shardStream(shard), []write{
			{subject: s.shardSubject(shard, queueKey(id)), purge: true},
			{subject: s.shardSubject(shard, sessionKey(id)), purge: true},
			{subject: s.shardSubject(shard, devKey(id)), purge: true},
		})
		return err
	})
	return regs, err
}

// endDevice ends every registration of the device, one at a time (each a
// batch of its own, however much is queued), then drops its notices. It
// returns the registrations it had, by regKey.
func (s *Store) endDevice(ctx context.Context, id string, now time.Time) (map[string]string, error) {
	had := map[string]string{}
	for range 3 {
		d, err := s.readDevice(ctx, id)
		if err != nil {
			return nil, err
		}
		for _, k := range sortedKeys(d.Regs) {
			had[k] = d.Regs[k]
			app, sender := splitRegKey(k)
			if _, err := s.Unregister(ctx, id, app, sender, now); err != nil && !errors.Is(err, store.ErrNotFound) {
				return nil, err
			}
		}
		_, err = s.updateDevice(ctx, id, func(d *device, ch *change) ([]write, error) {
			switch {
			case len(d.Regs) > 0:
				// Registered again meanwhile, by a session still open.
				return nil, errRegisteredAgain
			case len(d.Queue) == 0 && len(d.Refresh) == 0 && len(d.Deleted) == 0:
				return nil, errUnchanged
			}
			d.remove(func(entry) bool { return true }, ch)
			d.Refresh, d.Deleted = nil, nil
			return nil, nil
		})
		if !errors.Is(err, errRegisteredAgain) {
			if err != nil {
				return nil, fmt.Errorf("drop the queue of device %s: %w", id, err)
			}
			return had, nil
		}
	}
	return nil, fmt.Errorf("end device %s: %w", id, errRegisteredAgain)
}

// errRegisteredAgain: a device being ended registered an app meanwhile.
var errRegisteredAgain = errors.New("registered again while being ended")

// ExpireDevices removes the devices not seen since before (SeenAt), and
// returns their IDs.
func (s *Store) ExpireDevices(ctx context.Context, before, now time.Time) ([]string, error) {
	all, err := s.Devices(ctx)
	if err != nil {
		return nil, fmt.Errorf("expire devices: %w", err)
	}
	var gone []string
	for _, d := range all {
		if !d.SeenAt().Before(before) {
			continue
		}
		// Seen since the list was read?
		dev, err := s.Device(ctx, d.ID)
		if errors.Is(err, store.ErrNotFound) || err == nil && !dev.SeenAt().Before(before) {
			continue
		}
		if err == nil {
			_, err = s.removeDevice(ctx, d.ID, now, true)
		}
		if err != nil {
			return gone, fmt.Errorf("expire devices: %w", err)
		}
		gone = append(gone, d.ID)
	}
	return gone, nil
}

// CertRevoked reports whether the certificate identity was revoked.
func (s *Store) CertRevoked(ctx context.Context, certID string) (bool, error) {
	raw, _, err := s.get(ctx, s.metaStream(), s.metaKey(certKey(certID)))
	if err != nil || raw == nil {
		return false, err
	}
	b, err := decode[store.CertBinding](raw, "certificate binding")
	return !b.Revoked.IsZero(), err
}

// AddEnrollKey stores a new enrollment key with a fresh ID.
func (s *Store) AddEnrollKey(ctx context.Context, k store.EnrollKey) (store.EnrollKey, error) {
	k.Hash, k.Used, k.Revoked = slices.Clone(k.Hash), 0, time.Time{}
	err := s.retry(ctx, func(ctx context.Context) error {
		raw, hashSeq, err := s.get(ctx, s.metaStream(), s.metaKey(enrollHashKey(k.Hash)))
		if err != nil {
			return err
		}
		if raw != nil {
			return errors.New("enrollment key already in use")
		}
		k.ID = store.NewEnrollKeyID()
		_, err = s.commit(ctx, s.metaStream(), []write{
			{subject: s.metaKey(enrollKey(k.ID)), data: encode(k), expect: ptr(0)},
			{subject: s.metaKey(enrollHashKey(k.Hash)), data: []byte(k.ID), expect: ptr(hashSeq)},
		})
		return err
	})
	if err != nil {
		return store.EnrollKey{}, fmt.Errorf("add enrollment key: %w", err)
	}
	return k, nil
}

// EnrollKeys lists the enrollment keys, ordered by ID.
func (s *Store) EnrollKeys(ctx context.Context) ([]store.EnrollKey, error) {
	var out []store.EnrollKey
	err := s.scan(ctx, s.metaStream(), s.metaKey(enrollKey("*")), func(m *jetstream.RawStreamMsg) error {
		k, err := decode[store.EnrollKey](m.Data, "enrollment key")
		out = append(out, k)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list enrollment keys: %w", err)
	}
	slices.SortFunc(out, func(a, b store.EnrollKey) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// changeEnrollKey changes key id with fn.
func (s *Store) changeEnrollKey(ctx context.Context, id string, fn func(k *store.EnrollKey) error) (store.EnrollKey, error) {
	if !validToken(id) {
		return store.EnrollKey{}, store.ErrNotFound
	}
	return modify(ctx, s, s.metaStream(), s.metaKey(enrollKey(id)), "enrollment key", func(k *store.EnrollKey, found bool) error {
		if !found {
			return store.ErrNotFound
		}
		return fn(k)
	})
}

// RevokeEnrollKey ends an enrollment key; devices it enrolled stay.
func (s *Store) RevokeEnrollKey(ctx context.Context, id string, now time.Time) error {
	_, err := s.changeEnrollKey(ctx, id, func(k *store.EnrollKey) error {
		if !k.Revoked.IsZero() {
			return errUnchanged
		}
		k.Revoked = now.UTC()
		return nil
	})
	if err != nil {
		return fmt.Errorf("revoke enrollment key %.40s: %w", id, err)
	}
	return nil
}

// SpendEnrollKey takes one use of the usable key whose hash is hash, or
// wraps ErrNotFound: no such key, or it is spent, expired or revoked.
func (s *Store) SpendEnrollKey(ctx context.Context, hash []byte, now time.Time) (store.EnrollKey, error) {
	raw, _, err := s.get(ctx, s.metaStream(), s.metaKey(enrollHashKey(hash)))
	if err == nil && raw == nil {
		err = store.ErrNotFound
	}
	var k store.EnrollKey
	if err == nil {
		k, err = s.changeEnrollKey(ctx, string(raw), func(k *store.EnrollKey) error {
			if !bytes.Equal(k.Hash, hash) || !k.Usable(now) {
				return store.ErrNotFound
			}
			k.Used++
			return nil
		})
	}
	if err != nil {
		return store.EnrollKey{}, fmt.Errorf("spend enrollment key: %w", err)
	}
	return k, nil
}

// RefundEnrollKey gives back a use of key id, taken for a check-in that
// then failed.
func (s *Store) RefundEnrollKey(ctx context.Context, id string) error {
	_, err := s.changeEnrollKey(ctx, id, func(k *store.EnrollKey) error {
		if k.Used == 0 {
			return errUnchanged
		}
		k.Used--
		return nil
	})
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("refund enrollment key %s: %w", id, err)
	}
	return nil
}
