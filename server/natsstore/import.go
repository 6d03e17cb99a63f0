// SPDX-License-Identifier: Apache-2.0

package natsstore

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"tether/server/store"
)

// Import writes what another store exported (store.Store.Export), keeping
// every ID, token, secret hash and time: devices keep their credentials
// and tokens, and queued messages their times to live. What is there
// already is left as it is, so that an import run again after a crash goes
// on where it stopped. now is the clock for the dedupe entries' lifetimes.
//
// A topic message caught halfway through its fan-out starts its current
// topic again: the devices it reached already may get it twice, under
// another message ID.
func (s *Store) Import(ctx context.Context, r store.Record, now time.Time) error {
	var err error
	switch {
	case r.Sender != nil:
		err = s.importSender(ctx, *r.Sender)
	case r.Device != nil:
		err = s.importDevice(ctx, *r.Device)
	case r.Registration != nil:
		err = s.importRegistration(ctx, *r.Registration, topicList{Topics: r.Topics, Added: r.TopicsAdded})
	case r.Queue != nil:
		err = s.importQueue(ctx, *r.Queue)
	case r.Upstream != nil:
		err = s.importUpstream(ctx, *r.Upstream)
	case r.Seen != nil:
		err = s.importSeen(ctx, *r.Seen, now)
	case r.TopicMessage != nil:
		err = s.importTopicMessage(ctx, *r.TopicMessage)
	case r.EnrollKey != nil:
		err = s.importEnrollKey(ctx, *r.EnrollKey)
	case r.Cert != nil:
		err = s.create(ctx, s.metaStream(), []write{{subject: s.metaKey(certKey(r.Cert.CertID)), data: encode(*r.Cert)}})
	}
	return err
}

// create writes ws, each only if its subject has no record; it is not an
// error that they are there already.
func (s *Store) create(ctx context.Context, stream string, ws []write) error {
	return s.retry(ctx, func(ctx context.Context) error {
		var todo []write
		for _, w := range ws {
			raw, seq, err := s.get(ctx, stream, w.subject)
			if err != nil {
				return err
			}
			if raw == nil {
				w.expect = ptr(seq)
				todo = append(todo, w)
			}
		}
		_, err := s.commit(ctx, stream, todo)
		return err
	})
}

func (s *Store) importSender(ctx context.Context, snd store.Sender) error {
	if !validToken(snd.ID) {
		return fmt.Errorf("import sender %.40q: not a sender ID", snd.ID)
	}
	ws := []write{
		{subject: s.metaKey(senderKey(snd.ID)), data: encode(snd)},
		{subject: s.metaKey(senderKeyHash(snd.KeyHash)), data: []byte(snd.ID)},
	}
	if snd.OldKeyHash != nil {
		ws = append(ws, write{subject: s.metaKey(senderKeyHash(snd.OldKeyHash)), data: []byte(snd.ID)})
	}
	if err := s.create(ctx, s.metaStream(), ws); err != nil {
		return fmt.Errorf("import sender %s: %w", snd.ID, err)
	}
	return nil
}

func (s *Store) importDevice(ctx context.Context, dev store.Device) error {
	if !validToken(dev.ID) {
		return fmt.Errorf("import device %.40q: not a device ID", dev.ID)
	}
	shard := s.ShardOf(dev.ID)
	if err := s.create(ctx, s.shardStream(shard), []write{{subject: s.shardSubject(shard, devKey(dev.ID)), data: encode(dev)}}); err != nil {
		return fmt.Errorf("import device %s: %w", dev.ID, err)
	}
	return nil
}

// importRegistration writes a registration in its device's shard, with a
// pointer in its token's when that is another; an active one joins its
// device's record, with its subscriptions.
func (s *Store) importRegistration(ctx context.Context, reg store.Registration, tl topicList) error {
	topics := tl.Topics
	if !validToken(reg.Device) || !validToken(reg.Token) {
		return fmt.Errorf("import registration of device %.40q: not a device ID or token", reg.Device)
	}
	shard := s.ShardOf(reg.Device)
	ws := []write{{subject: s.shardSubject(shard, tokKey(reg.Token)), data: encode(tokRecord{Registration: reg})}}
	if reg.Active() && len(topics) > 0 {
		slices.Sort(topics)
		ws = append(ws, write{subject: s.shardSubject(shard, topicsKey(reg.Token)), data: encode(tl)})
	}
	if err := s.create(ctx, s.shardStream(shard), ws); err != nil {
		return fmt.Errorf("import registration of device %s: %w", reg.Device, err)
	}
	if home := s.ShardOf(reg.Token); home != shard {
		pointer := tokRecord{Registration: store.Registration{Token: reg.Token, Device: reg.Device}, Moved: true}
		if err := s.create(ctx, s.shardStream(home), []write{{subject: s.shardSubject(home, tokKey(reg.Token)), data: encode(pointer)}}); err != nil {
			return fmt.Errorf("import registration of device %s: %w", reg.Device, err)
		}
	}
	if !reg.Active() {
		return nil
	}
	rec := encode(subscriber{Token: reg.Token, Device: reg.Device, App: reg.App})
	if err := s.writeSubscriptions(ctx, shard, reg.Sender, reg.Token, topics, rec); err != nil {
		return fmt.Errorf("import registration of device %s: %w", reg.Device, err)
	}
	_, err := s.updateDevice(ctx, reg.Device, func(d *device, _ *change) ([]write, error) {
		key := regKey(reg.App, reg.Sender)
		if d.Regs[key] != "" {
			return nil, errUnchanged
		}
		if d.Regs == nil {
			d.Regs = map[string]string{}
		}
		d.Regs[key] = reg.Token
		return nil, nil
	})
	if err != nil {
		return fmt.Errorf("import registration of device %s: %w", reg.Device, err)
	}
	return nil
}

