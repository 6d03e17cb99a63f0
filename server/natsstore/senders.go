// SPDX-License-Identifier: Apache-2.0

package natsstore

import (
	"context"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"tether/server/store"
)

// errKeyInUse refuses a server key that another sender has.
var errKeyInUse = errors.New("server key already in use")

// AddSender stores a new sender with a fresh ID.
func (s *Store) AddSender(ctx context.Context, name, webhook string, keyHash []byte, now time.Time) (store.Sender, error) {
	snd := store.Sender{Name: name, Webhook: webhook, KeyHash: slices.Clone(keyHash), Created: now.UTC(), WebhookSecret: store.NewWebhookSecret()}
	err := s.retry(ctx, func(ctx context.Context) error {
		keySeq, err := s.freeKey(ctx, keyHash)
		if err != nil {
			return err
		}
		// Sender IDs are public, so a non-cryptographic source is enough;
		// a collision fails the write, and the retry draws another.
		snd.ID = strconv.FormatUint(100_000_000_000+mathrand.Uint64N(900_000_000_000), 10)
		_, err = s.commit(ctx, s.metaStream(), []write{
			{subject: s.metaKey(senderKey(snd.ID)), data: encode(snd), expect: ptr(0)},
			{subject: s.metaKey(senderKeyHash(keyHash)), data: []byte(snd.ID), expect: ptr(keySeq)},
		})
		return err
	})
	if err != nil {
		return store.Sender{}, fmt.Errorf("add sender %q: %w", name, err)
	}
	return snd, nil
}

// freeKey checks that no sender has the key hashing to keyHash, and
// returns the sequence that taking it expects.
func (s *Store) freeKey(ctx context.Context, keyHash []byte) (uint64, error) {
	raw, seq, err := s.get(ctx, s.metaStream(), s.metaKey(senderKeyHash(keyHash)))
	if err == nil && raw != nil {
		err = errKeyInUse
	}
	return seq, err
}

// senderIDByKey is the sender ID a key hash belongs to, or "".
func (s *Store) senderIDByKey(ctx context.Context, keyHash []byte) (string, error) {
	raw, _, err := s.get(ctx, s.metaStream(), s.metaKey(senderKeyHash(keyHash)))
	return string(raw), err
}

// sender reads sender id and the sequence a change passes.
func (s *Store) sender(ctx context.Context, id string) (store.Sender, uint64, error) {
	if !validToken(id) {
		return store.Sender{}, 0, store.ErrNotFound
	}
	raw, seq, err := s.get(ctx, s.metaStream(), s.metaKey(senderKey(id)))
	if err == nil && raw == nil {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Sender{}, seq, err
	}
	snd, err := decode[store.Sender](raw, "sender "+id)
	return snd, seq, err
}

// Sender returns the sender with this ID.
func (s *Store) Sender(ctx context.Context, id string) (store.Sender, error) {
	snd, _, err := s.sender(ctx, id)
	if err != nil {
		return store.Sender{}, fmt.Errorf("sender %.40s: %w", id, err)
	}
	return snd, nil
}

// SenderByKeyHash returns the sender whose server key hashes to keyHash.
// The caller still compares the hashes in constant time.
func (s *Store) SenderByKeyHash(ctx context.Context, keyHash []byte) (store.Sender, error) {
	id, err := s.senderIDByKey(ctx, keyHash)
	if err == nil && id == "" {
		err = store.ErrNotFound
	}
	var snd store.Sender
	if err == nil {
		snd, _, err = s.sender(ctx, id)
	}
	if err != nil {
		return store.Sender{}, fmt.Errorf("sender by key: %w", err)
	}
	return snd, nil
}

// RotateSenderKey gives sender id the key hashing to keyHash. The key it
// had keeps working until now plus grace (not at all with grace 0); a key
// replaced before stops at once.
func (s *Store) RotateSenderKey(ctx context.Context, id string, keyHash []byte, grace time.Duration, now time.Time) (store.Sender, error) {
	snd, err := s.changeSender(ctx, id, func(ctx context.Context, snd *store.Sender) ([]write, error) {
		keySeq, err := s.freeKey(ctx, keyHash)
		if err != nil {
			return nil, err
		}
		ws := []write{{subject: s.metaKey(senderKeyHash(keyHash)), data: []byte(id), expect: ptr(keySeq)}}
		if snd.OldKeyHash != nil {
			ws = append(ws, write{subject: s.metaKey(senderKeyHash(snd.OldKeyHash)), purge: true})
		}
		snd.OldKeyHash, snd.OldKeyUntil = nil, time.Time{}
		if grace > 0 {
			snd.OldKeyHash, snd.OldKeyUntil = snd.KeyHash, now.Add(grace).UTC()
		} else {
			ws = append(ws, write{subject: s.metaKey(senderKeyHash(snd.KeyHash)), purge: true})
		}
		snd.KeyHash = slices.Clone(keyHash)
		return ws, nil
	})
	if err != nil {
		return store.Sender{}, fmt.Errorf("rotate key of sender %s: %w", id, err)
	}
	return snd, nil
}

