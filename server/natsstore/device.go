// SPDX-License-Identifier: Apache-2.0

package natsstore

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"tether/server/store"
)

// bodyTTLMargin is added to a message body's time to live, so that a
// server whose clock is behind the engine's still finds the body of a
// message it considers alive. The queue record decides what is alive.
const bodyTTLMargin = time.Hour

// errUnchanged is returned by an update function that decided to write
// nothing.
var errUnchanged = errors.New("unchanged")

// updateDevice changes device's queue record: fn reads and changes it and
// may add writes of its own, all written as one atomic batch only if the
// record is still the one read; otherwise fn runs again on a fresh read.
// fn returning errUnchanged ends it without a write. last is the sequence
// of the last of fn's own writes (of the batch's last when fn adds none).
//
// The changes of one device that this process makes at once are written
// together, one read and one batch for all of them (as bbolt's Batch
// shares a commit): concurrent sends and acks of a busy device do not
// fail each other's writes.
func (s *Store) updateDevice(ctx context.Context, dev string, fn func(d *device, ch *change) ([]write, error)) (last uint64, err error) {
	op := &deviceOp{fn: fn, done: make(chan struct{})}
	s.devMu.Lock()
	s.devPending[dev] = append(s.devPending[dev], op)
	lead := !s.devWriting[dev]
	s.devWriting[dev] = true
	s.devMu.Unlock()
	if lead {
		s.writeDevice(dev, op)
	}
	select {
	case <-op.done:
		return op.last, op.err
	case <-ctx.Done():
		return 0, fmt.Errorf("change of device %s: %w", dev, ctx.Err())
	}
}

// deviceOp is one change waiting for a device's writer.
type deviceOp struct {
	fn   func(d *device, ch *change) ([]write, error)
	done chan struct{}
	last uint64
	err  error
}

// writeDevice writes what waits for dev until mine is done, then hands
// what is left to a goroutine of the store, so that the caller that
// happened to lead is not kept waiting for others.
func (s *Store) writeDevice(dev string, mine *deviceOp) {
	for {
		s.devMu.Lock()
		ops := s.devPending[dev]
		delete(s.devPending, dev)
		if len(ops) == 0 {
			delete(s.devWriting, dev)
			s.devMu.Unlock()
			return
		}
		s.devMu.Unlock()
		s.applyDeviceOps(dev, ops)
		select {
		case <-mine.done:
			s.writers.Go(func() { s.writeDevice(dev, &deviceOp{done: closedChan}) })
			return
		default:
		}
	}
}

// closedChan is a done channel of nothing to wait for.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// batchBudget is what the writes of one device's changes may take of an
// atomic batch, leaving room for a change that needs more.
const batchBudget = maxBatch - 100

