package agent

import (
	"maps"
	"slices"
	"sync"
	"time"

	"tether/ipc"
	"tether/store"
)

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
func (a *Agent) deliverLoop(s *subscription) {
	defer a.subsDone.Done()
	for {
		a.deliver(s)
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
func (a *Agent) deliver(s *subscription) {
	s.mu.Lock()
	results, checkNotices := s.results, s.checkNotices
	s.results, s.checkNotices = nil, false
	s.mu.Unlock()
	for _, r := range results {
		s.l.SendResult(r)
	}
	if checkNotices {
		a.deliverNotices(s)
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
	for !caughtUp && a.deliverHeld(s) {
	}
}

// handEarly queues for their listeners, in flight, the messages of recs
// that fresh says will be stored, where the listener has room in its
// window and nothing stored ahead of them; the caller has submitted them
// to the committer already, so that an ack of theirs commits after them,
// and holds inboxMu until they are committed. The others take their turn
// through the inbox once stored.
func (a *Agent) handEarly(recs []store.Message, fresh []bool) []store.Message {
	var early []store.Message
	for i, m := range recs {
		s := a.subscription(m.App)
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
func (a *Agent) unhandEarly(early []store.Message) {
	for _, m := range early {
		s := a.subscription(m.App)
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
func (a *Agent) deliverNotices(s *subscription) {
	tokens, err := a.store.TakeRefreshed(s.app)
	if err != nil {
		a.log.Error("read refreshed tokens", "app", s.app, "err", err)
	}
	for _, sender := range slices.Sorted(maps.Keys(tokens)) {
		s.l.TokenRefreshed(sender, tokens[sender])
	}
	switch n, err := a.store.TakeDropped(s.app); {
	case err != nil:
		a.log.Error("read count of dropped messages", "app", s.app, "err", err)
	case n > 0:
		s.l.DeletedMessages(n)
	}
}

// deliverHeld hands the listener the held messages its window has room
// for; false when there was nothing (more) to deliver.
func (a *Agent) deliverHeld(s *subscription) bool {
	a.inboxMu.Lock()
	defer a.inboxMu.Unlock()
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
	msgs, err := a.store.Inbox(s.app, after, room, a.now())
	if err != nil {
		a.log.Error("read inbox", "app", s.app, "err", err)
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
		Notification: m.Notification, Topic: m.Topic,
	}
	if m.SentTime > 0 {
		msg.SentTime = time.UnixMilli(m.SentTime)
	}
	return msg
}

// flowing lists the messages app's listener has, or is being handed, and
// has not acked (store.Quota.Flowing).
func (a *Agent) flowing(app string) []string {
	s := a.subscription(app)
	if s == nil {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Collect(maps.Keys(s.inflight))
}

// subscription is app's listener, or nil.
func (a *Agent) subscription(app string) *subscription {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.subs[app]
}

// wake tells app's listener, if any, that there is something to deliver.
func (a *Agent) wake(app string) {
	s := a.subscription(app)
	if s != nil {
		s.wake()
	}
}

// forget frees the window room of messages that are no longer held
// (acknowledged, expired or dropped), and wakes the app's listener; with
// notices, the store has something for the app to be told (messages
// dropped unread, a new token).
func (a *Agent) forget(app string, ids []string, notices bool) {
	s := a.subscription(app)
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

// report gives the outcome of an upstream message to the channel Send
// returned (if this process made it) and to the app's listener.
func (a *Agent) report(r ipc.SendResult) {
	key := outboxKey{r.App, r.ID}
	a.mu.Lock()
	ch := a.results[key]
	delete(a.results, key)
	s := a.subs[r.App]
	a.mu.Unlock()
	if ch != nil {
		ch <- r // buffered, written once
	}
	if s != nil {
		s.mu.Lock()
		s.results = append(s.results, r)
		s.mu.Unlock()
		s.wake()
	}
}

// stopListeners ends every subscription for good and waits for their
// goroutines.
func (a *Agent) stopListeners() {
	a.mu.Lock()
	a.stopped = true
	subs := a.subs
	a.subs = map[string]*subscription{}
	a.mu.Unlock()
	for _, s := range subs {
		s.end(false)
	}
	a.subsDone.Wait()
	a.commits.stop()
}
