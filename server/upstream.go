// SPDX-License-Identifier: Apache-2.0

package server

import (
	"bytes"
	"container/heap"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mathrand "math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"tether/server/store"
)

// route hands upstream messages to an app server: the sender's XMPP
// connections while it has any, or else its webhook. For each delivery
// attempt, routeFor picks exactly one route, so a message is taken by one
// route, not several.
type route interface {
	deliver(ctx context.Context, u store.Upstream) error
	name() string
	// parallel bounds the sender's deliveries in progress on this route.
	parallel() int
}

// upstreamWorkers bounds concurrent deliveries.
const upstreamWorkers = 64

// laneWindow bounds the messages of one lane that the dispatcher holds:
// the rest wait in the store, and the lane reads the next as these are
// settled. It lets a message that fails again and again be passed by the
// ones behind it, and keeps memory to the lanes, not the messages.
const laneWindow = 8

// The dispatcher's queue is made of lanes, one per sender and device: the
// messages and receipts of one device for one sender, in the order they
// were queued. A sender's lanes take turns, one attempt each, so that a
// device with thousands of messages waiting delays another device's next
// message by one attempt and the attempts in progress, not by its whole
// backlog. Senders take turns for the workers the same way.

// upEntry schedules one queued upstream message; the message itself stays
// in the store until an attempt loads it.
type upEntry struct {
	seq      uint64
	lane     *lane
	app, id  string    // for logs
	expiry   time.Time // by the server's clock
	next     time.Time // when to try next, by the real clock that timers use
	attempts int
	// tried is set once the message had its chance: after an attempt, a
	// wait without a route, or a restart. A TTL-0 message gets one attempt
	// and is dropped after it.
	tried bool
	state entryState
}

type entryState int

const (
	entryDue      entryState = iota // waits for its lane's turn
	entryWaiting                    // waits in the heap until next
	entryInFlight                   // an attempt is in progress
	entryDead                       // settled, or its lane given up: the heap drops it when it comes up
)

type upHeap []*upEntry

