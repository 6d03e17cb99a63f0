// SPDX-License-Identifier: Apache-2.0

package natsstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"tether/server/store"
)

// subscriber is the value of a subscription record: what fan-out needs
// without reading the registration.
type subscriber struct {
	Token  string `json:"token"`
	Device string `json:"device"`
	App    string `json:"app"`
}

// Subscribe subscribes the active registration of (device, app, sender)
// to topic at now. It wraps ErrNotFound when there is no such
// registration and ErrTooManyTopics when it has too many subscriptions
// already.
func (s *Store) Subscribe(ctx context.Context, dev, app, sender, topic string, now time.Time) error {
	reg, err := s.activeRegistration(ctx, dev, app, sender)
	if err == nil {
		err = s.changeTopic(ctx, s.ShardOf(dev), reg.Token, topic, true, now)
	}
	if err != nil {
		return fmt.Errorf("subscribe app %q for sender %s to topic %q: %w", app, sender, topic, err)
	}
	return nil
}

// Unsubscribe ends the subscription of the active registration of (device,
// app, sender) to topic. Ending one that does not exist is not an error.
func (s *Store) Unsubscribe(ctx context.Context, dev, app, sender, topic string) error {
	reg, err := s.activeRegistration(ctx, dev, app, sender)
	if err == nil {
		err = s.changeTopic(ctx, s.ShardOf(dev), reg.Token, topic, false, time.Time{})
	}
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("unsubscribe app %q for sender %s from topic %q: %w", app, sender, topic, err)
	}
	return nil
}

// changeTopic subscribes token, whose registration is in shard, to topic
// at now, or unsubscribes it. The registration's record is written again
// in the same batch, unchanged, so that an unregistration or rotation
// meanwhile fails the batch: a subscription never outlives its
// registration.
func (s *Store) changeTopic(ctx context.Context, shard int, token, topic string, subscribing bool, now time.Time) error {
	return s.retry(ctx, func(ctx context.Context) error {
		reg, tokSeq, err := s.registration(ctx, shard, token)
		if err != nil {
			return err
		}
		if reg.Token == "" || !reg.Active() {
			return store.ErrNotFound
		}
		tl, ttSeq, err := s.topicList(ctx, shard, token)
		if err != nil {
			return err
		}
		topics := tl.Topics
		i, found := slices.BinarySearch(topics, topic)
		sub := write{subject: s.shardSubject(shard, subKey(reg.Sender, topic, token))}
		switch {
		case subscribing && found, !subscribing && !found:
			return nil
		case subscribing && len(topics) >= store.MaxTopicsPerRegistration:
			return store.ErrTooManyTopics
		case subscribing:
			topics = slices.Insert(topics, i, topic)
			if tl.Added == nil {
				tl.Added = map[string]time.Time{}
			}
			tl.Added[topic] = now.UTC().Truncate(time.Second)
			sub.data = encode(subscriber{Token: token, Device: reg.Device, App: reg.App})
		default:
			topics = slices.Delete(topics, i, i+1)
			delete(tl.Added, topic)
			sub.purge = true
		}
		list := write{subject: s.shardSubject(shard, topicsKey(token)), data: encode(topicList{Topics: topics, Added: tl.Added}), expect: ptr(ttSeq)}
		if len(topics) == 0 {
			list.data, list.purge = nil, true
		}
		_, err = s.commit(ctx, s.shardStream(shard), []write{
			{subject: s.shardSubject(shard, tokKey(token)), data: encode(tokRecord{Registration: reg}), expect: ptr(tokSeq)},
			list, sub,
		})
		return err
	})
}

// Topics lists the topics token is subscribed to, in order.
func (s *Store) Topics(ctx context.Context, token string) ([]string, error) {
	reg, _, _, err := s.findRegistration(ctx, token)
	if err != nil || reg.Token == "" {
		return nil, err
	}
	topics, _, err := s.topics(ctx, s.ShardOf(reg.Device), token)
	return topics, err
}

// Subscriptions lists the subscriptions of token, in the order of their
// topics.
func (s *Store) Subscriptions(ctx context.Context, token string) ([]store.Subscription, error) {
	reg, _, _, err := s.findRegistration(ctx, token)
	if err != nil || reg.Token == "" {
		return nil, err
	}
	tl, _, err := s.topicList(ctx, s.ShardOf(reg.Device), token)
	out := make([]store.Subscription, 0, len(tl.Topics))
	for _, t := range tl.Topics {
		out = append(out, store.Subscription{Topic: t, Added: tl.Added[t]})
	}
	return out, err
}

