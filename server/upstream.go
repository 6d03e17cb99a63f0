package server

import (
	"bytes"
	"container/heap"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	mathrand "math/rand/v2"
	"net/http"
	"net/url"
	"slices"
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

// upEntry schedules one queued upstream message; the message itself stays
// in the store until an attempt loads it.
type upEntry struct {
	seq      uint64
	sender   string
	app, id  string    // for logs
	expiry   time.Time // by the server's clock
	next     time.Time // when to try next, by the real clock that timers use
	attempts int
	// tried is set once the message had its chance: after an attempt, a
	// wait without a route, or a restart. A TTL-0 message gets one attempt
	// and is dropped after it.
	tried bool
}

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

// dispatcher delivers the upstream queue: one goroutine schedules entries
// on a single timer and a few workers make the attempts.
type dispatcher struct {
	store    store.Backend
	log      *slog.Logger
	now      func() time.Time
	routeFor func(ctx context.Context, sender string) (route, error)
	retryMin time.Duration
	retryMax time.Duration

	// cluster, on a cluster, holds the partitions whose messages this
	// node delivers; nil on a single machine, which delivers them all.
	cluster *node

	mu       sync.Mutex
	incoming []*upEntry
	// appeared holds senders that gained a route: their waiting
	// messages are due at once.
	appeared map[string]bool
	// dropped holds partitions this node no longer delivers, each with a
	// channel to close once none of its attempts is in progress.
	dropped []dropRequest
	// stopped is set once run has returned: nothing is in progress.
	stopped bool
	wake    chan struct{}
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
		wake:     make(chan struct{}, 1),
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
			return webhook{client: client, url: snd.Webhook}, nil
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

func newUpEntry(u store.Upstream) *upEntry {
	return &upEntry{seq: u.Seq, sender: u.Sender, app: u.App, id: u.ID, expiry: u.Expiry, next: time.Now()}
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
	e := newUpEntry(u)
	e.tried = tried
	d.mu.Lock()
	d.incoming = append(d.incoming, e)
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

// partition is the partition of message seq, on a cluster.
func partition(seq uint64) int { return int(seq & 0xff) }

// mine reports whether this node delivers message seq.
func (d *dispatcher) mine(seq uint64) bool { return d.cluster == nil || d.cluster.holds(seq) }

func (d *dispatcher) run(ctx context.Context) {
	var queue upHeap
	// scheduled holds the seq of every entry in the queue or in a worker:
	// a message queued while the store was being loaded arrives twice.
	scheduled := make(map[uint64]bool)
	if d.cluster == nil {
		// On a cluster the partitions' loads come as they are taken.
		err := d.store.EachUpstream(ctx, func(u store.Upstream) error {
			e := newUpEntry(u)
			e.tried = true // it had its chance before the restart
			queue = append(queue, e)
			scheduled[e.seq] = true
			return nil
		})
		if err != nil {
			d.log.Error("load upstream queue; messages wait for the next restart", "err", err)
		}
	}
	heap.Init(&queue)

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
	attempting := make(map[string]int)    // attempts in progress by sender
	inflight := make(map[int]int)         // attempts in progress by partition
	parked := make(map[string][]*upEntry) // due entries of senders at their limit
	for {
		now := time.Now()
		for busy < upstreamWorkers && queue.Len() > 0 && !queue[0].next.After(now) {
			e := heap.Pop(&queue).(*upEntry)
			if _, ok := parked[e.sender]; ok {
				parked[e.sender] = append(parked[e.sender], e)
				continue
			}
			switch r := d.dispatch(ctx, e); {
			case r != nil && attempting[e.sender] >= r.parallel():
				parked[e.sender] = append(parked[e.sender], e)
			case r != nil:
				busy++
				attempting[e.sender]++
				inflight[partition(e.seq)]++
				jobs <- job{e, r}
			case e.next.IsZero():
				delete(scheduled, e.seq)
			default:
				heap.Push(&queue, e)
			}
		}
		// With every worker busy, the next result wakes the loop instead.
		if queue.Len() > 0 && busy < upstreamWorkers {
			timer.Reset(max(queue[0].next.Sub(now), 0))
		} else {
			timer.Stop()
		}
		select {
		case <-ctx.Done():
			return
		case <-d.wake:
			d.mu.Lock()
			for _, e := range d.incoming {
				if !scheduled[e.seq] && d.mine(e.seq) {
					scheduled[e.seq] = true
					heap.Push(&queue, e)
				}
			}
			d.incoming = nil
			appeared := d.appeared
			d.appeared = nil
			dropped := d.dropped
			d.dropped = nil
			d.mu.Unlock()
			if len(dropped) > 0 {
				queue = d.forget(queue, parked, scheduled)
			}
			for _, req := range dropped {
				if inflight[req.partition] == 0 {
					close(req.done)
				} else {
					draining[req.partition] = append(draining[req.partition], req.done)
				}
			}
			if len(appeared) > 0 {
				for _, e := range queue {
					if appeared[e.sender] {
						e.next = now
					}
				}
				heap.Init(&queue)
			}
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
			sender := r.e.sender
			if attempting[sender]--; attempting[sender] == 0 {
				delete(attempting, sender)
			}
			for _, e := range parked[sender] {
				heap.Push(&queue, e)
			}
			delete(parked, sender)
			if d.settle(ctx, r) && d.mine(r.e.seq) {
				heap.Push(&queue, r.e)
			} else {
				delete(scheduled, r.e.seq)
			}
		case <-timer.C:
		}
	}
}

// forget takes the entries of partitions no longer this node's out of the
// queue and the parked lists; the attempts in progress end on their own.
func (d *dispatcher) forget(queue upHeap, parked map[string][]*upEntry, scheduled map[uint64]bool) upHeap {
	keep := func(e *upEntry) bool {
		if d.mine(e.seq) {
			return true
		}
		delete(scheduled, e.seq)
		return false
	}
	queue = slices.DeleteFunc(queue, func(e *upEntry) bool { return !keep(e) })
	heap.Init(&queue)
	for sender, es := range parked {
		parked[sender] = slices.DeleteFunc(es, func(e *upEntry) bool { return !keep(e) })
	}
	return queue
}

// dispatch picks the route for a due entry. Without one, a zero e.next
// means the entry was dropped and any other that it waits until then.
func (d *dispatcher) dispatch(ctx context.Context, e *upEntry) route {
	now := d.now()
	if e.tried && !now.Before(e.expiry) {
		d.drop(ctx, e, "time to live ran out")
		e.next = time.Time{}
		return nil
	}
	r, err := d.routeFor(ctx, e.sender)
	switch {
	case errors.Is(err, store.ErrNotFound):
		d.drop(ctx, e, "sender removed")
		e.next = time.Time{}
	case err != nil:
		d.log.Error("find upstream route", "sender", e.sender, "err", err)
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
	if r.gone {
		return false
	}
	if r.err == nil {
		if r.deleteErr != nil {
			d.log.Error("delete delivered upstream message; it will be delivered again after a restart", "sender", e.sender, "message_id", e.id, "err", r.deleteErr)
		}
		d.log.Info("upstream message delivered", "sender", e.sender, "app", e.app, "message_id", e.id, "route", r.route, "attempts", e.attempts+1)
		return false
	}
	e.attempts++
	e.tried = true
	wait := d.backoff(e.attempts)
	if !d.now().Add(wait).Before(e.expiry) {
		d.drop(ctx, e, fmt.Sprintf("time to live runs out before the next attempt; last error: %v", r.err))
		return false
	}
	e.next = time.Now().Add(wait)
	d.log.Warn("upstream delivery failed; will retry", "sender", e.sender, "message_id", e.id, "route", r.route,
		"attempts", e.attempts, "retry_in", wait.Round(time.Millisecond), "err", r.err)
	return true
}

func (d *dispatcher) drop(ctx context.Context, e *upEntry, why string) {
	if err := d.store.DeleteUpstream(ctx, e.seq); err != nil {
		d.log.Error("delete dropped upstream message", "sender", e.sender, "message_id", e.id, "err", err)
	}
	d.log.Warn("upstream message dropped", "sender", e.sender, "app", e.app, "message_id", e.id, "attempts", e.attempts, "why", why)
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

// webhook POSTs upstream messages as JSON to a sender's URL.
type webhook struct {
	client *http.Client
	url    string
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

func (webhook) name() string { return "webhook" }

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
