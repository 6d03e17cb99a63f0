// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"tether/ipc"
	"tether/store"
)

// inbox hands held messages to the apps' listeners: it keeps one
// subscription per listening app, with its window of messages delivered
// and not yet acknowledged, and commits downstream messages and app acks
// together (committer).
type inbox struct {
	store *store.Store
	log   *slog.Logger
	now   func() time.Time

	// commitMu makes reading held messages and handing them to a listener
	// one step, and storing new messages (handing some over as they
	// commit) another; an app's ack frees its window under it once
	// committed, so that a delivery that read the message before the ack
	// hands it over before the ack returns, never after.
	commitMu sync.Mutex
	// commits writes downstream messages and app acks, together.
	commits *committer

	mu      sync.Mutex
	subs    map[string]*subscription // by app
	stopped bool
	// done counts the subscriptions' goroutines (deliverLoop).
	done sync.WaitGroup
}

// newInbox returns the inbox of st, whose commits keep to q and seenIDs
// (store.Writes). What a listening app has and has not acked is not
// waiting for it: a window of messages to an app that keeps up never trips
// the quota.
func newInbox(st *store.Store, q store.Quota, seenIDs int, now func() time.Time, log *slog.Logger) *inbox {
	in := &inbox{store: st, log: log, now: now, subs: map[string]*subscription{}}
	q.Flowing = in.flowing
	in.commits = &committer{store: st, quota: q, seenIDs: seenIDs}
	return in
}

// listen makes l the app's listener and starts delivering what is held.
func (in *inbox) listen(app string, l ipc.Listener) (func(), error) {
	sub := &subscription{
		app:          app,
		l:            l,
		wakeup:       make(chan struct{}, 1),
		stop:         make(chan struct{}),
		inflight:     map[string]bool{},
		checkNotices: true,
	}
	in.mu.Lock()
	if in.stopped {
		in.mu.Unlock()
		return nil, fmt.Errorf("listen for app %q: agent stopped: %w", app, ipc.ErrOffline)
	}
	old := in.subs[app]
	in.subs[app] = sub
	in.done.Add(1)
	in.mu.Unlock()
	if old != nil {
		old.end(true)
	}
	go in.deliverLoop(sub)
	var once sync.Once
	cancel := func() {
		once.Do(func() {
			in.mu.Lock()
			if in.subs[app] == sub {
				delete(in.subs, app)
			}
			in.mu.Unlock()
			sub.end(false)
		})
	}
	return cancel, nil
}

// ack removes acknowledged messages from the store, in a transaction it
// may share with others, then frees their room in the app's window.
func (in *inbox) ack(app string, ids []string) error {
	req := newCommitReq(nil, app, ids)
	in.commits.submit(req)
	if res := <-req.done; res.err != nil {
		return res.err
	}
	// A delivery round that read these before the commit hands them over
	// before this returns.
	in.commitMu.Lock()
	in.forget(app, ids, false)
	in.commitMu.Unlock()
	return nil
}

// add stores downstream messages. Listening apps have what is new while
// it commits, with the acks of apps that come meanwhile; the caller acks
// the server only after the commit. A failed commit costs a duplicate,
// never a loss. No delivery round reads the inbox until the commit is
// done (commitMu): one that read it before would take itself for caught
// up.
func (in *inbox) add(recs []store.Message) commitResult {
	in.commitMu.Lock()
	defer in.commitMu.Unlock()
	fresh, err := in.store.Fresh(recs)
	req := newCommitReq(recs, "", nil)
	in.commits.submit(req)
	var early []store.Message
	if err != nil {
		in.log.Warn("messages wait for their commit", "err", err)
	} else {
		early = in.handEarly(recs, fresh)
	}
	res := <-req.done
	if res.err != nil {
		in.unhandEarly(early)
	}
	return res
}

