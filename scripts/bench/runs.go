// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"tether/internal/procfs"
)

const (
	// minPayload leaves room for a payload's run, sequence number and
	// time; maxPayload keeps a Tether message under its 4096-byte limit
	// for data keys and values together.
	minPayload = 48
	maxPayload = 4000
	// maxWindow is the most messages in flight that a device keeping up
	// takes without a loss: at each hop a window of 100 unacked messages
	// (the connection server's to the device, the agent's to the app),
	// and behind it at most 100 waiting for the app (GCM's rule on the
	// server, the agent's quota), one more dropping them.
	maxWindow = 200
	// stallTimeout ends a run in which nothing arrives for this long.
	stallTimeout = time.Minute
)

// makePayload builds the payload of message seq of run: "run:seq:unixnano:"
// then padding to size bytes. It holds no newline, so that it is one line
// for mosquitto_pub -l and for what mosquitto_sub prints.
func makePayload(run string, seq int, sent time.Time, size int) []byte {
	b := make([]byte, 0, size)
	b = append(b, run...)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(seq), 10)
	b = append(b, ':')
	b = strconv.AppendInt(b, sent.UnixNano(), 10)
	b = append(b, ':')
	for len(b) < size {
		b = append(b, 'x')
	}
	return b
}

// parsePayload reads back what makePayload wrote.
func parsePayload(p []byte) (run string, seq int, sent time.Time, err error) {
	parts := bytes.SplitN(p, []byte(":"), 4)
	if len(parts) != 4 {
		return "", 0, time.Time{}, fmt.Errorf("payload %.40q is not run:seq:time:padding", p)
	}
	seq, err1 := strconv.Atoi(string(parts[1]))
	nanos, err2 := strconv.ParseInt(string(parts[2]), 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return "", 0, time.Time{}, fmt.Errorf("payload %.40q: %w", p, err)
	}
	return string(parts[0]), seq, time.Unix(0, nanos), nil
}

// collector gathers what one run's subscriber received.
type collector struct {
	id      string
	n       int
	needAck bool // Tether's app acks each message; mosquitto_sub acks inside the protocol
	// window has a token per message that may be in flight: the
	// publisher takes one before it sends, the first receipt gives it
	// back.
	window chan struct{}

	mu         sync.Mutex
	seen       []bool
	received   int
	duplicates int
	acked      int
	latencies  []time.Duration
	last       time.Time // of the last receipt or ack
	err        error
	done       chan struct{}
	closed     bool
	// finished is set once the run is over; what arrives after counts as
	// late, and is still acked.
	finished bool
	late     int
}

func newCollector(id string, n, window int, needAck bool) *collector {
	c := &collector{
		id: id, n: n, needAck: needAck,
		window:    make(chan struct{}, window),
		seen:      make([]bool, n),
		latencies: make([]time.Duration, 0, n),
		done:      make(chan struct{}),
	}
	for range window {
		c.window <- struct{}{}
	}
	return c
}

// receive records a message's arrival.
func (c *collector) receive(seq int, sent, at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished {
		c.late++
		return
	}
	if seq < 0 || seq >= c.n {
		c.failLocked(fmt.Errorf("run %s: message %d received, out of 0..%d", c.id, seq, c.n-1))
		return
	}
	c.last = at
	if c.seen[seq] {
		c.duplicates++
		return
	}
	c.seen[seq] = true
	c.received++
	c.latencies = append(c.latencies, at.Sub(sent))
	select {
	case c.window <- struct{}{}:
	default:
	}
	c.checkLocked()
}

// ack records that the agent has the app's ack of a message on disk.
func (c *collector) ack(at time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.finished {
		return
	}
	c.acked++
	c.last = at
	c.checkLocked()
}

// fail ends the run with err: it lost messages, or it stalled.
func (c *collector) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.failLocked(err)
}

func (c *collector) failLocked(err error) {
	if c.err == nil {
		c.err = err
	}
	c.closeLocked()
}

func (c *collector) checkLocked() {
	if c.received == c.n && (!c.needAck || c.acked >= c.n) {
		c.closeLocked()
	}
}

func (c *collector) closeLocked() {
	if !c.closed {
		c.closed = true
		close(c.done)
	}
}

// progress is a number that grows while the run moves.
func (c *collector) progress() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.received + c.duplicates + c.acked
}

