// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"errors"
	"time"

	"tether/server/store"
)

const (
	// liveFanOutWindow is how long a time-to-live-0 topic message keeps
	// being fanned out to the devices connected meanwhile.
	liveFanOutWindow = time.Minute
	// fanOutRetry is the wait after the store failed during fan-out.
	fanOutRetry = 10 * time.Second
	// topicReadAhead bounds the topic messages read from the store at once.
	topicReadAhead = 16
)

// fanout copies stored topic messages into the queues of their
// subscribers, one message at a time in the order they were accepted and
// Config.FanOutBatch subscribers per transaction, so that neither the HTTP
// answer nor memory depends on the number of subscribers. The position is
// stored with each batch: after a restart, fan-out resumes where it was.
type fanout struct {
	srv  *Server
	wake chan struct{}
	// done, when set (by tests), is called after a message is fanned out.
	done func(tm store.TopicMessage, copies int)
}

func newFanout(s *Server) *fanout {
	return &fanout{srv: s, wake: make(chan struct{}, 1), done: s.cfg.fanOutDone}
}

// wakeUp tells the loop that a topic message is waiting. It never blocks.
func (f *fanout) wakeUp() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

func (f *fanout) run(ctx context.Context) {
	retry := time.NewTimer(0)
	defer retry.Stop()
	for {
		ok := f.drain(ctx)
		var again <-chan time.Time
		if !ok {
			retry.Reset(fanOutRetry)
			again = retry.C
		}
		select {
		case <-ctx.Done():
			return
		case <-f.wake:
		case <-again:
		}
	}
}

// drain fans out every stored topic message; false means the store failed
// and the rest waits for a retry.
func (f *fanout) drain(ctx context.Context) bool {
	s := f.srv
	for ctx.Err() == nil {
		tms, err := f.waiting(ctx)
		if err != nil {
			s.log.Error("read topic messages", "err", err)
			return false
		}
		if len(tms) == 0 {
			return true
		}
		for _, tm := range tms {
			if !f.fanOut(ctx, tm) {
				return ctx.Err() != nil
			}
		}
	}
	return true
}

// waiting reads the first topic messages waiting for fan-out; on a
// cluster, those of the partitions this node holds.
func (f *fanout) waiting(ctx context.Context) ([]store.TopicMessage, error) {
	s := f.srv
	if s.node == nil {
		return s.store.TopicMessages(ctx, 0, topicReadAhead)
	}
	var all []store.TopicMessage
	for _, p := range s.node.leases.Held() {
		tms, err := s.node.st.TopicMessagesIn(ctx, p, 0, topicReadAhead)
		if err != nil {
			return nil, err
		}
		all = append(all, tms...)
	}
	return all, nil
}

// fanOut runs the steps of one topic message until it is done; false means
// it stopped early (the context ended or the store failed).
func (f *fanout) fanOut(ctx context.Context, tm store.TopicMessage) bool {
	s := f.srv
	log := s.log.With("sender", tm.Sender, "message_id", tm.ID)
	step := store.FanOutStep{Limit: s.cfg.FanOutBatch, Live: s.hub}
	if tm.Condition != "" {
		c, err := parseCondition(tm.Condition)
		if err != nil {
			// Conditions are parsed before they are stored, so this is a
			// damaged record: dropping it is all that can be done.
			log.Error("stored topic condition does not parse; dropping the message", "err", err)
			step.Match = func(func(string) bool) bool { return false }
		} else {
			step.Match = c.eval
		}
	}
	start := time.Now()
	copies := tm.Copies
	for ctx.Err() == nil {
		now := s.now()
		step.Now = now
		step.NewID = func() string { return newMessageID(now) }
		res, err := s.store.FanOut(ctx, tm.Seq, step)
		if errors.Is(err, store.ErrCorrupt) {
			// Retrying cannot help, and would hold up every later message.
			log.Error("topic message cannot be fanned out; dropping it", "copies", copies, "err", err)
			if err := s.store.DeleteTopicMessage(ctx, tm.Seq); err != nil {
				log.Error("drop topic message", "err", err)
				return false
			}
			return true
		}
		if err != nil {
			log.Error("fan out topic message; will retry", "err", err)
			return false
		}
		copies += res.Copies
		for _, d := range res.Devices {
			s.hub.notify(d)
		}
		for _, m := range res.Live {
			s.hub.deliverNow(m)
		}
		if res.Done {
			log.Info("topic message fanned out", "copies", copies, "took", time.Since(start).Round(time.Millisecond))
			if f.done != nil {
				f.done(tm, copies)
			}
			return true
		}
	}
	return false
}
