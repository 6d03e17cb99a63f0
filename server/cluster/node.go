// SPDX-License-Identifier: Apache-2.0

// Package cluster is what makes several tether-server processes one
// connection server: each process is a node, and the nodes reach each
// other through NATS.
//
//   - Devices: whatever concerns a device (its queue grew, a message with
//     no time to live, a newer session elsewhere) is published on the
//     device's own subject, which only the node holding its session
//     subscribes to. Delivery is pushed to that node, never polled for.
//   - Work that one node must do at a time (upstream delivery, topic
//     fan-out) is split into partitions, one per shard of the state; each
//     partition is leased to one node in a JetStream bucket whose records
//     expire unless renewed, so the death of a node hands its partitions
//     to the others within seconds.
//   - A sender's XMPP connections may be on any node: the node that
//     delivers its upstream messages asks over NATS for a node that holds
//     one.
//   - Limits that count per device or per sender are token buckets in a
//     JetStream bucket, so they hold cluster-wide.
//
// The package holds no device state itself (package natsstore does) and
// knows nothing of HTTP or WebSocket sessions: package server gives it
// callbacks.
package cluster

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"tether/server/internal/jsstream"
)

// ConnConfig says how to reach the NATS cluster.
type ConnConfig struct {
	// URLs of NATS servers; the client learns the rest of the cluster
	// from them.
	URLs []string
	// Creds is a NATS credentials file (JWT and NKey seed), or empty.
	Creds string
	// CA is a PEM file of the CAs that sign the NATS servers'
	// certificates, for tls:// URLs; empty means the system's roots.
	CA string
	// Name names the connection in the NATS servers' monitoring.
	Name   string
	Logger *slog.Logger
	// OnReconnect is called after the connection came back from an outage:
	// what was published meanwhile may have been missed.
	OnReconnect func()
}

// Connect opens a connection that reconnects forever: a node outlives a
// NATS server's restart or a partition.
func Connect(ctx context.Context, cfg ConnConfig) (*nats.Conn, error) {
	if len(cfg.URLs) == 0 {
		return nil, errors.New("connect to NATS: no server URL")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	opts := []nats.Option{
		nats.Name(cfg.Name),
		nats.MaxReconnects(-1),
		// A NATS server that died without closing the connection is left
		// within half a minute.
		nats.PingInterval(10 * time.Second),
		nats.MaxPingsOutstanding(2),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectJitter(500*time.Millisecond, time.Second),
		nats.RetryOnFailedConnect(false),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			log.Warn("NATS connection lost; reconnecting", "err", err)
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info("NATS connection back", "server", nc.ConnectedUrlRedacted())
			if cfg.OnReconnect != nil {
				cfg.OnReconnect()
			}
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subject := ""
			if sub != nil {
				subject = sub.Subject
			}
			log.Error("NATS", "subject", subject, "err", err)
		}),
	}
	if cfg.Creds != "" {
		opts = append(opts, nats.UserCredentials(cfg.Creds))
	}
	if cfg.CA != "" {
		opts = append(opts, nats.RootCAs(cfg.CA))
	}
	var nc *nats.Conn
	var err error
	for {
		nc, err = nats.Connect(strings.Join(cfg.URLs, ","), opts...)
		if err == nil {
			return nc, nil
		}
		log.Warn("cannot reach NATS yet; retrying", "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("connect to NATS %s: %w", strings.Join(cfg.URLs, ","), err)
		case <-time.After(time.Second):
		}
	}
}

// Close closes a connection made by Connect and waits until its
// callbacks have run: none of them runs after Close returns.
func Close(nc *nats.Conn) {
	closed := make(chan struct{})
	nc.SetClosedHandler(func(*nats.Conn) { close(closed) })
	nc.FlushTimeout(time.Second)
	nc.Close()
	select {
	case <-closed:
	case <-time.After(5 * time.Second):
	}
}

// Config configures a Node.
type Config struct {
	Conn *nats.Conn
	// Prefix is the state's (natsstore.Config.Prefix): subjects and
	// streams of one cluster share it.
	Prefix string
	// Partitions is the number of partitions of the work, the state's
	// shards.
	Partitions int
	// PublicURL is the URL devices reach this node at, which other nodes
	// name in the goaway of a shutdown; empty for none.
	PublicURL string
	// LeaseTTL is how long a partition stays with a node that stopped
	// renewing it; default 6 s. Renewals come three times as often.
	LeaseTTL time.Duration
	// Replicas of the nodes' bucket: 0 for three on a cluster that can
	// place them, else one.
	Replicas int
	Logger   *slog.Logger
}

// Node is this process in the cluster.
type Node struct {
	cfg    Config
	nc     *nats.Conn
	js     jetstream.JetStream
	id     string
	log    *slog.Logger
	stream string
	bucket jetstream.Stream

	mu      sync.Mutex
	members map[string]member // by node ID, from the bucket
}

// member is a node's record in the nodes' bucket.
type member struct {
	ID        string    `json:"id"`
	PublicURL string    `json:"public_url,omitempty"`
	Started   time.Time `json:"started"`
}

// NewNode prepares the nodes' bucket; Run joins the cluster.
func NewNode(ctx context.Context, cfg Config) (*Node, error) {
	if cfg.Conn == nil || cfg.Prefix == "" || cfg.Partitions <= 0 {
		return nil, errors.New("join cluster: a connection, a prefix and partitions are needed")
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 6 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("join cluster: %w", err)
	}
	b := make([]byte, 6)
	rand.Read(b)
	n := &Node{
		cfg: cfg, nc: cfg.Conn, js: js, id: hex.EncodeToString(b),
		stream: strings.ToUpper(cfg.Prefix) + "_NODES", members: map[string]member{},
	}
	n.log = cfg.Logger.With("node", n.id)
	if n.bucket, err = n.ensureStream(ctx); err != nil {
		return nil, fmt.Errorf("join cluster: %w", err)
	}
	return n, nil
}

