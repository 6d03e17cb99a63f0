// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"tether/server/cluster"
	"tether/server/natsstore"
	"tether/server/store"
)

// NATSConfig makes a Server one node of a cluster of them: the state is in
// NATS JetStream, shared by every node, and the nodes reach each other
// through NATS (docs/scaling.md).
type NATSConfig struct {
	// URLs of NATS servers of the cluster.
	URLs []string
	// Creds is a NATS credentials file; CA the PEM file of CAs for tls://
	// URLs.
	Creds, CA string
	// Prefix names the cluster's streams and subjects; default "tether".
	Prefix string
	// Shards is the number of streams a new state spreads devices over,
	// and so the partitions of the work; an existing state keeps its own.
	// Default 8.
	Shards int
	// PublicURL is this node's URL for devices, which other nodes name in
	// the goaway of their shutdown.
	PublicURL string
	// LeaseTTL is how long a dead node's work waits before another takes
	// it; default 6 s.
	LeaseTTL time.Duration
	// SetUpTimeout bounds reaching NATS and setting up the streams at
	// start; default 60 s.
	SetUpTimeout time.Duration
}

// node is this process's part in a cluster; a Server on one machine has
// none.
type node struct {
	srv     *Server
	nc      *nats.Conn
	st      *natsstore.Store
	cl      *cluster.Node
	leases  *cluster.Leases
	watch   jetstream.ConsumeContext // of the leases
	devices *cluster.Devices
	senders *cluster.Senders
	lock    *os.File // the data directory's, for this node alone
	// ctx ends the deliveries this node makes for others.
	ctx    context.Context
	cancel context.CancelFunc

	mu   sync.Mutex
	work map[int]*nats.Subscription // of the partitions held
	// switched is when the node last left its NATS server for another.
	switched time.Time
}

// nodeLockFile keeps a second node off a data directory in use: its admin
// socket is this node's.
const nodeLockFile = "node.lock"

// joinCluster connects to NATS and opens the shared state.
func joinCluster(s *Server, cfg NATSConfig) (*node, error) {
	if cfg.SetUpTimeout <= 0 {
		cfg.SetUpTimeout = time.Minute
	}
	ctx, cancel := context.WithTimeout(context.Background(), cfg.SetUpTimeout)
	defer cancel()
	n := &node{srv: s, work: map[int]*nats.Subscription{}}
	var err error
	if n.lock, err = lockDataDir(s.cfg.DataDir); err != nil {
		return nil, err
	}
	n.nc, err = cluster.Connect(ctx, cluster.ConnConfig{
		URLs: cfg.URLs, Creds: cfg.Creds, CA: cfg.CA, Name: "tether-server", Logger: s.log,
		OnReconnect: n.reconnected,
	})
	if err != nil {
		n.close()
		return nil, err
	}
	if n.st, err = natsstore.Open(ctx, natsstore.Config{Conn: n.nc, Prefix: cfg.Prefix, Shards: cfg.Shards, Logger: s.log, OnUnavailable: n.unavailable, Observer: s.metrics}); err != nil {
		n.close()
		return nil, err
	}
	n.cl, err = cluster.NewNode(ctx, cluster.Config{
		Conn: n.nc, Prefix: n.st.Prefix(), Partitions: n.st.Shards(), PublicURL: cfg.PublicURL,
		LeaseTTL: cfg.LeaseTTL, Logger: s.log,
	})
	if err != nil {
		n.close()
		return nil, err
	}
	n.ctx, n.cancel = context.WithCancel(context.Background())
	if n.leases, n.watch, err = cluster.NewLeases(ctx, n.cl, n.gain, n.lose); err != nil {
		n.close()
		return nil, err
	}
	n.devices = cluster.NewDevices(n.cl, busHandler{s.hub})
	if n.senders, err = cluster.NewSenders(n.ctx, n.cl, n.deliverHere, s.up.routeAppeared); err != nil {
		n.close()
		return nil, err
	}
	s.log.Info("joined cluster", "node", n.cl.ID(), "nats", n.nc.ConnectedUrlRedacted(), "prefix", n.st.Prefix(), "partitions", n.st.Shards())
	return n, nil
}

