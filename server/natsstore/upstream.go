// SPDX-License-Identifier: Apache-2.0

package natsstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"tether/server/store"
)

// Upstream messages and receipts are records in their device's shard,
// under subjects that begin with their lane, up.DEVICE.SENDER (keys.go).
// Their store.Upstream.Seq names the record: its stream sequence times 256
// plus its shard (upSeq).
//
// An app's message takes one of the app's store.MaxUpstreamPerApp slots on
// the device, a subject written only while no sender's slot of that number
// holds a record: the stream itself keeps the cap, and a delivery or the
// engine's expiry frees the slot with the record.

func upSeq(shard int, streamSeq uint64) uint64 { return streamSeq<<8 | uint64(shard) }

func splitSeq(seq uint64) (shard int, streamSeq uint64) { return int(seq & 0xff), seq >> 8 }

// seen is the record of an upstream message ID seen lately.
type seen struct {
	Until time.Time `json:"until"`
}

// PutUpstream queues u unless its (device, app, id) was seen before and that
// sighting has not expired, or the app has store.MaxUpstreamPerApp queued;
// the sighting is remembered until seenUntil. A repeat is a duplicate even
// when the app is at the cap. It fills in u's Token and Seq.
func (s *Store) PutUpstream(ctx context.Context, u *store.Upstream, seenUntil time.Time) (store.PutOutcome, error) {
	if !validToken(u.Device) || !validToken(u.Sender) {
		return store.UpstreamNotRegistered, nil
	}
	shard := s.ShardOf(u.Device)
	stream := s.shardStream(shard)
	outcome := store.UpstreamNotRegistered
	err := s.retry(ctx, func(ctx context.Context) error {
		outcome = store.UpstreamNotRegistered
		d, err := s.readDevice(ctx, u.Device)
		if err != nil {
			return err
		}
		token := d.Regs[regKey(u.App, u.Sender)]
		if token == "" {
			return nil
		}
		if _, err := s.Sender(ctx, u.Sender); errors.Is(err, store.ErrNotFound) {
			return nil
		} else if err != nil {
			return err
		}
		u.Token = token
		key := s.shardSubject(shard, seenKey(u.Device, u.App, u.ID))
		raw, seenSeq, err := s.get(ctx, stream, key)
		if err != nil {
			return err
		}
		if raw != nil {
			prev, err := decode[seen](raw, "upstream sighting")
			if err != nil {
				return err
			}
			if prev.Until.After(u.Received) {
				outcome = store.UpstreamDuplicate
				return nil
			}
		}
		slot, err := s.freeSlot(ctx, stream, s.shardSubject(shard, upSlotKey(u.Device, "*", u.App, "*")))
		if err != nil {
			return err
		}
		if slot == "" {
			outcome = store.UpstreamTooManyMessages
			return nil
		}
		w := upWrite(s.shardSubject(shard, upSlotKey(u.Device, u.Sender, u.App, slot)), *u)
		// Taken meanwhile, the slot fails the commit, and the retry
		// counts again.
		w.expect, w.expectOf = ptr(0), s.shardSubject(shard, upSlotKey(u.Device, "*", u.App, slot))
		last, err := s.commit(ctx, stream, []write{
			{subject: key, data: encode(seen{Until: seenUntil}), expect: ptr(seenSeq), ttl: seenUntil.Sub(u.Received) + bodyTTLMargin},
			w,
		})
		if err != nil {
			return err
		}
		u.Seq = upSeq(shard, last)
		outcome = store.UpstreamQueued
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("queue upstream message %q of app %q: %w", u.ID, u.App, err)
	}
	return outcome, nil
}

// freeSlot returns the first of an app's slots that no record holds, by
// the stream's leader, or "" when every one does; filter matches them all.
func (s *Store) freeSlot(ctx context.Context, stream, filter string) (string, error) {
	body, _ := json.Marshal(map[string]any{"subjects_filter": filter})
	reply, err := s.nc.RequestWithContext(ctx, "$JS.API.STREAM.INFO."+stream, body)
	if err != nil {
		return "", fmt.Errorf("count upstream slots: %w", classify(err))
	}
	var resp struct {
		Error *apiError `json:"error"`
		State struct {
			Subjects map[string]uint64 `json:"subjects"`
		} `json:"state"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return "", fmt.Errorf("count upstream slots: decode answer: %w", err)
	}
	if resp.Error != nil {
		return "", fmt.Errorf("count upstream slots: %w", classify(resp.Error.err()))
	}
	taken := map[string]bool{}
	for subject := range resp.State.Subjects {
		taken[subject[strings.LastIndexByte(subject, '.')+1:]] = true
	}
	for i := range store.MaxUpstreamPerApp {
		if slot := strconv.Itoa(i); !taken[slot] {
			return slot, nil
		}
	}
	return "", nil
}

// upWrite is the write that queues u under subject.
func upWrite(subject string, u store.Upstream) write {
	u.Seq = 0 // named by where it is stored
	return write{subject: subject, data: encode(u), ttl: max(u.Expiry.Sub(u.Received), 0) + bodyTTLMargin}
}

// upstreamWrite is the write that queues u outside its app's slots: a
// receipt, or a message moved in from elsewhere. Its subject is its own,
// so that moving it again finds it there.
func (s *Store) upstreamWrite(shard int, u store.Upstream) write {
	return upWrite(s.shardSubject(shard, upKey(u)), u)
}

// putUpstream queues u on its own, a receipt of a message never stored.
func (s *Store) putUpstream(ctx context.Context, u *store.Upstream) error {
	shard := s.ShardOf(u.Device)
	return s.retry(ctx, func(ctx context.Context) error {
		last, err := s.commit(ctx, s.shardStream(shard), []write{s.upstreamWrite(shard, *u)})
		u.Seq = upSeq(shard, last)
		return err
	})
}

// Upstream returns the queued upstream message seq.
func (s *Store) Upstream(ctx context.Context, seq uint64) (store.Upstream, error) {
	shard, streamSeq := splitSeq(seq)
	if shard >= s.shards || streamSeq == 0 {
		return store.Upstream{}, fmt.Errorf("upstream message %d: %w", seq, store.ErrNotFound)
	}
	m, err := s.getMsg(ctx, s.shardStream(shard), map[string]any{"seq": streamSeq})
	if err == nil && (m == nil || m.Header.Get(kvOperation) != "") {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Upstream{}, fmt.Errorf("upstream message %d: %w", seq, err)
	}
	u, err := decode[store.Upstream](m.Data, "upstream message")
	u.Seq = seq
	return u, err
}

// NextUpstream returns up to limit upstream messages of device for sender
// with Seq above after, in order: the next of the dispatcher's lane of
// (sender, device). It reads from the stream's leader, so that what a
// call does not return was queued after it.
func (s *Store) NextUpstream(ctx context.Context, device, sender string, after uint64, limit int) ([]store.Upstream, error) {
	if !validToken(device) || !validToken(sender) {
		return nil, nil
	}
	shard := s.ShardOf(device)
	stream := s.shardStream(shard)
	filter := s.shardSubject(shard, upLane(device, sender))
	var out []store.Upstream
	for next := after>>8 + 1; len(out) < limit; {
		m, err := s.getMsg(ctx, stream, map[string]any{"seq": next, "next_by_subj": filter})
		if err != nil {
			return nil, fmt.Errorf("read upstream lane of device %s to sender %s: %w", device, sender, err)
		}
		if m == nil {
			break
		}
		next = m.Sequence + 1
		u, err := decode[store.Upstream](m.Data, "upstream message")
		if err != nil {
			return nil, fmt.Errorf("read upstream lane of device %s to sender %s: %w", device, sender, err)
		}
		u.Seq = upSeq(shard, m.Sequence)
		out = append(out, u)
	}
	return out, nil
}

// MoveLegacyUpstream moves the upstream messages that servers before lanes
// queued in shard to subjects of their lanes, outside their apps' slots,
// and returns how many it moved. The node that takes the shard's partition
// calls it before it reads the queue, which has them at their new Seq.
func (s *Store) MoveLegacyUpstream(ctx context.Context, shard int) (moved int, err error) {
	stream := s.shardStream(shard)
	err = s.scan(ctx, stream, s.shardSubject(shard, legacyUp), func(m *jetstream.RawStreamMsg) error {
		u, err := decode[store.Upstream](m.Data, "upstream message")
		if err != nil || !validToken(u.Device) || !validToken(u.Sender) {
			s.log.Error("upstream message left where servers before lanes stored it", "subject", m.Subject, "err", err)
			return nil
		}
		w := s.upstreamWrite(shard, u)
		w.expect = ptr(0)
		return s.retry(ctx, func(ctx context.Context) error {
			_, err := s.commit(ctx, stream, []write{w, {subject: m.Subject, purge: true, expect: ptr(m.Sequence)}})
			if errors.Is(err, errConflict) {
				return nil // another node moved it meanwhile
			}
			if err == nil {
				moved++
			}
			return err
		})
	})
	if err != nil {
		return moved, fmt.Errorf("move upstream messages of shard %d to their lanes: %w", shard, err)
	}
	return moved, nil
}

// EachUpstream calls fn for every queued upstream message.
func (s *Store) EachUpstream(ctx context.Context, fn func(store.Upstream) error) error {
	for shard := range s.shards {
		if err := s.EachUpstreamIn(ctx, shard, fn); err != nil {
			return err
		}
	}
	return nil
}

// EachUpstreamIn calls fn for every upstream message queued in shard.
func (s *Store) EachUpstreamIn(ctx context.Context, shard int, fn func(store.Upstream) error) error {
	err := s.scan(ctx, s.shardStream(shard), s.shardSubject(shard, "up.>"), func(m *jetstream.RawStreamMsg) error {
		u, err := decode[store.Upstream](m.Data, "upstream message")
		if err != nil {
			return err
		}
		u.Seq = upSeq(shard, m.Sequence)
		return fn(u)
	})
	if err != nil {
		return fmt.Errorf("read upstream queue: %w", err)
	}
	return nil
}

// DeleteUpstream removes seq from the queue once it is delivered or
// expired. Deleting a message that is gone is not an error.
func (s *Store) DeleteUpstream(ctx context.Context, seq uint64) error {
	shard, streamSeq := splitSeq(seq)
	if shard >= s.shards {
		return nil
	}
	err := s.retry(ctx, func(ctx context.Context) error {
		return s.deleteMsg(ctx, s.shardStream(shard), streamSeq)
	})
	if err != nil {
		return fmt.Errorf("delete upstream message %d: %w", seq, err)
	}
	return nil
}

// deleteMsg deletes the message at seq from stream; one that is gone
// already is not an error.
func (s *Store) deleteMsg(ctx context.Context, stream string, seq uint64) error {
	body, _ := json.Marshal(map[string]any{"seq": seq, "no_erase": true})
	reply, err := s.nc.RequestWithContext(ctx, "$JS.API.STREAM.MSG.DELETE."+stream, body)
	if err != nil {
		return classify(err)
	}
	var resp struct {
		Error   *apiError `json:"error"`
		Success bool      `json:"success"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return fmt.Errorf("decode answer: %w", err)
	}
	if resp.Error != nil && resp.Error.ErrorCode != errCodeNoMessage && resp.Error.ErrorCode != errCodeSequenceNotFound {
		return classify(resp.Error.err())
	}
	return nil
}

// errCodeSequenceNotFound: a delete found no message at the sequence.
const errCodeSequenceNotFound jetstream.ErrorCode = 10043