// LeaseTTL is how long a partition outlives its node's last renewal.
func (n *Node) LeaseTTL() time.Duration { return n.cfg.LeaseTTL }

// ID is this node's, random for each run of the process.
func (n *Node) ID() string { return n.id }

// Conn is the node's NATS connection.
func (n *Node) Conn() *nats.Conn { return n.nc }

func (n *Node) subject(parts ...string) string {
	return n.cfg.Prefix + "." + strings.Join(parts, ".")
}

// ensureStream creates the bucket of members and leases: records that
// expire unless renewed, and leave a marker when they do, so that watchers
// learn at once that a node is gone.
func (n *Node) ensureStream(ctx context.Context) (jetstream.Stream, error) {
	return jsstream.Ensure(ctx, n.js, jetstream.StreamConfig{
		Name:                   n.stream,
		Description:            "Tether connection server nodes and their leases (docs/scaling.md)",
		Subjects:               []string{n.subject("nodes", ">")},
		Storage:                jetstream.FileStorage,
		Replicas:               n.cfg.Replicas,
		MaxMsgsPerSubject:      1,
		AllowDirect:            true,
		AllowMsgTTL:            true,
		SubjectDeleteMarkerTTL: time.Second,
	}, n.log)
}

// Run keeps the node's membership and leases until ctx ends, then gives
// its leases up so that other nodes take them at once.
func (n *Node) Run(ctx context.Context, leases *Leases) error {
	renew := time.NewTicker(n.cfg.LeaseTTL / 3)
	defer renew.Stop()
	var freed <-chan struct{}
	if leases != nil {
		freed = leases.Changed()
	}
	watch, err := n.watchMembers(ctx)
	if err != nil {
		return err
	}
	defer watch.Stop()
	for {
		n.announce(ctx)
		if leases != nil {
			leases.balance(ctx, n.liveMembers())
		}
		select {
		case <-ctx.Done():
			if leases != nil {
				leases.releaseAll(context.WithoutCancel(ctx))
			}
			n.leave(context.WithoutCancel(ctx))
			return nil
		case <-renew.C:
		case <-freed:
		}
	}
}

// announce writes (or renews) this node's record.
func (n *Node) announce(ctx context.Context) {
	m := member{ID: n.id, PublicURL: n.cfg.PublicURL, Started: time.Now()}
	n.mu.Lock()
	if cur, ok := n.members[n.id]; ok {
		m.Started = cur.Started
	}
	n.members[n.id] = m
	n.mu.Unlock()
	msg := nats.NewMsg(n.subject("nodes", "member", n.id))
	msg.Data = mustJSON(m)
	msg.Header.Set(jetstream.MsgTTLHeader, ttlHeader(n.cfg.LeaseTTL))
	ctx, cancel := context.WithTimeout(ctx, n.cfg.LeaseTTL/3)
	defer cancel()
	if _, err := n.js.PublishMsg(ctx, msg); err != nil && ctx.Err() == nil {
		n.log.Warn("renew cluster membership", "err", err)
	}
}

// leave deletes this node's record.
func (n *Node) leave(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	msg := nats.NewMsg(n.subject("nodes", "member", n.id))
	msg.Header.Set("KV-Operation", "PURGE")
	msg.Header.Set(jetstream.MsgTTLHeader, "1s")
	n.js.PublishMsg(ctx, msg)
}

// watchMembers keeps n.members up to date from the bucket.
func (n *Node) watchMembers(ctx context.Context) (jetstream.ConsumeContext, error) {
	cons, err := n.js.OrderedConsumer(ctx, n.stream, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{n.subject("nodes", "member", "*")},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("watch cluster members: %w", err)
	}
	cc, err := cons.Consume(func(msg jetstream.Msg) {
		id := msg.Subject()[strings.LastIndexByte(msg.Subject(), '.')+1:]
		n.mu.Lock()
		defer n.mu.Unlock()
		if len(msg.Data()) == 0 || msg.Headers().Get("KV-Operation") != "" || msg.Headers().Get(jetstream.MarkerReasonHeader) != "" {
			if id != n.id {
				delete(n.members, id)
			}
			return
		}
		var m member
		if err := json.Unmarshal(msg.Data(), &m); err == nil {
			n.members[id] = m
		}
	})
	if err != nil {
		return nil, fmt.Errorf("watch cluster members: %w", err)
	}
	return cc, nil
}

// liveMembers are the IDs of the nodes with a record, this one included.
func (n *Node) liveMembers() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	ids := make([]string, 0, len(n.members))
	for id := range n.members {
		ids = append(ids, id)
	}
	return ids
}

// OtherPublicURL is the public URL of another live node, chosen at random,
// or "" when none has one.
func (n *Node) OtherPublicURL() string {
	n.mu.Lock()
	defer n.mu.Unlock()
	for id, m := range n.members { // map order is random enough
		if id != n.id && m.PublicURL != "" {
			return m.PublicURL
		}
	}
	return ""
}

// Members counts the live nodes, this one included.
func (n *Node) Members() int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.members)
}

// ttlHeader writes d as Nats-TTL takes it: whole seconds, at least one.
func ttlHeader(d time.Duration) string {
	return fmt.Sprintf("%ds", max(int64((d+time.Second-1)/time.Second), 1))
}