// UpdateSender applies change to sender id and stores the result: its
// webhook or webhook secrets, not its keys (RotateSenderKey).
func (s *Store) UpdateSender(ctx context.Context, id string, change store.SenderChange) (store.Sender, error) {
	snd, err := s.changeSender(ctx, id, func(_ context.Context, snd *store.Sender) ([]write, error) {
		return nil, change(snd)
	})
	if err != nil {
		return store.Sender{}, fmt.Errorf("update sender %.40s: %w", id, err)
	}
	return snd, nil
}

// changeSender reads sender id, lets change alter it and name other
// writes, and commits them with the sender, unless the sender changed
// meanwhile: then it starts again.
func (s *Store) changeSender(ctx context.Context, id string, change func(context.Context, *store.Sender) ([]write, error)) (store.Sender, error) {
	var snd store.Sender
	err := s.retry(ctx, func(ctx context.Context) error {
		var seq uint64
		var err error
		if snd, seq, err = s.sender(ctx, id); err != nil {
			return err
		}
		ws, err := change(ctx, &snd)
		if err != nil {
			return err
		}
		ws = append(ws, write{subject: s.metaKey(senderKey(id)), data: encode(snd), expect: ptr(seq)})
		_, err = s.commit(ctx, s.metaStream(), ws)
		return err
	})
	return snd, err
}

// giveWebhookSecrets gives each sender from before webhook signatures a
// secret, which its operator learns by rotating it. Nodes that start
// together may each do it; the first write wins, the others change
// nothing.
func (s *Store) giveWebhookSecrets(ctx context.Context) error {
	senders, err := s.Senders(ctx)
	if err != nil {
		return err
	}
	for _, snd := range senders {
		if snd.WebhookSecret != "" {
			continue
		}
		secret := store.NewWebhookSecret()
		_, err := s.UpdateSender(ctx, snd.ID, func(snd *store.Sender) error {
			if snd.WebhookSecret == "" {
				snd.WebhookSecret = secret
			}
			return nil
		})
		if err != nil && !errors.Is(err, store.ErrNotFound) {
			return fmt.Errorf("give sender %s a webhook secret: %w", snd.ID, err)
		}
	}
	return nil
}

// Senders returns all senders ordered by ID.
func (s *Store) Senders(ctx context.Context) ([]store.Sender, error) {
	var out []store.Sender
	err := s.scan(ctx, s.metaStream(), s.metaKey(senderKey("*")), func(m *jetstream.RawStreamMsg) error {
		snd, err := decode[store.Sender](m.Data, "sender")
		out = append(out, snd)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("list senders: %w", err)
	}
	slices.SortFunc(out, func(a, b store.Sender) int { return strings.Compare(a.ID, b.ID) })
	return out, nil
}

// RemoveSender deletes a sender and its keys. Registrations made for it
// stay, unusable.
func (s *Store) RemoveSender(ctx context.Context, id string) error {
	err := s.retry(ctx, func(ctx context.Context) error {
		snd, seq, err := s.sender(ctx, id)
		if err != nil {
			return err
		}
		ws := []write{{subject: s.metaKey(senderKey(id)), purge: true, expect: ptr(seq)}}
		for _, hash := range [][]byte{snd.KeyHash, snd.OldKeyHash} {
			if hash != nil {
				ws = append(ws, write{subject: s.metaKey(senderKeyHash(hash)), purge: true})
			}
		}
		_, err = s.commit(ctx, s.metaStream(), ws)
		return err
	})
	if err != nil {
		return fmt.Errorf("remove sender %.40s: %w", id, err)
	}
	return nil
}

// scanPage bounds the records read in one request of a scan.
const scanPage = 1000

// scan calls fn for every record whose subject matches filter, in the
// order they were last written, reading pages from the stream's nearest
// replica. A record written during the scan may be seen again.
func (s *Store) scan(ctx context.Context, stream, filter string, fn func(*jetstream.RawStreamMsg) error) error {
	return s.scanFrom(ctx, stream, filter, 1, func(m *jetstream.RawStreamMsg) (bool, error) { return true, fn(m) })
}

// scanFrom is scan from stream sequence start, until fn says stop.
func (s *Store) scanFrom(ctx context.Context, stream, filter string, start uint64, fn func(*jetstream.RawStreamMsg) (more bool, err error)) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	for {
		page, err := jetstreamext.GetBatch(ctx, s.js, stream, scanPage, jetstreamext.GetBatchSubject(filter), jetstreamext.GetBatchSeq(start))
		if err != nil {
			return fmt.Errorf("read %s: %w", filter, classify(err))
		}
		n := 0
		for m, err := range page {
			if errors.Is(err, jetstreamext.ErrNoMessages) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read %s: %w", filter, classify(err))
			}
			n++
			start = m.Sequence + 1
			if m.Header.Get(kvOperation) != "" {
				continue
			}
			more, err := fn(m)
			if err != nil || !more {
				return err
			}
		}
		if n < scanPage {
			return nil
		}
	}
}