// ChangeSubscriptions subscribes (or, with subscribing false, unsubscribes)
// the registrations of tokens to topic on behalf of sender: the app
// server's way to manage topics. A token replaced within its grace period
// stands for the registration that replaced it. Each token's change is its
// own.
func (s *Store) ChangeSubscriptions(ctx context.Context, sender, topic string, tokens []string, subscribing bool, now time.Time) ([]store.SubscriptionOutcome, error) {
	out := make([]store.SubscriptionOutcome, len(tokens))
	errs := make([]error, len(tokens))
	s.parallel(len(tokens), func(i int) {
		r, err := s.resolve(ctx, tokens[i], now)
		switch {
		case err != nil:
			errs[i] = err
		case r.Given.Token != "" && r.Given.Sender != sender:
			out[i] = store.SubscriptionWrongSender
		case r.Reg.Token == "":
			out[i] = store.SubscriptionNotFound
		default:
			err := s.changeTopic(ctx, s.ShardOf(r.Reg.Device), r.Reg.Token, topic, subscribing, now)
			switch {
			case errors.Is(err, store.ErrTooManyTopics):
				out[i] = store.SubscriptionTooManyTopics
			case errors.Is(err, store.ErrNotFound):
				out[i] = store.SubscriptionNotFound
			default:
				errs[i] = err
			}
		}
	})
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("change %d subscriptions to topic %q: %w", len(tokens), topic, err)
	}
	return out, nil
}

// parallel runs fn for 0..n-1, a few at a time.
func (s *Store) parallel(n int, fn func(i int)) {
	const width = 16
	if n <= 1 {
		for i := range n {
			fn(i)
		}
		return
	}
	sem := make(chan struct{}, width)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			fn(i)
		})
	}
	wg.Wait()
}

// A topic message's Seq is its time of acceptance in microseconds times
// 256 plus the shard of its sender, which holds its record: the order of
// acceptance within a few microseconds between server processes, and its
// place.
func topicSeq(at time.Time, shard int) uint64 { return uint64(at.UnixMicro())<<8 | uint64(shard) }

// PutTopicMessage stores tm for fan-out and assigns its Seq.
func (s *Store) PutTopicMessage(ctx context.Context, tm *store.TopicMessage) error {
	if !validToken(tm.Sender) {
		return fmt.Errorf("store topic message: sender %.40q: %w", tm.Sender, store.ErrNotFound)
	}
	shard := s.ShardOf(tm.Sender)
	err := s.retry(ctx, func(ctx context.Context) error {
		// The engine's clock would do as well; this one orders the
		// messages of one process.
		tm.Seq = topicSeq(time.Now(), shard)
		_, err := s.commit(ctx, s.shardStream(shard), []write{{subject: s.shardSubject(shard, topicMsgKey(tm.Seq)), data: encode(tm), expect: ptr(0), ttl: max(tm.Expiry.Sub(tm.Sent), 0) + bodyTTLMargin}})
		return err
	})
	if err != nil {
		return fmt.Errorf("store topic message: %w", err)
	}
	return nil
}

