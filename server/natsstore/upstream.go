package natsstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"tether/server/store"
)

// Upstream messages and receipts are records up.DEVICE.HASH.RECEIVED in their
// device's shard. Their store.Upstream.Seq names the record: its stream
// sequence times 256 plus its shard (upSeq).

func upSeq(shard int, streamSeq uint64) uint64 { return streamSeq<<8 | uint64(shard) }

func splitSeq(seq uint64) (shard int, streamSeq uint64) { return int(seq & 0xff), seq >> 8 }

// seen is the record of an upstream message ID seen lately.
type seen struct {
	Until time.Time `json:"until"`
}

// PutUpstream queues u unless its (device, app, id) was seen before and that
// sighting has not expired; the sighting is remembered until seenUntil.
// It fills in u's Token and Seq.
func (s *Store) PutUpstream(ctx context.Context, u *store.Upstream, seenUntil time.Time) (store.PutOutcome, error) {
	if !validToken(u.Device) {
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
		last, err := s.commit(ctx, stream, []write{
			{subject: key, data: encode(seen{Until: seenUntil}), expect: ptr(seenSeq), ttl: seenUntil.Sub(u.Received) + bodyTTLMargin},
			s.upstreamWrite(shard, *u),
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

// upstreamWrite is the write that queues u.
func (s *Store) upstreamWrite(shard int, u store.Upstream) write {
	u.Seq = 0 // named by where it is stored
	return write{subject: s.shardSubject(shard, upKey(u.Device, u.App, u.ID, u.Received)), data: encode(u), ttl: max(u.Expiry.Sub(u.Received), 0) + bodyTTLMargin}
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