// lockDataDir takes the data directory for this process alone.
func lockDataDir(dir string) (*os.File, error) {
	f, err := os.OpenFile(filepath.Join(dir, nodeLockFile), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, fmt.Errorf("lock data directory: %w", err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock data directory %s: %w", dir, store.ErrLocked)
	}
	return f, nil
}

// run keeps the node in the cluster until ctx ends; it gives up its
// partitions on the way out.
func (n *node) run(ctx context.Context, wg *sync.WaitGroup) {
	wg.Go(func() {
		if err := n.cl.Run(ctx, n.leases); err != nil {
			n.srv.log.Error("cluster membership", "err", err)
		}
	})
	wg.Go(func() { n.devices.Run(ctx) })
}

// close lets go of NATS and the data directory.
func (n *node) close() {
	if n.cancel != nil {
		n.cancel()
	}
	if n.senders != nil {
		n.senders.Close()
	}
	if n.watch != nil {
		n.watch.Stop()
	}
	if n.st != nil {
		n.st.Close() // waits for the changes being written
	}
	if n.nc != nil {
		cluster.Close(n.nc)
	}
	if n.lock != nil {
		n.lock.Close()
	}
}

// switchAfter is the least time between two moves to another NATS server.
const switchAfter = 10 * time.Second

// unavailable moves the node to another NATS server when JetStream did not
// answer through this one for a whole call: a server cut off from the
// rest of its cluster keeps its clients but cannot serve them.
func (n *node) unavailable() {
	n.mu.Lock()
	if time.Since(n.switched) < switchAfter {
		n.mu.Unlock()
		return
	}
	n.switched = time.Now()
	n.mu.Unlock()
	n.srv.log.Warn("JetStream does not answer through this NATS server; trying another", "server", n.nc.ConnectedUrlRedacted())
	if err := n.nc.ForceReconnect(); err != nil {
		n.srv.log.Error("move to another NATS server", "err", err)
	}
}

// reconnected catches up after an outage of the NATS connection: kicks
// published meanwhile were lost, so every session looks at its queue, and
// the work of the partitions held is read again.
func (n *node) reconnected() {
	n.srv.hub.notifyAll()
	if n.leases == nil {
		return
	}
	for _, p := range n.leases.Held() {
		n.load(p)
	}
}

// workSubject is where a partition's owner hears of new work.
func (n *node) workSubject(p int, kind string) string {
	return n.st.Prefix() + ".work." + strconv.Itoa(p) + "." + kind
}

// Kinds of work notices.
const (
	workUpstream = "up"
	workTopic    = "tm"
)

// gain starts this node's work on partition p: it hears of new work there,
// then reads what waits.
func (n *node) gain(p int) {
	sub, err := n.nc.Subscribe(n.workSubject(p, "*"), func(msg *nats.Msg) {
		switch msg.Subject[strings.LastIndexByte(msg.Subject, '.')+1:] {
		case workUpstream:
			var u store.Upstream
			if json.Unmarshal(msg.Data, &u) == nil {
				n.srv.up.schedule(u, false)
			}
		case workTopic:
			n.srv.fan.wakeUp()
		}
	})
	if err != nil {
		n.srv.log.Error("hear of work", "partition", p, "err", err)
	}
	n.mu.Lock()
	n.work[p] = sub
	n.mu.Unlock()
	n.load(p)
}

// load reads the upstream messages waiting in p and wakes the fan-out.
func (n *node) load(p int) {
	if moved, err := n.st.MoveLegacyUpstream(n.ctx, p); err != nil {
		n.srv.log.Error("move upstream messages of an earlier version; those left wait for the next take of the partition", "partition", p, "err", err)
	} else if moved > 0 {
		n.srv.log.Info("upstream messages of an earlier version moved to their lanes", "partition", p, "moved", moved)
	}
	err := n.st.EachUpstreamIn(n.ctx, p, func(u store.Upstream) error {
		// It had its chance with the node that held p before.
		n.srv.up.schedule(u, true)
		return nil
	})
	if err != nil {
		n.srv.log.Error("load upstream queue; it is read again when the partition is taken again", "partition", p, "err", err)
	}
	n.srv.fan.wakeUp()
}

// lose stops this node's work on partition p, and waits a little for the
// deliveries in progress to end: the node that takes p next would post
// them again. The wait is bounded, so that it does not hold up the
// renewal of the other partitions.
func (n *node) lose(p int) {
	n.mu.Lock()
	if sub := n.work[p]; sub != nil {
		sub.Unsubscribe()
	}
	delete(n.work, p)
	n.mu.Unlock()
	select {
	case <-n.srv.up.dropPartition(p):
	case <-time.After(n.cl.LeaseTTL() / 3):
		n.srv.log.Warn("partition given up with deliveries still in progress; they may be posted again", "partition", p)
	}
}

// upstreamQueued hands a newly queued upstream message to its
// partition's owner, this node or another.
func (n *node) upstreamQueued(u store.Upstream) {
	b, err := json.Marshal(u)
	if err != nil {
		return
	}
	n.nc.Publish(n.workSubject(int(u.Seq&0xff), workUpstream), b)
}

// topicQueued tells the owner of sender's partition of a new topic
// message.
func (n *node) topicQueued(sender string) {
	n.nc.Publish(n.workSubject(n.st.ShardOf(sender), workTopic), nil)
}

// deliverHere delivers, for another node, an upstream message to a local
// XMPP connection of sender.
func (n *node) deliverHere(ctx context.Context, sender string, payload []byte) error {
	if n.srv.ccs == nil {
		return errNoCCSConn
	}
	var u store.Upstream
	if err := json.Unmarshal(payload, &u); err != nil {
		return fmt.Errorf("decode upstream message from another node: %w", err)
	}
	if u.Sender != sender {
		return errors.New("upstream message for another sender")
	}
	return n.srv.ccs.deliver(ctx, u)
}

// peerRoute delivers a sender's upstream messages over its XMPP connection
// on another node.
type peerRoute struct{ n *node }

func (peerRoute) name() string { return "xmpp" }

func (peerRoute) parallel() int { return upstreamWorkers }

func (r peerRoute) deliver(ctx context.Context, u store.Upstream) error {
	b, err := json.Marshal(u)
	if err != nil {
		return fmt.Errorf("encode upstream message: %w", err)
	}
	// The other node waits up to its ack timeout; a little more covers
	// the trip.
	return r.n.senders.Deliver(ctx, u.Sender, b, r.n.srv.cfg.XMPPAckTimeout+5*time.Second)
}

// busHandler takes what other nodes publish about this node's sessions.
type busHandler struct{ h *hub }

func (b busHandler) Kick(device string) {
	if ss := b.h.session(device); ss != nil {
		ss.notify()
	}
}

func (b busHandler) End(device string) { b.h.endHere(device) }

func (b busHandler) Live(device string, payload []byte) {
	var m store.Message
	if err := json.Unmarshal(payload, &m); err != nil || m.Device != device {
		return
	}
	b.h.deliverHere(m)
}

func (b busHandler) Takeover(device, key string) {
	if ss := b.h.session(device); ss != nil && ss.key < key {
		ss.replaced()
	}
}

// clusterLimiter is a rate limit that holds across the nodes. When NATS
// does not answer it lets events through: a limit must not stop the
// service.
type clusterLimiter struct {
	r   *cluster.Rates
	srv *Server
}

func (l clusterLimiter) allow(ctx context.Context, key string) bool {
	ok, err := l.r.Allow(ctx, key)
	if err != nil {
		l.srv.log.Warn("rate limit unavailable; allowing", "err", err)
	}
	return ok
}

func (l clusterLimiter) exhausted(ctx context.Context, key string) bool {
	over, err := l.r.Exhausted(ctx, key)
	if err != nil {
		l.srv.log.Warn("rate limit unavailable; allowing", "err", err)
	}
	return over
}

// limiterFor is a limit of perMinute events per key: on this process, or
// across the cluster's nodes.
func (s *Server) limiterFor(name string, perMinute int, now func() time.Time) (limiter, error) {
	if s.node == nil || perMinute <= 0 {
		return newRateLimiter(perMinute, now), nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	r, err := cluster.NewRates(ctx, s.node.cl, name, perMinute, now)
	if err != nil {
		return nil, err
	}
	return clusterLimiter{r: r, srv: s}, nil
}

// adminCluster is what an Admin needs of a cluster: its state, and a way
// to reach a device's session.
type adminCluster struct {
	nc      *nats.Conn
	st      *natsstore.Store
	devices *cluster.Devices
}

func openAdminCluster(ctx context.Context, cfg NATSConfig) (*adminCluster, error) {
	if cfg.SetUpTimeout <= 0 {
		cfg.SetUpTimeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.SetUpTimeout)
	defer cancel()
	nc, err := cluster.Connect(ctx, cluster.ConnConfig{URLs: cfg.URLs, Creds: cfg.Creds, CA: cfg.CA, Name: "tether-server admin"})
	if err != nil {
		return nil, err
	}
	st, err := natsstore.Open(ctx, natsstore.Config{Conn: nc, Prefix: cfg.Prefix, Shards: cfg.Shards})
	if err != nil {
		nc.Close()
		return nil, err
	}
	return &adminCluster{nc: nc, st: st, devices: cluster.DevicePublisher(nc, st.Prefix())}, nil
}

func (c *adminCluster) close() { cluster.Close(c.nc) }