// TopicMessages returns up to limit topic messages not yet fanned out with
// Seq above after, in order.
func (s *Store) TopicMessages(ctx context.Context, after uint64, limit int) ([]store.TopicMessage, error) {
	var all []store.TopicMessage
	for shard := range s.shards {
		tms, err := s.TopicMessagesIn(ctx, shard, after, limit)
		if err != nil {
			return nil, err
		}
		all = append(all, tms...)
	}
	slices.SortFunc(all, func(a, b store.TopicMessage) int { return cmpUint(a.Seq, b.Seq) })
	return all[:min(len(all), limit)], nil
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// TopicMessagesIn is TopicMessages for the senders of one shard.
func (s *Store) TopicMessagesIn(ctx context.Context, shard int, after uint64, limit int) ([]store.TopicMessage, error) {
	var out []store.TopicMessage
	err := s.scan(ctx, s.shardStream(shard), s.shardSubject(shard, "tm.*"), func(m *jetstream.RawStreamMsg) error {
		seq, err := strconv.ParseUint(m.Subject[strings.LastIndexByte(m.Subject, '.')+1:], 10, 64)
		if err != nil || seq <= after {
			return nil
		}
		tm, err := decode[store.TopicMessage](m.Data, "topic message")
		if err != nil {
			// FanOut reports it, and the caller can delete it.
			tm = store.TopicMessage{}
		}
		tm.Seq = seq
		out = append(out, tm)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read topic messages: %w", err)
	}
	slices.SortFunc(out, func(a, b store.TopicMessage) int { return cmpUint(a.Seq, b.Seq) })
	return out[:min(len(out), limit)], nil
}

// DeleteTopicMessage drops topic message seq, fanned out or not.
func (s *Store) DeleteTopicMessage(ctx context.Context, seq uint64) error {
	shard := int(seq & 0xff)
	if shard >= s.shards {
		return nil
	}
	err := s.retry(ctx, func(ctx context.Context) error {
		_, err := s.commit(ctx, s.shardStream(shard), []write{{subject: s.shardSubject(shard, topicMsgKey(seq)), purge: true}})
		return err
	})
	if err != nil {
		return fmt.Errorf("delete topic message %d: %w", seq, err)
	}
	return nil
}

// fanOutPosition is where the fan-out of a topic message stands within
// TopicMessage.Topics[Next]: the subscriptions of shards before Shard are
// done, and those of Shard up to stream sequence After. It is kept in
// TopicMessage.After as "SHARD/AFTER".
type fanOutPosition struct {
	shard int
	after uint64
}

func parsePosition(s string) fanOutPosition {
	var p fanOutPosition
	if sh, af, ok := strings.Cut(s, "/"); ok {
		p.shard, _ = strconv.Atoi(sh)
		p.after, _ = strconv.ParseUint(af, 10, 64)
	}
	return p
}

func (p fanOutPosition) String() string { return fmt.Sprintf("%d/%d", p.shard, p.after) }

// FanOut copies topic message seq into the queues of the next subscribers,
// at most step.Limit of them, then saves the position: after a crash,
// fan-out resumes from the last saved position. The copies of a step that
// did not save its position are made again with the same IDs, which the
// devices' queues and agents recognise. The position is saved only if the
// record is still the one read, so that two processes never fan out one
// message at once.
func (s *Store) FanOut(ctx context.Context, seq uint64, step store.FanOutStep) (store.FanOutResult, error) {
	shard := int(seq & 0xff)
	if shard >= s.shards {
		return store.FanOutResult{Done: true}, nil
	}
	res, err := s.fanOut(ctx, shard, seq, step)
	if err != nil {
		return store.FanOutResult{}, fmt.Errorf("fan out topic message %d: %w", seq, err)
	}
	return res, nil
}

func (s *Store) fanOut(ctx context.Context, shard int, seq uint64, step store.FanOutStep) (store.FanOutResult, error) {
	stream, key := s.shardStream(shard), s.shardSubject(shard, topicMsgKey(seq))
	raw, recSeq, err := s.get(ctx, stream, key)
	if err != nil {
		return store.FanOutResult{}, err
	}
	done := func() (store.FanOutResult, error) {
		if recSeq != 0 {
			_, err := s.commit(ctx, stream, []write{{subject: key, purge: true, expect: ptr(recSeq)}})
			if err != nil && !errors.Is(err, errConflict) {
				return store.FanOutResult{}, err
			}
		}
		return store.FanOutResult{Done: true}, nil
	}
	if raw == nil {
		return done()
	}
	tm, err := decode[store.TopicMessage](raw, "topic message")
	if err != nil {
		return store.FanOutResult{}, err
	}
	tm.Seq = seq
	if !step.Now.Before(tm.Expiry) {
		return done()
	}
	var res store.FanOutResult
	copies := map[string][]store.Message{} // by device
	pos := parsePosition(tm.After)
	considered := 0
	for tm.Next < len(tm.Topics) && considered < step.Limit {
		topic := tm.Topics[tm.Next]
		for ; pos.shard < s.shards && considered < step.Limit; pos = (fanOutPosition{shard: pos.shard + 1}) {
			finished, err := s.fanOutShard(ctx, &tm, topic, &pos, step, &considered, &res, copies)
			if err != nil {
				return store.FanOutResult{}, err
			}
			if !finished {
				break
			}
		}
		if pos.shard >= s.shards {
			tm.Next, pos = tm.Next+1, fanOutPosition{}
		}
	}
	if err := s.enqueueCopies(ctx, copies, &res); err != nil {
		return store.FanOutResult{}, err
	}
	tm.Copies += res.Copies
	tm.After = pos.String()
	if tm.Next >= len(tm.Topics) {
		r, err := done()
		r.Copies, r.Live, r.Devices = res.Copies, res.Live, res.Devices
		return r, err
	}
	if _, err := s.commit(ctx, stream, []write{{subject: key, data: encode(tm), expect: ptr(recSeq), ttl: max(tm.Expiry.Sub(step.Now), 0) + bodyTTLMargin}}); err != nil {
		return store.FanOutResult{}, err
	}
	return res, nil
}

// fanOutShard takes the subscribers of topic in pos.shard after pos.after
// until the step's limit; finished means the shard has no more.
func (s *Store) fanOutShard(ctx context.Context, tm *store.TopicMessage, topic string, pos *fanOutPosition, step store.FanOutStep, considered *int, res *store.FanOutResult, copies map[string][]store.Message) (finished bool, err error) {
	stream := s.shardStream(pos.shard)
	finished = true
	err = s.scanFrom(ctx, stream, s.shardSubject(pos.shard, subsOf(tm.Sender, topic)), pos.after+1, func(m *jetstream.RawStreamMsg) (bool, error) {
		if *considered >= step.Limit {
			finished = false
			return false, nil
		}
		*considered++
		pos.after = m.Sequence
		sub, err := decode[subscriber](m.Data, "subscription")
		if err != nil || !strings.HasSuffix(m.Subject, "."+secretHash(sub.Token)) {
			return true, nil // one damaged subscription must not hold up the rest
		}
		token := sub.Token
		if tm.RestrictedPackage != "" && sub.App != tm.RestrictedPackage {
			return true, nil
		}
		if step.Match != nil {
			topics, _, err := s.topics(ctx, pos.shard, token)
			if err != nil {
				return false, err
			}
			if !tm.Matches(step.Match, func(t string) bool { _, ok := slices.BinarySearch(topics, t); return ok }) {
				return true, nil
			}
		}
		c := tm.CopyFor(copyID(tm, token), store.Registration{Token: token, Device: sub.Device, App: sub.App})
		if tm.Live {
			res.Live = append(res.Live, c)
			res.Copies++
			return true, nil
		}
		copies[c.Device] = append(copies[c.Device], c)
		return true, nil
	})
	return finished, err
}

// enqueueCopies queues the copies of a step, each device in one change,
// and counts those queued: a subscription whose registration went
// meanwhile makes none.
func (s *Store) enqueueCopies(ctx context.Context, copies map[string][]store.Message, res *store.FanOutResult) error {
	devices := sortedKeys(copies)
	errs := make([]error, len(devices))
	made := make([]int, len(devices))
	s.parallel(len(devices), func(i int) {
		dev := devices[i]
		_, errs[i] = s.updateDevice(ctx, dev, func(d *device, ch *change) ([]write, error) {
			made[i] = 0
			for _, c := range copies[dev] {
				if slices.ContainsFunc(d.Queue, func(e entry) bool { return e.ID == c.ID }) {
					continue // made by a step that did not save its position
				}
				// A node knows only its own sessions: the caps count
				// what flows to the others as waiting.
				if d.enqueue(&c, ch, nil) {
					made[i]++
				}
			}
			if made[i] == 0 {
				return nil, errUnchanged
			}
			return nil, nil
		})
	})
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for i, dev := range devices {
		if made[i] > 0 {
			res.Devices = append(res.Devices, dev)
			res.Copies += made[i]
		}
	}
	return nil
}

// copyID names the copy of tm for token in GCM's form, the same each time
// it is made.
func copyID(tm *store.TopicMessage, token string) string {
	h := sha256.Sum256([]byte(tm.ID + "\x00" + tm.Sender + "\x00" + token))
	return fmt.Sprintf("0:%d%%%s", tm.Sent.UnixMicro(), hex.EncodeToString(h[:8]))
}