// applyDeviceOps writes ops, in as few batches as they fit in, each
// applied to the record as the ones before it left it.
func (s *Store) applyDeviceOps(dev string, ops []*deviceOp) {
	ctx, cancel := context.WithTimeout(context.Background(), s.timeout)
	defer cancel()
	shard := s.ShardOf(dev)
	stream := s.shardStream(shard)
	for len(ops) > 0 {
		var taken int
		var results []deviceOp // of ops[:taken], set when a batch goes through
		err := s.retry(ctx, func(ctx context.Context) error {
			raw, seq, err := s.get(ctx, stream, s.shardSubject(shard, queueKey(dev)))
			if err != nil {
				return err
			}
			var d device
			if raw != nil {
				if d, err = decode[device](raw, "queue of device "+dev); err != nil {
					return err
				}
			}
			var ch change
			var extras []write
			ends := make([]int, 0, len(ops)) // where each op's writes end in extras
			used := map[string]bool{}
			results = results[:0]
			taken = 0
			changed := false
		ops:
			for _, op := range ops {
				trial := d.clone()
				var tch change
				extra, err := op.fn(&trial, &tch)
				switch {
				case errors.Is(err, errUnchanged):
					results = append(results, deviceOp{})
					ends = append(ends, len(extras))
					taken++
					continue
				case errors.Is(err, errConflict), errors.Is(err, errTransient):
					return err
				case err != nil:
					results = append(results, deviceOp{err: err})
					ends = append(ends, len(extras))
					taken++
					continue
				}
				size := 1 + len(ch.put) + len(tch.put) + len(ch.dropped) + len(tch.dropped) + len(extras) + len(extra)
				for _, w := range extra {
					if used[w.subject] {
						break ops // two changes of one record: the next batch
					}
				}
				if taken > 0 && size > batchBudget {
					break
				}
				for _, w := range extra {
					used[w.subject] = true
				}
				d, changed = trial, true
				ch.merge(tch)
				extras = append(extras, extra...)
				results = append(results, deviceOp{})
				ends = append(ends, len(extras))
				taken++
			}
			if !changed {
				return nil
			}
			ws := s.deviceWrites(shard, dev, d, seq, ch, extras)
			if len(ws) > maxBatch {
				return fmt.Errorf("change of device %s: %d writes, more than one batch takes", dev, len(ws))
			}
			last, err := s.commit(ctx, stream, ws)
			if err != nil {
				return err
			}
			for r, n := range ch.drops {
				s.obs.Dropped(r, n)
			}
			start := len(ws) - len(extras) // where extras begin in ws
			for i := range results {
				if results[i].err == nil {
					results[i].last = last
					if ends[i] > 0 {
						results[i].last = last - uint64(len(ws)-1-(start+ends[i]-1))
					}
				}
			}
			return nil
		})
		for i, op := range ops[:taken] {
			op.last, op.err = results[i].last, results[i].err
			if err != nil {
				op.last, op.err = 0, err
			}
			close(op.done)
		}
		if err != nil {
			for _, op := range ops[taken:] {
				op.err = err
				close(op.done)
			}
			return
		}
		ops = ops[taken:]
	}
}

// deviceWrites are the writes of a change of dev's record, read at seq:
// the record, the bodies added and those dropped (a body added and dropped
// in the same change is neither), then extras.
func (s *Store) deviceWrites(shard int, dev string, d device, seq uint64, ch change, extras []write) []write {
	added := map[uint64]bool{}
	for _, m := range ch.put {
		added[m.Seq] = true
	}
	gone := map[uint64]bool{}
	for _, e := range ch.dropped {
		gone[e.Seq] = true
	}
	ws := []write{{subject: s.shardSubject(shard, queueKey(dev)), data: encode(d), expect: ptr(seq)}}
	for _, m := range ch.put {
		if !gone[m.Seq] {
			ws = append(ws, write{subject: s.shardSubject(shard, bodyKey(dev, m.Seq)), data: encode(m), ttl: max(m.Expiry.Sub(m.Sent), 0) + bodyTTLMargin})
		}
	}
	for _, e := range ch.dropped {
		if !added[e.Seq] {
			ws = append(ws, write{subject: s.shardSubject(shard, bodyKey(dev, e.Seq)), purge: true})
		}
	}
	return append(ws, extras...)
}

// readDevice reads device's queue record as it is now.
func (s *Store) readDevice(ctx context.Context, dev string) (device, error) {
	shard := s.ShardOf(dev)
	raw, _, err := s.get(ctx, s.shardStream(shard), s.shardSubject(shard, queueKey(dev)))
	if err != nil || raw == nil {
		return device{}, err
	}
	return decode[device](raw, "queue of device "+dev)
}