func (h upHeap) Len() int           { return len(h) }
func (h upHeap) Less(i, j int) bool { return h[i].next.Before(h[j].next) }
func (h upHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *upHeap) Push(x any)        { *h = append(*h, x.(*upEntry)) }
func (h *upHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// lane is a device's upstream messages for one sender.
type lane struct {
	sender    *senderLanes
	device    string
	partition int
	// held are the messages read from the store and not yet settled, in
	// Seq order: at most laneWindow, the first of the lane.
	held []*upEntry
	// cursor is the Seq of the last message read from the store; more
	// says the store may have messages after it. A message queued after
	// a read has a greater Seq than every one the read returned.
	cursor uint64
	more   bool
	// loaded is the greatest Seq a load announced: those messages had
	// their chance before (a restart, another node).
	loaded uint64
	// inTurn: in its sender's turns. reading: in the dispatcher's list of
	// lanes to read. stalled: its last read failed, and it waits for the
	// next try. gone: it is no longer in its sender's lanes.
	inTurn, reading, stalled, gone bool
}

// due returns the lane's first message due for an attempt, or nil.
func (l *lane) due() *upEntry {
	for _, e := range l.held {
		if e.state == entryDue {
			return e
		}
	}
	return nil
}

// senderLanes is a sender's lanes.
type senderLanes struct {
	id    string
	lanes map[string]*lane // by device
	// turns holds the lanes with a message due, in the order they take
	// their turns; lanes that lost theirs are skipped when they come up.
	turns      []*lane
	attempting int
	// blocked is set while the sender has as many attempts in progress
	// as its route takes; the end of one clears it.
	blocked bool
	inTurn  bool // in the dispatcher's turns of senders
}

// nextLane returns the lane whose turn it is, or nil when none has a
// message due; it stays first until its turn is taken.
func (sl *senderLanes) nextLane() *lane {
	for len(sl.turns) > 0 {
		l := sl.turns[0]
		if !l.gone && l.due() != nil {
			return l
		}
		l.inTurn = false
		sl.turns = sl.turns[1:]
	}
	return nil
}

type job struct {
	e *upEntry
	r route
}

type attemptResult struct {
	e     *upEntry
	route string
	err   error
	gone  bool // the message was no longer in the store
	// deleteErr is why a delivered message could not be deleted.
	deleteErr error
}

// laneKey names a lane.
type laneKey struct{ sender, device string }

// announcement is what the dispatcher hears of a lane until it looks: the
// greatest Seq queued, and the greatest a load found.
type announcement struct{ seq, loaded uint64 }

// dispatcher delivers the upstream queue: one goroutine schedules entries
// on a single timer and a few workers make the attempts.
type dispatcher struct {
	store    store.Backend
	log      *slog.Logger
	now      func() time.Time
	routeFor func(ctx context.Context, sender string) (route, error)
	retryMin time.Duration
	retryMax time.Duration
	metrics  *metrics

	// cluster, on a cluster, holds the partitions whose messages this
	// node delivers; nil on a single machine, which delivers them all.
	cluster *node

	mu sync.Mutex
	// incoming holds the lanes that messages were queued in, as few
	// entries as lanes however many messages.
	incoming map[laneKey]announcement
	// appeared holds senders that gained a route: their waiting
	// messages are due at once.
	appeared map[string]bool
	// dropped holds partitions this node no longer delivers, each with a
	// channel to close once none of its attempts is in progress.
	dropped []dropRequest
	// stopped is set once run has returned: nothing is in progress.
	stopped bool
	wake    chan struct{}

	// What follows belongs to run's goroutine.
	senders map[string]*senderLanes
	// turns holds the senders with a lane in turn and room for an
	// attempt; senders that lost theirs are skipped when they come up.
	turns   []*senderLanes
	waiting upHeap
	// inflight holds the messages being attempted, by Seq, so that a lane
	// made anew (its partition taken again) takes over the one in
	// progress rather than attempting it twice.
	inflight map[uint64]*upEntry
	toRead   []*lane
	// stalled lanes failed to read; they try again at stallAt, after a
	// wait that doubles while reads fail.
	stalled   []*lane
	stallAt   time.Time
	stallWait time.Duration
}

func newDispatcher(s *Server) *dispatcher {
	client := &http.Client{
		Timeout: s.cfg.WebhookTimeout,
		// A redirect is an answer other than 2xx: retried, never followed
		// (following would turn the POST into a GET).
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	return &dispatcher{
		store:    s.store,
		log:      s.log,
		now:      s.now,
		retryMin: s.cfg.RetryMin,
		retryMax: s.cfg.RetryMax,
		metrics:  s.metrics,
		wake:     make(chan struct{}, 1),
		senders:  make(map[string]*senderLanes),
		inflight: make(map[uint64]*upEntry),
		routeFor: func(ctx context.Context, sender string) (route, error) {
			snd, err := s.store.Sender(ctx, sender)
			if err != nil {
				return nil, err
			}
			switch {
			case s.ccs != nil && s.ccs.connected(sender):
				return ccsRoute{s.ccs}, nil
			case s.node != nil:
				has, err := s.node.senders.Has(ctx, sender)
				if err != nil {
					return nil, err
				}
				if has {
					return peerRoute{s.node}, nil
				}
			}
			if snd.Webhook == "" {
				return nil, nil
			}
			return webhook{client: client, url: snd.Webhook, secrets: snd.WebhookSecrets(s.now()), now: s.now}, nil
		},
	}
}

// routeAppeared makes sender's waiting messages due at once: it has a new
// route, or a new connection on its route.
func (d *dispatcher) routeAppeared(sender string) {
	d.mu.Lock()
	if d.appeared == nil {
		d.appeared = make(map[string]bool)
	}
	d.appeared[sender] = true
	d.mu.Unlock()
	d.poke()
}

// poke wakes the run loop to look at incoming and appeared; it never
// blocks.
func (d *dispatcher) poke() {
	select {
	case d.wake <- struct{}{}:
	default:
	}
}

// add schedules a newly queued message, on a cluster with the node that
// delivers its partition. It never blocks.
func (d *dispatcher) add(u store.Upstream) {
	if d.cluster != nil {
		d.cluster.upstreamQueued(u)
		return
	}
	d.schedule(u, false)
}

// schedule takes a message to deliver; tried says it had its chance
// before (a restart, another node). It never blocks.
func (d *dispatcher) schedule(u store.Upstream, tried bool) {
	d.mu.Lock()
	if d.incoming == nil {
		d.incoming = make(map[laneKey]announcement)
	}
	k := laneKey{u.Sender, u.Device}
	a := d.incoming[k]
	a.seq = max(a.seq, u.Seq)
	if tried {
		a.loaded = max(a.loaded, u.Seq)
	}
	d.incoming[k] = a
	d.mu.Unlock()
	d.poke()
}

type dropRequest struct {
	partition int
	done      chan struct{}
}

// dropPartition stops delivering the messages of partition p, which
// another node delivers from now on. It never blocks; the channel it
// returns closes once no attempt of p is in progress, so that the next
// node does not post what this one is posting.
func (d *dispatcher) dropPartition(p int) <-chan struct{} {
	done := make(chan struct{})
	d.mu.Lock()
	if d.stopped {
		close(done)
	} else {
		d.dropped = append(d.dropped, dropRequest{p, done})
	}
	d.mu.Unlock()
	d.poke()
	return done
}

// closedChan is always ready.
var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// partition is the partition of message seq, on a cluster.
func partition(seq uint64) int { return int(seq & 0xff) }

// mine reports whether this node delivers the messages of partition p.
func (d *dispatcher) mine(p int) bool { return d.cluster == nil || d.cluster.leases.Holds(p) }

func (d *dispatcher) run(ctx context.Context) {
	if d.cluster == nil {
		// On a cluster the partitions' loads come as they are taken.
		err := d.store.EachUpstream(ctx, func(u store.Upstream) error {
			d.announce(laneKey{u.Sender, u.Device}, announcement{seq: u.Seq, loaded: u.Seq})
			return nil
		})
		if err != nil {
			d.log.Error("load upstream queue; messages wait for the next restart", "err", err)
		}
	}

	jobs := make(chan job)
	results := make(chan attemptResult, upstreamWorkers)
	var workers sync.WaitGroup
	for range upstreamWorkers {
		workers.Go(func() {
			for j := range jobs {
				results <- d.attempt(ctx, j)
			}
		})
	}
	// Partitions dropped while attempts of theirs were in progress, with
	// whoever waits for the attempts to end.
	draining := make(map[int][]chan struct{})
	defer func() {
		d.mu.Lock()
		d.stopped = true
		for _, req := range d.dropped {
			close(req.done)
		}
		d.dropped = nil
		d.mu.Unlock()
		for _, waiting := range draining {
			for _, done := range waiting {
				close(done)
			}
		}
	}()
	defer workers.Wait()
	defer close(jobs)

	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	busy := 0
	inflight := make(map[int]int) // attempts in progress by partition
	for {
		// What was queued before an attempt ended takes its turn before
		// the next attempt: the turns are the order of delivery.
		for _, req := range d.takeIncoming() {
			if inflight[req.partition] == 0 {
				close(req.done)
			} else {
				draining[req.partition] = append(draining[req.partition], req.done)
			}
		}
		now := time.Now()
		d.wakeDue(now)
		d.readLanes(ctx, now)
		for busy < upstreamWorkers {
			j, ok := d.nextAttempt(ctx)
			if !ok {
				break
			}
			busy++
			inflight[partition(j.e.seq)]++
			jobs <- j
		}
		if next, ok := d.nextWake(); ok {
			timer.Reset(max(next.Sub(now), 0))
		} else {
			timer.Stop()
		}
		// Lanes left to read go on at once, after a look at what came in.
		var more <-chan struct{}
		if len(d.toRead) > 0 {
			more = closedChan
		}
		select {
		case <-ctx.Done():
			return
		case <-more:
		case <-d.wake:
		case r := <-results:
			busy--
			if p := partition(r.e.seq); inflight[p] > 1 {
				inflight[p]--
			} else {
				delete(inflight, p)
				for _, done := range draining[p] {
					close(done)
				}
				delete(draining, p)
			}
			d.ended(ctx, r)
		case <-timer.C:
		}
	}
}

// takeIncoming takes in what the other goroutines handed over: the
// partitions given up (whose requests it returns), then the lanes
// messages were queued in, then the senders whose route appeared.
func (d *dispatcher) takeIncoming() []dropRequest {
	d.mu.Lock()
	incoming, appeared, dropped := d.incoming, d.appeared, d.dropped
	d.incoming, d.appeared, d.dropped = nil, nil, nil
	d.mu.Unlock()
	if len(dropped) > 0 {
		d.forget()
	}
	for k, a := range incoming {
		d.announce(k, a)
	}
	if len(appeared) > 0 {
		now := time.Now()
		for sender := range appeared {
			sl := d.senders[sender]
			if sl == nil {
				continue
			}
			sl.blocked = false
			for _, l := range sl.lanes {
				for _, e := range l.held {
					if e.state == entryWaiting {
						e.next = now
					}
				}
			}
			d.offer(sl)
		}
		heap.Init(&d.waiting)
	}
	return dropped
}

// announce takes in that messages up to a.seq were queued in lane k.
func (d *dispatcher) announce(k laneKey, a announcement) {
	if !d.mine(partition(a.seq)) {
		return
	}
	sl := d.senders[k.sender]
	if sl == nil {
		sl = &senderLanes{id: k.sender, lanes: make(map[string]*lane)}
		d.senders[k.sender] = sl
	}
	l := sl.lanes[k.device]
	if l == nil {
		l = &lane{sender: sl, device: k.device, partition: partition(a.seq)}
		sl.lanes[k.device] = l
	}
	l.loaded = max(l.loaded, a.loaded)
	if a.seq > l.cursor {
		l.more = true
		d.wantRead(l)
	}
}

// wantRead lists l to be read when it has room and the store may have
// more of it.
func (d *dispatcher) wantRead(l *lane) {
	if l.gone || l.reading || l.stalled || !l.more || len(l.held) >= laneWindow {
		return
	}
	l.reading = true
	d.toRead = append(d.toRead, l)
}

// readsPerTurn bounds the lanes read between two looks at the attempts'
// results, so that taking a partition of many lanes does not stop the
// deliveries in progress.
const readsPerTurn = 16

// readLanes fills lanes listed to read from the store, each up to its
// window.
func (d *dispatcher) readLanes(ctx context.Context, now time.Time) {
	if len(d.stalled) > 0 && !now.Before(d.stallAt) {
		stalled := d.stalled
		d.stalled = nil
		for _, l := range stalled {
			l.stalled = false
			d.wantRead(l)
		}
	}
	n := min(len(d.toRead), readsPerTurn)
	for _, l := range d.toRead[:n] {
		l.reading = false
		if l.gone {
			continue
		}
		room := laneWindow - len(l.held)
		got, err := d.store.NextUpstream(ctx, l.device, l.sender.id, l.cursor, room)
		if err != nil {
			if len(d.stalled) == 0 {
				d.stallWait = min(max(2*d.stallWait, d.retryMin), d.retryMax)
				d.stallAt = now.Add(d.stallWait)
			}
			d.log.Error("read upstream lane; will try again", "sender", l.sender.id, "device", l.device, "retry_in", d.stallWait, "err", err)
			l.stalled = true
			d.stalled = append(d.stalled, l)
			continue
		}
		d.stallWait = 0
		for _, u := range got {
			e := d.inflight[u.Seq]
			if e == nil {
				e = &upEntry{seq: u.Seq, app: u.App, id: u.ID, expiry: u.Expiry, tried: u.Seq <= l.loaded}
			}
			e.lane = l
			l.held = append(l.held, e)
			l.cursor = u.Seq
		}
		l.more = len(got) == room
		d.inTurn(l)
		d.release(l)
	}
	d.toRead = d.toRead[n:]
}

// inTurn puts l in its sender's turns when it has a message due.
func (d *dispatcher) inTurn(l *lane) {
	if l.inTurn || l.gone || l.due() == nil {
		return
	}
	l.inTurn = true
	l.sender.turns = append(l.sender.turns, l)
	d.offer(l.sender)
}

// offer puts sl in the turns of senders when it has a lane in turn and
// room for an attempt.
func (d *dispatcher) offer(sl *senderLanes) {
	if sl.inTurn || sl.blocked || len(sl.turns) == 0 {
		return
	}
	sl.inTurn = true
	d.turns = append(d.turns, sl)
}

// release lets go of a lane with nothing held and nothing more to read,
// and of its sender when that was its last.
func (d *dispatcher) release(l *lane) {
	if len(l.held) > 0 || l.more || l.reading || l.stalled || l.gone {
		return
	}
	l.gone = true
	sl := l.sender
	delete(sl.lanes, l.device)
	d.releaseSender(sl)
}

func (d *dispatcher) releaseSender(sl *senderLanes) {
	if len(sl.lanes) == 0 && sl.attempting == 0 && d.senders[sl.id] == sl {
		delete(d.senders, sl.id)
	}
}

// wakeDue makes the waiting entries whose time has come due.
func (d *dispatcher) wakeDue(now time.Time) {
	for len(d.waiting) > 0 && !d.waiting[0].next.After(now) {
		e := heap.Pop(&d.waiting).(*upEntry)
		if e.state != entryWaiting {
			continue
		}
		e.state = entryDue
		d.inTurn(e.lane)
	}
}

// nextWake is when the timer must wake the loop next.
func (d *dispatcher) nextWake() (time.Time, bool) {
	var next time.Time
	if len(d.waiting) > 0 {
		next = d.waiting[0].next
	}
	if len(d.stalled) > 0 && (next.IsZero() || d.stallAt.Before(next)) {
		next = d.stallAt
	}
	return next, !next.IsZero()
}

// nextAttempt takes the turn of the next sender, and of its next lane, and
// returns the attempt of that lane's first due message; false when no
// sender has a message due and room for an attempt. A message dropped or
// sent to wait takes the turn too.
func (d *dispatcher) nextAttempt(ctx context.Context) (job, bool) {
	for len(d.turns) > 0 {
		sl := d.turns[0]
		d.turns = d.turns[1:]
		sl.inTurn = false
		l := sl.nextLane()
		if sl.blocked || l == nil {
			continue
		}
		e := l.due()
		r := d.dispatch(ctx, e)
		if r != nil && sl.attempting >= r.parallel() {
			// The lane keeps its turn for when an attempt of the sender
			// ends.
			sl.blocked = true
			continue
		}
		sl.turns = sl.turns[1:]
		l.inTurn = false
		switch {
		case r != nil:
			e.state = entryInFlight
			d.inflight[e.seq] = e
			sl.attempting++
		case e.next.IsZero():
			d.settled(e)
		default:
			d.wait(e)
		}
		d.inTurn(l)
		d.offer(sl)
		if r != nil {
			return job{e, r}, true
		}
	}
	return job{}, false
}

// wait puts e in the heap until e.next.
func (d *dispatcher) wait(e *upEntry) {
	e.state = entryWaiting
	heap.Push(&d.waiting, e)
}

// settled takes e, delivered or dropped, out of its lane, which reads the
// next message in its place.
func (d *dispatcher) settled(e *upEntry) {
	l := e.lane
	l.held = slices.DeleteFunc(l.held, func(x *upEntry) bool { return x == e })
	e.state = entryDead
	d.wantRead(l)
	d.release(l)
}

// ended takes the result of an attempt.
func (d *dispatcher) ended(ctx context.Context, r attemptResult) {
	e := r.e
	delete(d.inflight, e.seq)
	sl := e.lane.sender
	sl.attempting--
	sl.blocked = false
	d.offer(sl)
	if e.lane.gone {
		// Its partition went to another node meanwhile.
		d.releaseSender(sl)
		return
	}
	if d.settle(ctx, r) {
		d.wait(e)
	} else {
		d.settled(e)
	}
}

// forget gives up the lanes of partitions no longer this node's; the
// attempts in progress end on their own.
func (d *dispatcher) forget() {
	for _, sl := range d.senders {
		for device, l := range sl.lanes {
			if d.mine(l.partition) {
				continue
			}
			l.gone = true
			delete(sl.lanes, device)
			for _, e := range l.held {
				if e.state != entryInFlight {
					e.state = entryDead
				}
			}
		}
		d.releaseSender(sl)
	}
}

// dispatch picks the route for a due entry. Without one, a zero e.next
// means the entry was dropped and any other that it waits until then.
func (d *dispatcher) dispatch(ctx context.Context, e *upEntry) route {
	now := d.now()
	sender := e.lane.sender.id
	if e.tried && !now.Before(e.expiry) {
		d.drop(ctx, e, "time to live ran out")
		e.next = time.Time{}
		return nil
	}
	r, err := d.routeFor(ctx, sender)
	switch {
	case errors.Is(err, store.ErrNotFound):
		d.drop(ctx, e, "sender removed")
		e.next = time.Time{}
	case err != nil:
		d.log.Error("find upstream route", "sender", sender, "err", err)
		e.next = time.Now().Add(d.retryMax)
	case r == nil:
		// No route yet: keep it until its TTL, looking again now and then.
		e.tried = true
		e.next = time.Now().Add(min(d.retryMax, e.expiry.Sub(now)))
	}
	return r
}

// attempt delivers one message through its route and, once delivered,
// deletes it; it runs in a worker, so that the deletions of concurrent
// deliveries share commits.
func (d *dispatcher) attempt(ctx context.Context, j job) attemptResult {
	u, err := d.store.Upstream(ctx, j.e.seq)
	if errors.Is(err, store.ErrNotFound) {
		return attemptResult{e: j.e, gone: true}
	}
	if err != nil {
		return attemptResult{e: j.e, err: err}
	}
	r := attemptResult{e: j.e, route: j.r.name(), err: j.r.deliver(ctx, u)}
	if r.err == nil {
		r.deleteErr = d.store.DeleteUpstream(ctx, j.e.seq)
	}
	return r
}

// settle records an attempt; true means try again later.
func (d *dispatcher) settle(ctx context.Context, r attemptResult) bool {
	e := r.e
	sender := e.lane.sender.id
	if r.gone {
		return false
	}
	if r.err == nil {
		if r.deleteErr != nil {
			d.log.Error("delete delivered upstream message; it will be delivered again after a restart", "sender", sender, "message_id", e.id, "err", r.deleteErr)
		}
		d.log.Info("upstream message delivered", "sender", sender, "app", e.app, "message_id", e.id, "route", r.route, "attempts", e.attempts+1)
		d.metrics.upstreamDone.WithLabelValues(r.route).Inc()
		return false
	}
	if r.route == routeWebhook {
		d.metrics.webhookErrors.Inc()
	}
	e.attempts++
	e.tried = true
	wait := d.backoff(e.attempts)
	if !d.now().Add(wait).Before(e.expiry) {
		d.drop(ctx, e, fmt.Sprintf("time to live runs out before the next attempt; last error: %v", r.err))
		return false
	}
	e.next = time.Now().Add(wait)
	d.metrics.upstreamRetries.WithLabelValues(r.route).Inc()
	d.log.Warn("upstream delivery failed; will retry", "sender", sender, "message_id", e.id, "route", r.route,
		"attempts", e.attempts, "retry_in", wait.Round(time.Millisecond), "err", r.err)
	return true
}

func (d *dispatcher) drop(ctx context.Context, e *upEntry, why string) {
	sender := e.lane.sender.id
	if err := d.store.DeleteUpstream(ctx, e.seq); err != nil {
		d.log.Error("delete dropped upstream message", "sender", sender, "message_id", e.id, "err", err)
	}
	d.metrics.upstreamDropped.Inc()
	d.log.Warn("upstream message dropped", "sender", sender, "app", e.app, "message_id", e.id, "attempts", e.attempts, "why", why)
}

// backoff doubles from retryMin up to retryMax, with jitter so that the
// retries of many messages spread out.
func (d *dispatcher) backoff(attempts int) time.Duration {
	b := d.retryMin
	for i := 1; i < attempts && b < d.retryMax; i++ {
		b *= 2
	}
	b = min(b, d.retryMax)
	return b/2 + mathrand.N(b/2+1)
}

// receiptFrom is the "from" of delivery receipts, GCM's, so that app
// servers written for GCM recognise them.
const receiptFrom = "gcm.googleapis.com"

// webhook POSTs upstream messages as JSON to a sender's URL, signed with
// the sender's webhook secrets.
type webhook struct {
	client  *http.Client
	url     string
	secrets []string
	now     func() time.Time
}

// Headers of a webhook POST (docs/server-api.md).
const (
	// SignatureHeader carries "t=UNIX_SECONDS,v1=HEX": HEX is the
	// HMAC-SHA256, keyed with a webhook secret, of t, ".", and the body,
	// as Stripe signs webhooks. During a secret's rotation both secrets
	// sign, each in its own v1.
	SignatureHeader = "Tether-Signature"
	// IdempotencyHeader carries the message's ID: a POST retried after a
	// lost answer carries the same, so that the app server takes it once.
	IdempotencyHeader = "Idempotency-Key"
)

// webhookSignature is the Tether-Signature of body sent at t.
func webhookSignature(secrets []string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	sig := "t=" + ts
	for _, secret := range secrets {
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(ts + "."))
		mac.Write(body)
		sig += ",v1=" + hex.EncodeToString(mac.Sum(nil))
	}
	return sig
}

// webhookBody is what a webhook receives, in the shape of GCM's upstream
// messages and delivery receipts over XMPP.
type webhookBody struct {
	// MessageType is "receipt" for a delivery receipt, absent for an app's
	// message.
	MessageType string            `json:"message_type,omitempty"`
	From        string            `json:"from"`
	Category    string            `json:"category"`
	MessageID   string            `json:"message_id"`
	Data        map[string]string `json:"data"`
	TTL         int64             `json:"ttl"`
	Priority    string            `json:"priority,omitempty"`
	SentTime    int64             `json:"sent_time"`
}

func (webhook) name() string { return routeWebhook }

// parallel keeps a slow or dead webhook from holding every worker.
func (webhook) parallel() int { return 2 }

// upstreamBody is u as app servers receive it, on either route.
func upstreamBody(u store.Upstream) webhookBody {
	data := u.Data
	if data == nil {
		data = map[string]string{}
	}
	b := webhookBody{
		From: u.Token, Category: u.App, MessageID: u.ID, Data: data, TTL: u.TTL,
		Priority: u.Priority, SentTime: u.Received.UnixMilli(),
	}
	if u.Type == store.UpstreamReceipt {
		// As GCM sends receipts: from the connection server, about the
		// token in data.device_registration_id.
		b.MessageType, b.From = store.UpstreamReceipt, receiptFrom
	}
	return b
}

func (w webhook) deliver(ctx context.Context, u store.Upstream) error {
	body, err := json.Marshal(upstreamBody(u))
	if err != nil {
		return fmt.Errorf("encode webhook body: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, w.url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("webhook request: %w", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "tether-server")
	req.Header.Set(IdempotencyHeader, u.ID)
	req.Header.Set(SignatureHeader, webhookSignature(w.secrets, w.now(), body))
	resp, err := w.client.Do(req)
	if err != nil {
		// The URL may carry a secret in its query; keep it out of logs.
		var urlErr *url.Error
		if errors.As(err, &urlErr) {
			err = urlErr.Err
		}
		return fmt.Errorf("webhook request: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("webhook answered %s", resp.Status)
	}
	return nil
}