// registry finds a run's collector by the run named in a payload. Runs
// stay in it once over, so that a message of an earlier run that comes
// late is known, and acked.
type registry struct {
	mu      sync.Mutex
	runs    map[string]*collector
	current *collector
}

func (r *registry) add(c *collector) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.runs == nil {
		r.runs = map[string]*collector{}
	}
	r.runs[c.id] = c
	r.current = c
}

// finish ends a run: what comes for it from now on is late.
func (r *registry) finish(c *collector) {
	r.mu.Lock()
	if r.current == c {
		r.current = nil
	}
	r.mu.Unlock()
	c.mu.Lock()
	c.finished = true
	c.mu.Unlock()
}

// failCurrent ends the run in progress, if any, with err: the subscriber
// was told that messages were lost.
func (r *registry) failCurrent(err error) {
	r.mu.Lock()
	c := r.current
	r.mu.Unlock()
	if c != nil {
		c.fail(err)
	}
}

// deliver hands a received payload to its run's collector and returns the
// collector, or an error for a payload of no run the tool made.
func (r *registry) deliver(payload []byte, at time.Time) (*collector, error) {
	run, seq, sent, err := parsePayload(payload)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	c := r.runs[run]
	r.mu.Unlock()
	if c == nil {
		return nil, fmt.Errorf("message %d of run %q, which the tool did not make", seq, run)
	}
	c.receive(seq, sent, at)
	return c, nil
}

// system is one side of the comparison, as a run drives it.
type system interface {
	name() string
	registry() *registry
	// needsAck tells whether the subscriber acks each message apart.
	needsAck() bool
	// publish sends one payload; up to workers goroutines call it at once.
	publish(ctx context.Context, payload []byte) error
	// wire is what has crossed the device's link so far.
	wire() wireCounts
	// cpu is the CPU time the system's processes have used so far.
	cpu() cpuTimes
	// agentPID is the process of the device's side: tetherd,
	// mosquitto_sub.
	agentPID() int
	// failed is closed when a process of the system has died or the
	// tool's link to it broke; err says why. A run that loses messages
	// does not fail the system.
	failed() <-chan struct{}
	err() error
}

// runSpec is one run.
type runSpec struct {
	id   string // in the payloads: unique for the whole tool's run
	name string
	n    int
	// rate paces the sends, in messages per second; 0 sends as fast as
	// the window allows.
	rate    float64
	window  int
	workers int
	payload int
}