// OpenSession records that a session of dev opened, and returns its place
// in the order of every session the state has seen opened: of two
// sessions of one device, on any processes, the later has the greater.
func (s *Store) OpenSession(ctx context.Context, dev string) (uint64, error) {
	if !validToken(dev) {
		return 0, fmt.Errorf("open session of device %.40q: %w", dev, store.ErrNotFound)
	}
	shard := s.ShardOf(dev)
	var seq uint64
	err := s.retry(ctx, func(ctx context.Context) error {
		var err error
		seq, err = s.commit(ctx, s.shardStream(shard), []write{{subject: s.shardSubject(shard, sessionKey(dev)), data: []byte("{}")}})
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("open session of device %s: %w", dev, err)
	}
	return seq, nil
}

// tokRecord is a registration's record. A token made by another store
// (moved here by tether-server migrate) does not hash to its device's
// shard: its own shard then holds a pointer, Moved, and the registration
// is in its device's shard.
type tokRecord struct {
	store.Registration
	Moved bool `json:"moved,omitempty"`
}

// newToken makes a token that hashes to shard, so that the token alone
// finds its device's records.
func (s *Store) newToken(shard int) string {
	b := make([]byte, store.TokenBytes)
	for {
		rand.Read(b)
		t := base64.RawURLEncoding.EncodeToString(b)
		if s.ShardOf(t) == shard {
			return t
		}
	}
}

// Register returns the active registration of (device, app, sender),
// creating it with a new token if there is none. The sender must exist.
func (s *Store) Register(ctx context.Context, dev, app, sender, vapid string, now time.Time) (store.Registration, error) {
	if !validToken(dev) {
		return store.Registration{}, fmt.Errorf("register app %q: device %.40q: %w", app, dev, store.ErrNotFound)
	}
	if sender != store.WebPushSender {
		if _, err := s.Sender(ctx, sender); err != nil {
			return store.Registration{}, fmt.Errorf("register app %q: %w", app, err)
		}
	}
	shard := s.ShardOf(dev)
	var reg store.Registration
	_, err := s.updateDevice(ctx, dev, func(d *device, _ *change) ([]write, error) {
		if token, ok := d.Regs[regKey(app, sender)]; ok {
			reg = store.Registration{Token: token}
			return nil, errUnchanged
		}
		if len(d.Regs) >= store.MaxRegistrationsPerDevice {
			return nil, store.ErrTooManyRegistrations
		}
		reg = store.Registration{Token: s.newToken(shard), Device: dev, App: app, Sender: sender, Created: now.UTC(), VAPID: vapid}
		if d.Regs == nil {
			d.Regs = map[string]string{}
		}
		d.Regs[regKey(app, sender)] = reg.Token
		return []write{{subject: s.shardSubject(shard, tokKey(reg.Token)), data: encode(tokRecord{Registration: reg}), expect: ptr(0)}}, nil
	})
	switch {
	case err == nil && reg.Device == "":
		// Registered before: read its record.
		reg, _, err = s.registration(ctx, shard, reg.Token)
	case err == nil:
		err = s.inherit(ctx, dev, app, sender, reg.Token, now)
	}
	if err != nil {
		return store.Registration{}, fmt.Errorf("register app %q for sender %s: %w", app, sender, err)
	}
	return reg, nil
}

// inherit leads the token that (app, sender) had on the device dev
// replaced, if any, to token, for store.InheritGrace: app servers that
// send to it get token as its canonical registration_id. The old token's
// record changes first, so that a crash before the device's record
// forgets it only leaves that to be done again by the next register.
func (s *Store) inherit(ctx context.Context, dev, app, sender, token string, now time.Time) error {
	d, err := s.Device(ctx, dev)
	if err != nil {
		return err
	}
	old, ok := d.Inherited[regKey(app, sender)]
	if !ok {
		return nil
	}
	err = s.retry(ctx, func(ctx context.Context) error {
		prev, shard, seq, err := s.findRegistration(ctx, old)
		if err != nil || prev.Token == "" {
			return err
		}
		prev.ReplacedBy, prev.GraceUntil = token, now.Add(store.InheritGrace).UTC()
		_, err = s.commit(ctx, s.shardStream(shard), []write{{subject: s.shardSubject(shard, tokKey(old)), data: encode(tokRecord{Registration: prev}), expect: ptr(seq)}})
		return err
	})
	if err != nil {
		return fmt.Errorf("lead the replaced device's token to the new one: %w", err)
	}
	shard := s.ShardOf(dev)
	_, err = modify(ctx, s, s.shardStream(shard), s.shardSubject(shard, devKey(dev)), "device "+dev, func(d *store.Device, found bool) error {
		if !found {
			return errUnchanged
		}
		delete(d.Inherited, regKey(app, sender))
		return nil
	})
	return err
}

// registration reads the record of token in shard; seq is 0 when there is
// none.
func (s *Store) registration(ctx context.Context, shard int, token string) (store.Registration, uint64, error) {
	raw, seq, err := s.get(ctx, s.shardStream(shard), s.shardSubject(shard, tokKey(token)))
	if err != nil || raw == nil {
		return store.Registration{}, seq, err
	}
	r, err := decode[tokRecord](raw, "registration")
	return r.Registration, seq, err
}

// findRegistration reads the record of token wherever it is: in the shard
// the token hashes to, or, for a moved token, in its device's.
func (s *Store) findRegistration(ctx context.Context, token string) (reg store.Registration, shard int, seq uint64, err error) {
	if !validToken(token) {
		return store.Registration{}, 0, 0, nil
	}
	shard = s.ShardOf(token)
	raw, seq, err := s.get(ctx, s.shardStream(shard), s.shardSubject(shard, tokKey(token)))
	if err != nil || raw == nil {
		return store.Registration{}, shard, seq, err
	}
	r, err := decode[tokRecord](raw, "registration")
	if err != nil || !r.Moved {
		return r.Registration, shard, seq, err
	}
	shard = s.ShardOf(r.Device)
	reg, seq, err = s.registration(ctx, shard, token)
	return reg, shard, seq, err
}

// ActiveRegistration returns the active registration of (device, app,
// sender), or ErrNotFound.
func (s *Store) ActiveRegistration(ctx context.Context, dev, app, sender string) (store.Registration, error) {
	reg, err := s.activeRegistration(ctx, dev, app, sender)
	if err != nil {
		return store.Registration{}, fmt.Errorf("registration of app %q for sender %s: %w", app, sender, err)
	}
	return reg, nil
}

func (s *Store) activeRegistration(ctx context.Context, dev, app, sender string) (store.Registration, error) {
	if !validToken(dev) {
		return store.Registration{}, store.ErrNotFound
	}
	d, err := s.readDevice(ctx, dev)
	if err != nil {
		return store.Registration{}, err
	}
	token, ok := d.Regs[regKey(app, sender)]
	if !ok {
		return store.Registration{}, store.ErrNotFound
	}
	reg, _, err := s.registration(ctx, s.ShardOf(dev), token)
	if err == nil && reg.Token == "" {
		err = fmt.Errorf("registration record of an active token: %w", store.ErrCorrupt)
	}
	return reg, err
}

// topicList is a token's topics, in order.
type topicList struct {
	Topics []string `json:"topics"`
	// Added are when the subscriptions were made, by topic; one made
	// before the dates were kept has none.
	Added map[string]time.Time `json:"added,omitempty"`
}

// Unregister ends the active registration of (device, app, sender), drops
// the messages queued for its token and its subscriptions. It returns
// ErrNotFound when there is no active registration.
func (s *Store) Unregister(ctx context.Context, dev, app, sender string, now time.Time) (dropped int, err error) {
	if !validToken(dev) {
		return 0, fmt.Errorf("unregister app %q for sender %s: %w", app, sender, store.ErrNotFound)
	}
	shard := s.ShardOf(dev)
	var reg store.Registration
	var topics []string
	_, err = s.updateDevice(ctx, dev, func(d *device, ch *change) ([]write, error) {
		token, ok := d.Regs[regKey(app, sender)]
		if !ok {
			return nil, store.ErrNotFound
		}
		var tokSeq uint64
		var err error
		if reg, tokSeq, err = s.registration(ctx, shard, token); err != nil {
			return nil, err
		}
		reg.Token = token
		tt, ttSeq, err := s.topics(ctx, shard, token)
		if err != nil {
			return nil, err
		}
		topics = tt
		delete(d.Regs, regKey(app, sender))
		delete(d.Refresh, regKey(app, sender))
		dropped = d.remove(func(e entry) bool { return e.Token == token }, ch)
		reg.Unregistered = now.UTC()
		ws := []write{{subject: s.shardSubject(shard, tokKey(token)), data: encode(tokRecord{Registration: reg}), expect: ptr(tokSeq)}}
		if ttSeq != 0 {
			ws = append(ws, write{subject: s.shardSubject(shard, topicsKey(token)), purge: true, expect: ptr(ttSeq)})
		}
		return ws, nil
	})
	if err != nil {
		return 0, fmt.Errorf("unregister app %q for sender %s: %w", app, sender, err)
	}
	// The subscriptions' index goes after: fan-out finds no active
	// registration behind what is left of it, should this stop halfway.
	if err := s.deleteSubscriptions(ctx, shard, reg.Sender, reg.Token, topics); err != nil {
		s.log.Warn("unregister: subscriptions left for fan-out to skip", "err", err)
	}
	return dropped, nil
}

// topics reads token's topics; seq is what a write that expects them
// unchanged passes.
func (s *Store) topics(ctx context.Context, shard int, token string) ([]string, uint64, error) {
	tl, seq, err := s.topicList(ctx, shard, token)
	return tl.Topics, seq, err
}

// topicList reads token's topics with the dates of their subscriptions.
func (s *Store) topicList(ctx context.Context, shard int, token string) (topicList, uint64, error) {
	raw, seq, err := s.get(ctx, s.shardStream(shard), s.shardSubject(shard, topicsKey(token)))
	if err != nil || raw == nil {
		return topicList{}, seq, err
	}
	tl, err := decode[topicList](raw, "topics of a registration")
	return tl, seq, err
}

// subsPerBatch bounds the subscription records written in one batch.
const subsPerBatch = 500

// deleteSubscriptions deletes token's subscription records of topics.
func (s *Store) deleteSubscriptions(ctx context.Context, shard int, sender, token string, topics []string) error {
	return s.writeSubscriptions(ctx, shard, sender, token, topics, nil)
}

// writeSubscriptions writes (with rec set) or deletes (rec nil) token's
// subscription records of topics, in batches.
func (s *Store) writeSubscriptions(ctx context.Context, shard int, sender, token string, topics []string, rec []byte) error {
	for chunk := range slices.Chunk(topics, subsPerBatch) {
		ws := make([]write, len(chunk))
		for i, topic := range chunk {
			ws[i] = write{subject: s.shardSubject(shard, subKey(sender, topic, token)), data: rec, purge: rec == nil}
		}
		if err := s.retry(ctx, func(ctx context.Context) error {
			_, err := s.commit(ctx, s.shardStream(shard), ws)
			return err
		}); err != nil {
			return fmt.Errorf("write %d subscriptions: %w", len(chunk), err)
		}
	}
	return nil
}

// Enqueue stores messages in their devices' queues under the collapse rule
// and the caps, each device in one change. queued[i] reports whether
// msgs[i] was stored: false when its token is not the active registration
// of its device. On an error, queued (when not nil) still says which were
// stored: those of the devices whose change went through.
func (s *Store) Enqueue(ctx context.Context, msgs []store.Message, live store.Live) (queued []bool, err error) {
	queued = make([]bool, len(msgs))
	byDevice := map[string][]int{}
	for i, m := range msgs {
		if validToken(m.Device) {
			byDevice[m.Device] = append(byDevice[m.Device], i)
		}
	}
	devices := sortedKeys(byDevice)
	errs := make([]error, len(devices))
	var mu sync.Mutex
	stored := false
	s.parallel(len(devices), func(di int) {
		dev := devices[di]
		idx := byDevice[dev]
		var ok []bool
		_, err := s.updateDevice(ctx, dev, func(d *device, ch *change) ([]write, error) {
			ok = make([]bool, len(idx))
			var latest time.Time
			for _, i := range idx {
				latest = maxTime(latest, msgs[i].Sent)
			}
			d.prune(latest, ch)
			changed := false
			for k, i := range idx {
				m := msgs[i]
				ok[k] = d.enqueue(&m, ch, live)
				changed = changed || ok[k]
			}
			if !changed {
				return nil, errUnchanged
			}
			return nil, nil
		})
		if err != nil {
			errs[di] = fmt.Errorf("device %s: %w", dev, err)
			return
		}
		mu.Lock()
		defer mu.Unlock()
		for k, i := range idx {
			queued[i] = ok[k]
			stored = stored || ok[k]
		}
	})
	if err := errors.Join(errs...); err != nil {
		if !stored {
			queued = nil
		}
		return queued, fmt.Errorf("enqueue %d messages: %w", len(msgs), err)
	}
	return queued, nil
}

// missing lists what of have is not in had.
func missing(have, had []string) []string {
	var out []string
	for _, x := range have {
		if !slices.Contains(had, x) {
			out = append(out, x)
		}
	}
	return out
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// Pending returns up to limit messages (all when limit is 0) queued for a
// device with Seq above after, in order, leaving out without fetching them
// those whose ID skip reports (none when skip is nil); last is the Seq of
// the last queue entry looked at, returned or left out, or after when none
// was. Expired messages not yet dropped may be included; the caller checks
// Expiry.
func (s *Store) Pending(ctx context.Context, dev string, after uint64, limit int, skip func(id string) bool) (msgs []store.Message, last uint64, err error) {
	if !validToken(dev) {
		return nil, after, nil
	}
	d, err := s.readDevice(ctx, dev)
	if err != nil {
		return nil, 0, fmt.Errorf("pending messages of device %s: %w", dev, err)
	}
	last = after
	var want []entry
	for _, e := range d.Queue {
		if e.Seq <= after {
			continue
		}
		last = e.Seq
		if skip != nil && skip(e.ID) {
			continue
		}
		want = append(want, e)
		if len(want) == limit {
			break
		}
	}
	if len(want) == 0 {
		return nil, last, nil
	}
	bodies, err := s.bodies(ctx, dev, want)
	if err != nil {
		return nil, 0, fmt.Errorf("pending messages of device %s: %w", dev, err)
	}
	msgs = make([]store.Message, 0, len(want))
	for _, e := range want {
		m, ok := bodies[e.Seq]
		if !ok {
			continue // expired meanwhile
		}
		// The record has the truth of what changed since: a rotation
		// gives queued messages a new token.
		m.Token = e.Token
		msgs = append(msgs, m)
	}
	return msgs, last, nil
}

// maxMultiGet is the most subjects one direct get asks for: the server
// answers at most 1024 messages to one.
const maxMultiGet = 1024

// bodies reads the bodies of entries, and only theirs: from the nearest
// replica in as few requests as it takes, then whatever that replica
// lacked from the leader.
func (s *Store) bodies(ctx context.Context, dev string, entries []entry) (map[uint64]store.Message, error) {
	shard := s.ShardOf(dev)
	stream := s.shardStream(shard)
	out := make(map[uint64]store.Message, len(entries))
	for chunk := range slices.Chunk(entries, maxMultiGet) {
		subjects := make([]string, len(chunk))
		for i, e := range chunk {
			subjects[i] = s.shardSubject(shard, bodyKey(dev, e.Seq))
		}
		msgs, err := s.lastMsgs(ctx, stream, subjects)
		if err != nil {
			return nil, err
		}
		for _, raw := range msgs {
			m, err := decode[store.Message](raw.Data, "message body")
			if err != nil {
				return nil, err
			}
			out[m.Seq] = m
		}
	}
	for _, e := range entries {
		if _, ok := out[e.Seq]; ok {
			continue
		}
		raw, _, err := s.get(ctx, stream, s.shardSubject(shard, bodyKey(dev, e.Seq)))
		if err != nil {
			return nil, err
		}
		if raw == nil {
			continue
		}
		m, err := decode[store.Message](raw, "message body")
		if err != nil {
			return nil, err
		}
		out[m.Seq] = m
	}
	return out, nil
}

// Ack deletes the device's messages and notices with these IDs and returns
// how many messages it found; IDs of other devices' messages are ignored.
// The receipts that acked messages asked for are queued in the same change
// and returned.
func (s *Store) Ack(ctx context.Context, dev string, ids []string, now time.Time) (acked int, receipts []store.Upstream, err error) {
	if !validToken(dev) {
		return 0, nil, nil
	}
	shard := s.ShardOf(dev)
	last, err := s.updateDevice(ctx, dev, func(d *device, ch *change) ([]write, error) {
		d.prune(now, ch)
		before, _ := d.notices()
		removed := d.ack(ids, ch)
		after, _ := d.notices()
		acked, receipts = len(removed), nil
		if acked == 0 && len(before) == len(after) {
			return nil, errUnchanged
		}
		var ws []write
		for _, e := range removed {
			if !e.Receipt {
				continue
			}
			u := receipt(dev, e, now)
			receipts = append(receipts, u)
			ws = append(ws, s.upstreamWrite(shard, u))
		}
		return ws, nil
	})
	if err != nil {
		return 0, nil, fmt.Errorf("ack %d messages of device %s: %w", len(ids), dev, err)
	}
	// The receipts were the batch's last writes.
	for i := range receipts {
		receipts[i].Seq = upSeq(shard, last-uint64(len(receipts)-1-i))
	}
	return acked, receipts, nil
}

// receipt is the delivery receipt of e, in GCM's form (see the bbolt
// store's putReceipt).
func receipt(dev string, e entry, now time.Time) store.Upstream {
	original := e.ID
	if e.OriginID != "" {
		original = e.OriginID
	}
	return store.Upstream{
		Type: store.UpstreamReceipt, Device: dev, App: e.App, Sender: e.Sender, Token: e.Token, ID: "dr2:" + original,
		Data: map[string]string{
			"message_status":         "MESSAGE_SENT_TO_DEVICE",
			"original_message_id":    original,
			"device_registration_id": e.Token,
			"message_sent_timestamp": fmt.Sprint(e.Sent.UnixMilli()),
		},
		TTL: int64(store.ReceiptTTL / time.Second), Received: now, Expiry: now.Add(store.ReceiptTTL),
	}
}

// AddReceipts queues delivery receipts for messages the device acked that
// were never stored (time to live 0), and returns them.
func (s *Store) AddReceipts(ctx context.Context, msgs []store.Message, now time.Time) ([]store.Upstream, error) {
	var out []store.Upstream
	for _, m := range msgs {
		e := entry{ID: m.ID, App: m.App, Sender: m.Sender, Token: m.Token, Sent: m.Sent, OriginID: m.OriginID}
		u := receipt(m.Device, e, now)
		if err := s.putUpstream(ctx, &u); err != nil {
			return out, fmt.Errorf("queue %d delivery receipts: %w", len(msgs), err)
		}
		out = append(out, u)
	}
	return out, nil
}

// Notices returns what the device must be told, sealing counts of deleted
// messages into notices with fixed IDs first.
func (s *Store) Notices(ctx context.Context, dev string) ([]store.Notice, error) {
	if !validToken(dev) {
		return nil, nil
	}
	d, err := s.readDevice(ctx, dev)
	if err != nil {
		return nil, fmt.Errorf("notices of device %s: %w", dev, err)
	}
	out, unsealed := d.notices()
	if !unsealed {
		return out, nil
	}
	_, err = s.updateDevice(ctx, dev, func(d *device, _ *change) ([]write, error) {
		d.seal()
		out, _ = d.notices()
		return nil, nil
	})
	if err != nil {
		return nil, fmt.Errorf("notices of device %s: %w", dev, err)
	}
	return out, nil
}

// RotateToken replaces the active registration of token with a new token
// for the same app, device and sender; sends to the old token reach the
// new one until now+grace. The new token takes the old one's queued
// messages and subscriptions, and the device is told with a
// NoticeTokenRefresh. It wraps ErrNotFound when token is not an active
// registration.
func (s *Store) RotateToken(ctx context.Context, token string, grace time.Duration, now time.Time) (store.Registration, error) {
	old, _, _, err := s.findRegistration(ctx, token)
	if err == nil && (old.Token == "" || !old.Active()) {
		err = store.ErrNotFound
	}
	if err != nil {
		return store.Registration{}, fmt.Errorf("rotate token: %w", err)
	}
	shard := s.ShardOf(old.Device)
	fresh := store.Registration{Token: s.newToken(shard), Device: old.Device, App: old.App, Sender: old.Sender, Created: now.UTC()}
	topics, _, err := s.topics(ctx, shard, token)
	if err != nil {
		return store.Registration{}, fmt.Errorf("rotate token: %w", err)
	}
	// The new token's index first: until the rotation below, its
	// registration is not active, and fan-out skips it.
	rec := encode(subscriber{Token: fresh.Token, Device: fresh.Device, App: fresh.App})
	if err := s.writeSubscriptions(ctx, shard, fresh.Sender, fresh.Token, topics, rec); err != nil {
		return store.Registration{}, fmt.Errorf("rotate token: %w", err)
	}
	_, err = s.updateDevice(ctx, old.Device, func(d *device, ch *change) ([]write, error) {
		key := regKey(old.App, old.Sender)
		if d.Regs[key] != token {
			return nil, store.ErrNotFound
		}
		cur, tokSeq, err := s.registration(ctx, shard, token)
		if err != nil {
			return nil, err
		}
		tl, ttSeq, err := s.topicList(ctx, shard, token)
		if err != nil {
			return nil, err
		}
		tt := tl.Topics
		if added := missing(tt, topics); len(added) > 0 {
			// Subscribed meanwhile: the new token's index gets those too.
			if err := s.writeSubscriptions(ctx, shard, fresh.Sender, fresh.Token, added, rec); err != nil {
				return nil, err
			}
		}
		topics = tt
		d.Regs[key] = fresh.Token
		if d.Refresh == nil {
			d.Refresh = map[string]refresh{}
		}
		d.Refresh[key] = refresh{ID: newNoticeID(refreshIDPrefix), Token: fresh.Token}
		for i := range d.Queue {
			if d.Queue[i].Token == token {
				d.Queue[i].Token = fresh.Token
			}
		}
		cur.ReplacedBy, cur.GraceUntil = fresh.Token, now.Add(grace).UTC()
		ws := []write{
			{subject: s.shardSubject(shard, tokKey(token)), data: encode(tokRecord{Registration: cur}), expect: ptr(tokSeq)},
			{subject: s.shardSubject(shard, tokKey(fresh.Token)), data: encode(tokRecord{Registration: fresh}), expect: ptr(0)},
		}
		if ttSeq != 0 {
			ws = append(ws, write{subject: s.shardSubject(shard, topicsKey(token)), purge: true, expect: ptr(ttSeq)})
		}
		if len(topics) > 0 {
			ws = append(ws, write{subject: s.shardSubject(shard, topicsKey(fresh.Token)), data: encode(topicList{Topics: topics, Added: tl.Added}), expect: ptr(0)})
		}
		return ws, nil
	})
	if err != nil {
		return store.Registration{}, fmt.Errorf("rotate token: %w", err)
	}
	if err := s.deleteSubscriptions(ctx, shard, old.Sender, token, topics); err != nil {
		s.log.Warn("rotate token: subscriptions of the old token left for fan-out to skip", "err", err)
	}
	return fresh, nil
}

// ResolveTokens resolves each token, in the order given, as of now.
func (s *Store) ResolveTokens(ctx context.Context, tokens []string, now time.Time) ([]store.Resolution, error) {
	out := make([]store.Resolution, len(tokens))
	errs := make([]error, len(tokens))
	s.parallel(len(tokens), func(i int) { out[i], errs[i] = s.resolve(ctx, tokens[i], now) })
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("look up %d tokens: %w", len(tokens), err)
	}
	return out, nil
}

func (s *Store) resolve(ctx context.Context, token string, now time.Time) (store.Resolution, error) {
	// A replacement may be in another shard: that of a device which
	// replaced the token's after a factory reset.
	return store.Resolve(token, now, func(t string) (store.Registration, error) {
		reg, _, _, err := s.findRegistration(ctx, t)
		return reg, err
	})
}