// importBatch bounds the messages of one device written in one change.
const importBatch = 400

// importQueue adds a device's messages, in their order, after what its
// queue holds, and its notices.
func (s *Store) importQueue(ctx context.Context, q store.Queue) error {
	if !validToken(q.Device) {
		return fmt.Errorf("import queue of device %.40q: not a device ID", q.Device)
	}
	first := true
	for chunk := range slices.Chunk(append([]store.Message{}, q.Messages...), importBatch) {
		err := s.importMessages(ctx, q, chunk, first)
		if err != nil {
			return fmt.Errorf("import queue of device %s: %w", q.Device, err)
		}
		first = false
	}
	if len(q.Messages) == 0 {
		if err := s.importMessages(ctx, q, nil, true); err != nil {
			return fmt.Errorf("import queue of device %s: %w", q.Device, err)
		}
	}
	return nil
}

func (s *Store) importMessages(ctx context.Context, q store.Queue, msgs []store.Message, notices bool) error {
	_, err := s.updateDevice(ctx, q.Device, func(d *device, ch *change) ([]write, error) {
		changed := false
		for _, m := range msgs {
			if slices.ContainsFunc(d.Queue, func(e entry) bool { return e.ID == m.ID }) {
				continue
			}
			d.Next++
			m.Seq = d.Next
			e := entry{Seq: m.Seq, ID: m.ID, App: m.App, Sender: m.Sender, Token: m.Token, Collapse: m.CollapseKey, Expiry: m.Expiry}
			if m.Receipt {
				e.Receipt, e.Sent, e.OriginID = true, m.Sent, m.OriginID
			}
			d.Queue = append(d.Queue, e)
			ch.put = append(ch.put, m)
			changed = true
		}
		if notices {
			for _, n := range q.Refresh {
				if d.Refresh == nil {
					d.Refresh = map[string]refresh{}
				}
				key := regKey(n.App, n.Sender)
				if _, ok := d.Refresh[key]; !ok {
					d.Refresh[key] = refresh{ID: n.ID, Token: n.Token}
					changed = true
				}
			}
			for _, x := range q.Deleted {
				if d.Deleted == nil {
					d.Deleted = map[string]deleted{}
				}
				if _, ok := d.Deleted[x.App]; !ok {
					d.Deleted[x.App] = deleted{Pending: x.Pending, SealedID: x.SealedID, SealedCount: x.SealedCount}
					changed = true
				}
			}
		}
		if !changed {
			return nil, errUnchanged
		}
		return nil, nil
	})
	return err
}

func (s *Store) importUpstream(ctx context.Context, u store.Upstream) error {
	if !validToken(u.Device) {
		return fmt.Errorf("import upstream message of device %.40q: not a device ID", u.Device)
	}
	shard := s.ShardOf(u.Device)
	if err := s.create(ctx, s.shardStream(shard), []write{s.upstreamWrite(shard, u)}); err != nil {
		return fmt.Errorf("import upstream message %q: %w", u.ID, err)
	}
	return nil
}

func (s *Store) importSeen(ctx context.Context, x store.Seen, now time.Time) error {
	if !validToken(x.Device) {
		return fmt.Errorf("import upstream sighting of device %.40q: not a device ID", x.Device)
	}
	if !x.Until.After(now) {
		return nil
	}
	shard := s.ShardOf(x.Device)
	w := write{subject: s.shardSubject(shard, seenKey(x.Device, x.App, x.ID)), data: encode(seen{Until: x.Until}), ttl: x.Until.Sub(now) + bodyTTLMargin}
	if err := s.create(ctx, s.shardStream(shard), []write{w}); err != nil {
		return fmt.Errorf("import upstream sighting: %w", err)
	}
	return nil
}

// importTopicMessage stores a topic message under a Seq made from its
// sending time and its old Seq, the same on every run.
func (s *Store) importTopicMessage(ctx context.Context, tm store.TopicMessage) error {
	if !validToken(tm.Sender) {
		return errors.New("import topic message: not a sender ID")
	}
	shard := s.ShardOf(tm.Sender)
	tm.Seq = uint64(tm.Sent.UnixMicro()+int64(tm.Seq))<<8 | uint64(shard)
	tm.After = ""
	w := write{subject: s.shardSubject(shard, topicMsgKey(tm.Seq)), data: encode(tm), ttl: max(tm.Expiry.Sub(tm.Sent), 0) + bodyTTLMargin}
	if err := s.create(ctx, s.shardStream(shard), []write{w}); err != nil {
		return fmt.Errorf("import topic message %s: %w", tm.ID, err)
	}
	return nil
}

func (s *Store) importEnrollKey(ctx context.Context, k store.EnrollKey) error {
	if !validToken(k.ID) {
		return fmt.Errorf("import enrollment key %.40q: not a key ID", k.ID)
	}
	err := s.create(ctx, s.metaStream(), []write{
		{subject: s.metaKey(enrollKey(k.ID)), data: encode(k)},
		{subject: s.metaKey(enrollHashKey(k.Hash)), data: []byte(k.ID)},
	})
	if err != nil {
		return fmt.Errorf("import enrollment key %s: %w", k.ID, err)
	}
	return nil
}