// subscription is one app's listener. Its goroutine (deliverLoop) is the
// only caller of the listener, so the listener sees events in order and
// nothing after Replaced.
type subscription struct {
	app    string
	l      ipc.Listener
	wakeup chan struct{} // buffered: something to deliver
	stop   chan struct{} // closed by end

	mu       sync.Mutex
	ended    bool
	replaced bool
	// inflight holds the IDs delivered and not yet acknowledged: at most
	// Window of them.
	inflight map[string]bool
	// cursor is the inbox sequence number of the last message delivered.
	cursor uint64
	// caughtUp says the inbox holds nothing past cursor that is not in
	// flight: a message arriving now may go to the listener ahead of its
	// commit (early) without overtaking one stored before it.
	caughtUp bool
	// early holds messages handed over while their commit runs, in flight
	// already, for the loop to deliver.
	early   []store.Message
	results []ipc.SendResult
	// checkNotices asks the loop to look for what the store keeps for
	// the app to be told: new tokens, and counts of messages dropped.
	checkNotices bool
}

func (s *subscription) wake() {
	select {
	case s.wakeup <- struct{}{}:
	default:
	}
}

// end stops the subscription; a replaced listener is told so.
func (s *subscription) end(replaced bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ended {
		return
	}
	s.ended, s.replaced = true, replaced
	close(s.stop)
}

// deliverLoop delivers until the subscription ends. Each round runs to
// completion (a window at most), then the loop waits for a wake-up.
func (in *inbox) deliverLoop(s *subscription) {
	defer in.done.Done()
	for {
		in.deliver(s)
		select {
		case <-s.stop:
			s.mu.Lock()
			replaced := s.replaced
			s.mu.Unlock()
			if replaced {
				s.l.Replaced()
			}
			return
		case <-s.wakeup:
		}
	}
}

// deliver hands the listener its upstream results, its new tokens, the
// count of messages dropped unread, and held messages up to the window.
// The notices are kept in the store until the loop takes them, so that an
// app that is not listening when they happen hears of them when it
// listens again.
func (in *inbox) deliver(s *subscription) {
	s.mu.Lock()
	results, checkNotices := s.results, s.checkNotices
	s.results, s.checkNotices = nil, false
	s.mu.Unlock()
	for _, r := range results {
		s.l.SendResult(r)
	}
	if checkNotices {
		in.deliverNotices(s)
	}
	s.mu.Lock()
	early, caughtUp := s.early, s.caughtUp
	s.early = nil
	s.mu.Unlock()
	for _, m := range early {
		s.l.Deliver(deliverable(m))
	}
	// A listener that is caught up has nothing held to read: the inbox
	// is left alone while a commit of early messages holds it.
	for !caughtUp && in.deliverHeld(s) {
	}
}

// handEarly queues for their listeners, in flight, the messages of recs
// that fresh says will be stored, where the listener has room in its
// window and nothing stored ahead of them; add has submitted them to the
// committer already, so that an ack of theirs commits after them, and
// holds commitMu until they are committed. The others take their turn
// through the inbox once stored.
func (in *inbox) handEarly(recs []store.Message, fresh []bool) []store.Message {
	early := make([]store.Message, 0, len(recs))
	for i, m := range recs {
		s := in.subscription(m.App)
		if s == nil {
			continue
		}
		s.mu.Lock()
		ok := fresh[i] && s.caughtUp && len(s.inflight) < Window
		if ok {
			s.inflight[m.ID] = true
			s.early = append(s.early, m)
			early = append(early, m)
		} else if fresh[i] {
			s.caughtUp = false
		}
		s.mu.Unlock()
		s.wake()
	}
	return early
}

// unhandEarly takes back the early messages whose commit failed: those
// delivered already come again with the server's redelivery.
func (in *inbox) unhandEarly(early []store.Message) {
	for _, m := range early {
		s := in.subscription(m.App)
		if s == nil {
			continue
		}
		s.mu.Lock()
		delete(s.inflight, m.ID)
		s.early = slices.DeleteFunc(s.early, func(e store.Message) bool { return e.ID == m.ID })
		s.caughtUp = false
		s.mu.Unlock()
	}
}