// runResult is what a run measured.
type runResult struct {
	Name       string `json:"name"`
	Messages   int    `json:"messages"`
	Sent       int    `json:"sent"`
	Received   int    `json:"received"`
	Duplicates int    `json:"duplicates"`
	Acked      int    `json:"acked,omitempty"`
	Missing    int    `json:"missing"`
	// Error says why the run failed: the subscriber was told messages
	// were lost, or the run stalled. The figures are then those of what
	// did arrive.
	Error     string  `json:"error,omitempty"`
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"messages_per_second"`
	// Latencies in milliseconds.
	P50Millis  float64 `json:"p50_ms"`
	P99Millis  float64 `json:"p99_ms"`
	MaxMillis  float64 `json:"max_ms"`
	MeanMillis float64 `json:"mean_ms"`
	// Wire is what crossed the device's link during the run, and
	// BytesPerMessage its frames other than heartbeats per message.
	Wire            wireCounts `json:"wire"`
	BytesPerMessage float64    `json:"bytes_per_message"`
	// AgentCPUMicros is the CPU time of the device's side per message,
	// in microseconds, counted in /proc's 10 ms ticks; ServerCPUMicros
	// the server's (tether-server, mosquitto), AllCPUMicros that of every
	// process of the run: the system's, and the tool's own as publisher,
	// app and proxy.
	AgentCPUMicros  float64 `json:"agent_cpu_us_per_message"`
	ServerCPUMicros float64 `json:"server_cpu_us_per_message"`
	AllCPUMicros    float64 `json:"all_cpu_us_per_message"`
	// PeakRSSKiB is the device side's VmHWM at the end of the run: the
	// most resident memory it has had since it started.
	PeakRSSKiB uint64 `json:"peak_rss_kib,omitempty"`
}

// drive runs one run on a system: it sends spec.n messages and waits
// until the subscriber has each of them (and has acked each, where it
// acks). A run that loses messages or stalls is a result with its Error
// set; drive returns an error only when the system failed or ctx ended.
func drive(ctx context.Context, sys system, spec runSpec) (runResult, error) {
	col := newCollector(spec.id, spec.n, spec.window, sys.needsAck())
	reg := sys.registry()
	reg.add(col)
	defer reg.finish(col)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	wireBefore, cpuBefore := sys.wire(), sys.cpu()

	var sent atomic.Int64
	seqs := make(chan int)
	var wg sync.WaitGroup
	for range spec.workers {
		wg.Go(func() {
			for seq := range seqs {
				payload := makePayload(spec.id, seq, time.Now(), spec.payload)
				if err := sys.publish(ctx, payload); err != nil {
					if ctx.Err() == nil {
						col.fail(fmt.Errorf("send message %d: %w", seq, err))
					}
					return
				}
				sent.Add(1)
			}
		})
	}
	start := time.Now()
	wg.Go(func() {
		defer close(seqs)
		for seq := range spec.n {
			if spec.rate > 0 {
				at := start.Add(time.Duration(float64(seq) * float64(time.Second) / spec.rate))
				if !sleepUntil(ctx, at) {
					return
				}
			}
			select {
			case <-col.window:
			case <-ctx.Done():
				return
			}
			select {
			case seqs <- seq:
			case <-ctx.Done():
				return
			}
		}
	})

	err := waitRun(ctx, sys, col)
	col.mu.Lock()
	runErr := col.err
	col.mu.Unlock()
	if err != nil || runErr != nil {
		cancel()
	}
	// Otherwise every message has been sent: the last answers to the
	// publishers may still be on their way.
	wg.Wait()
	col.mu.Lock()
	defer col.mu.Unlock()
	r := runResult{
		Name: spec.name, Messages: spec.n, Sent: int(sent.Load()),
		Received: col.received, Duplicates: col.duplicates, Acked: col.acked,
		Missing: spec.n - col.received,
		Wire:    sys.wire().sub(wireBefore),
	}
	if err != nil {
		return r, err
	}
	if st, err := procfs.Status(sys.agentPID()); err == nil {
		r.PeakRSSKiB = st["VmHWM"]
	}
	if runErr != nil {
		r.Error = runErr.Error()
	}
	if !col.last.IsZero() {
		r.Seconds = col.last.Sub(start).Seconds()
		r.PerSecond = float64(r.Received) / r.Seconds
	}
	r.P50Millis, r.P99Millis, r.MaxMillis, r.MeanMillis = latencyStats(col.latencies)
	r.BytesPerMessage = float64(r.Wire.DataBytes) / float64(max(r.Received, 1))
	used := sys.cpu().since(cpuBefore)
	perMessage := func(d time.Duration) float64 { return float64(d/time.Microsecond) / float64(max(r.Received, 1)) }
	r.AgentCPUMicros, r.ServerCPUMicros, r.AllCPUMicros = perMessage(used.agent), perMessage(used.server), perMessage(used.all)
	return r, nil
}

// waitRun waits until the run is over, complete or not; it returns an
// error when the system failed or ctx ended.
func waitRun(ctx context.Context, sys system, col *collector) error {
	tick := time.NewTicker(stallTimeout / 4)
	defer tick.Stop()
	last, lastMoved := -1, time.Now()
	for {
		select {
		case <-col.done:
			return nil
		case <-sys.failed():
			return sys.err()
		case <-ctx.Done():
			return ctx.Err()
		case now := <-tick.C:
			if p := col.progress(); p != last {
				last, lastMoved = p, now
			} else if now.Sub(lastMoved) >= stallTimeout {
				col.mu.Lock()
				err := fmt.Errorf("stalled for %s with %d of %d messages received and %d acked",
					stallTimeout, col.received, col.n, col.acked)
				col.mu.Unlock()
				col.fail(err)
				return nil
			}
		}
	}
}

func sleepUntil(ctx context.Context, at time.Time) bool {
	d := time.Until(at)
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// latencyStats returns the median, 99th percentile, maximum and mean in
// milliseconds, by the nearest-rank method.
func latencyStats(ds []time.Duration) (p50, p99, maxMs, mean float64) {
	if len(ds) == 0 {
		return 0, 0, 0, 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	rank := func(p float64) time.Duration {
		i := int(math.Ceil(p*float64(len(s)))) - 1
		return s[min(max(i, 0), len(s)-1)]
	}
	var sum time.Duration
	for _, d := range s {
		sum += d
	}
	return ms(rank(0.50)), ms(rank(0.99)), ms(s[len(s)-1]), ms(sum) / float64(len(s))
}
