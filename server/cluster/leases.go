// SPDX-License-Identifier: Apache-2.0

package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Leases spreads the partitions of the work over the live nodes: each
// partition is a record in the nodes' bucket that names its node and
// expires unless that node renews it. A node takes free partitions up to
// its fair share and gives one up when another node has fewer than its
// share, so the work follows the nodes as they come and go.
type Leases struct {
	node *Node
	// OnGain and OnLose are called, from Node.Run's goroutine, when this
	// node takes or loses a partition. OnLose comes before another node
	// can have it, unless this node stopped renewing it for a whole lease.
	onGain, onLose func(p int)

	mu     sync.Mutex
	held   map[int]uint64 // partition → sequence of this node's record
	owners map[int]string // partition → node, from the bucket
	// changed wakes Run when a partition is freed.
	changed chan struct{}
}

// NewLeases prepares the leases of the node's partitions; Node.Run keeps
// them.
func NewLeases(ctx context.Context, n *Node, onGain, onLose func(p int)) (*Leases, jetstream.ConsumeContext, error) {
	l := &Leases{node: n, onGain: onGain, onLose: onLose, held: map[int]uint64{}, owners: map[int]string{}, changed: make(chan struct{}, 1)}
	cons, err := n.js.OrderedConsumer(ctx, n.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{n.subject("nodes", "lease", "*")},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return nil, nil, fmt.Errorf("watch leases: %w", err)
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		p, err := strconv.Atoi(msg.Subject()[strings.LastIndexByte(msg.Subject(), '.')+1:])
		if err != nil {
			return
		}
		var owner string
		if msg.Headers().Get("KV-Operation") == "" && msg.Headers().Get(jetstream.MarkerReasonHeader) == "" {
			var rec leaseRecord
			if json.Unmarshal(msg.Data(), &rec) == nil {
				owner = rec.Node
			}
		}
		l.mu.Lock()
		if owner == "" {
			delete(l.owners, p)
		} else {
			l.owners[p] = owner
		}
		l.mu.Unlock()
		if owner == "" {
			select {
			case l.changed <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		return nil, nil, fmt.Errorf("watch leases: %w", err)
	}
	return l, cc, nil
}

type leaseRecord struct {
	Node string `json:"node"`
}

// Changed is signalled when a partition is freed.
func (l *Leases) Changed() <-chan struct{} { return l.changed }

// Held lists the partitions this node holds.
func (l *Leases) Held() []int {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]int, 0, len(l.held))
	for p := range l.held {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// Holds reports whether this node holds partition p.
func (l *Leases) Holds(p int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.held[p]
	return ok
}

func (l *Leases) subject(p int) string { return l.node.subject("nodes", "lease", strconv.Itoa(p)) }

// balance renews what this node holds, gives up a partition when another
// live node has fewer than its share, and takes free ones up to this
// node's share.
func (l *Leases) balance(ctx context.Context, members []string) {
	parts := l.node.cfg.Partitions
	floor := parts / max(len(members), 1)
	ceil := (parts + max(len(members), 1) - 1) / max(len(members), 1)
	for _, p := range l.Held() {
		if err := l.write(ctx, p, l.seq(p)); err != nil {
			l.lose(p, err)
		}
	}
	if p, ok := l.surplus(members, floor); ok {
		l.release(ctx, p)
	}
	for _, p := range mathrand.Perm(parts) {
		if len(l.Held()) >= ceil {
			return
		}
		if l.free(p) {
			l.claim(ctx, p)
		}
	}
}

func (l *Leases) seq(p int) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.held[p]
}

func (l *Leases) free(p int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, owned := l.owners[p]
	_, held := l.held[p]
	return !owned && !held
}

// surplus picks a partition to give up: this node holds the most, more
// than its share, while a live node has less than its share.
func (l *Leases) surplus(members []string, floor int) (int, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	count := map[string]int{}
	for _, m := range members {
		count[m] = 0
	}
	for _, owner := range l.owners {
		if _, live := count[owner]; live {
			count[owner]++
		}
	}
	mine := len(l.held)
	short := false
	for id, c := range count {
		if c < floor {
			short = true
		}
		// The node with the most gives up first; ties go to the lower ID.
		if id != l.node.id && (c > mine || c == mine && id < l.node.id) {
			return 0, false
		}
	}
	if !short || mine <= floor {
		return 0, false
	}
	for p := range l.held {
		return p, true
	}
	return 0, false
}

// write writes this node's record of p, expecting sequence seq.
func (l *Leases) write(ctx context.Context, p int, seq uint64) error {
	msg := nats.NewMsg(l.subject(p))
	msg.Data = mustJSON(leaseRecord{Node: l.node.id})
	msg.Header.Set(jetstream.MsgTTLHeader, ttlHeader(l.node.cfg.LeaseTTL))
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seq, 10))
	ctx, cancel := context.WithTimeout(ctx, l.node.cfg.LeaseTTL/3)
	defer cancel()
	ack, err := l.node.js.PublishMsg(ctx, msg)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.held[p] = ack.Sequence
	l.owners[p] = l.node.id
	l.mu.Unlock()
	return nil
}

// claim takes free partition p.
func (l *Leases) claim(ctx context.Context, p int) {
	// The marker of an expired lease has a sequence of its own.
	seq := uint64(0)
	if m, err := l.node.bucket.GetLastMsgForSubject(ctx, l.subject(p)); err == nil {
		if m.Header.Get("KV-Operation") == "" && m.Header.Get(jetstream.MarkerReasonHeader) == "" {
			return // taken meanwhile
		}
		seq = m.Sequence
	} else if !errors.Is(err, jetstream.ErrMsgNotFound) {
		return
	}
	if err := l.write(ctx, p, seq); err != nil {
		l.mu.Lock()
		delete(l.held, p)
		l.mu.Unlock()
		return
	}
	l.node.log.Info("partition taken", "partition", p)
	l.onGain(p)
}

// lose forgets p after its renewal failed.
func (l *Leases) lose(p int, err error) {
	l.mu.Lock()
	delete(l.held, p)
	l.mu.Unlock()
	l.node.log.Warn("partition lost", "partition", p, "err", err)
	l.onLose(p)
}

// release gives p up for another node to take.
func (l *Leases) release(ctx context.Context, p int) {
	l.mu.Lock()
	seq := l.held[p]
	delete(l.held, p)
	l.mu.Unlock()
	l.onLose(p)
	msg := nats.NewMsg(l.subject(p))
	msg.Header.Set("KV-Operation", "PURGE")
	msg.Header.Set(jetstream.MsgTTLHeader, "1s")
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seq, 10))
	ctx, cancel := context.WithTimeout(ctx, l.node.cfg.LeaseTTL/3)
	defer cancel()
	if _, err := l.node.js.PublishMsg(ctx, msg); err != nil {
		l.node.log.Debug("give up partition", "partition", p, "err", err)
		return
	}
	l.node.log.Info("partition given up", "partition", p)
}

// releaseAll gives up every partition, on the way out.
func (l *Leases) releaseAll(ctx context.Context) {
	for _, p := range l.Held() {
		l.release(ctx, p)
	}
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encode %T: %v", v, err))
	}
	return b
}