// deliverNotices tells the listener of its app's new tokens, sender by
// sender, then how many messages were dropped before it had them.
func (in *inbox) deliverNotices(s *subscription) {
	tokens, err := in.store.TakeRefreshed(s.app)
	if err != nil {
		in.log.Error("read refreshed tokens", "app", s.app, "err", err)
	}
	for _, sender := range slices.Sorted(maps.Keys(tokens)) {
		s.l.TokenRefreshed(sender, tokens[sender])
	}
	switch n, err := in.store.TakeDropped(s.app); {
	case err != nil:
		in.log.Error("read count of dropped messages", "app", s.app, "err", err)
	case n > 0:
		s.l.DeletedMessages(n)
	}
}

// deliverHeld hands the listener the held messages its window has room
// for; false when there was nothing (more) to deliver.
func (in *inbox) deliverHeld(s *subscription) bool {
	in.commitMu.Lock()
	defer in.commitMu.Unlock()
	s.mu.Lock()
	room, after, early := Window-len(s.inflight), s.cursor, len(s.early) > 0
	s.mu.Unlock()
	if early {
		// Handed over meanwhile: they go first, in the next round.
		s.wake()
		return false
	}
	if room <= 0 {
		return false
	}
	msgs, err := in.store.Inbox(s.app, after, room, in.now())
	if err != nil {
		in.log.Error("read inbox", "app", s.app, "err", err)
		return false
	}
	for _, m := range msgs {
		// In flight before the listener has it: an ack can come at once.
		s.mu.Lock()
		early := s.inflight[m.ID] // handed over before its commit
		s.inflight[m.ID] = true
		s.cursor = m.Seq
		s.mu.Unlock()
		if !early {
			s.l.Deliver(deliverable(m))
		}
	}
	s.mu.Lock()
	s.caughtUp = len(msgs) < room
	s.mu.Unlock()
	return len(msgs) > 0
}

func deliverable(m store.Message) ipc.Message {
	msg := ipc.Message{
		ID: m.ID, App: m.App, From: m.From, CollapseKey: m.CollapseKey,
		Data: m.Data, Priority: m.Priority, TTL: m.TTL,
		Notification: m.Notification, Topic: m.Topic, Raw: m.Raw,
	}
	if m.SentTime > 0 {
		msg.SentTime = time.UnixMilli(m.SentTime)
	}
	return msg
}

// flowing lists the messages app's listener has, or is being handed, and
// has not acked (store.Quota.Flowing).
func (in *inbox) flowing(app string) []string {
	s := in.subscription(app)
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Keys(s.inflight))
}

// subscription is app's listener, or nil.
func (in *inbox) subscription(app string) *subscription {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.subs[app]
}

// wake tells app's listener, if any, that there is something to deliver.
func (in *inbox) wake(app string) {
	s := in.subscription(app)
	if s != nil {
		s.wake()
	}
}

// forget frees the window room of messages that are no longer held
// (acknowledged, expired or dropped), and wakes the app's listener; with
// notices, the store has something for the app to be told (messages
// dropped unread, a new token).
func (in *inbox) forget(app string, ids []string, notices bool) {
	s := in.subscription(app)
	if s == nil {
		return
	}
	s.mu.Lock()
	for _, id := range ids {
		delete(s.inflight, id)
	}
	if notices {
		s.checkNotices = true
	}
	s.mu.Unlock()
	s.wake()
}

// result queues the outcome of an upstream message for its app's
// listener, if any.
func (in *inbox) result(r ipc.SendResult) {
	s := in.subscription(r.App)
	if s == nil {
		return
	}
	s.mu.Lock()
	s.results = append(s.results, r)
	s.mu.Unlock()
	s.wake()
}

// stop ends every subscription for good, waits for their goroutines and
// then for the commits under way.
func (in *inbox) stop() {
	in.mu.Lock()
	in.stopped = true
	subs := in.subs
	in.subs = map[string]*subscription{}
	in.mu.Unlock()
	for _, s := range subs {
		s.end(false)
	}
	in.done.Wait()
	in.commits.stop()
}
