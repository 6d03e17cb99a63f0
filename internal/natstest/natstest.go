// SPDX-License-Identifier: Apache-2.0

// Package natstest starts real NATS JetStream clusters on loopback for
// tests: nats-server's own code, either inside the test process (fast, for
// suites that need a cluster, not its failures) or as separate nats-server
// processes that a test can kill, pause and cut off from each other.
//
// It is test support only; nothing in the shipped binaries imports it.
package natstest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Config shapes a cluster. Zero values take the defaults named.
type Config struct {
	// Servers is the number of JetStream servers; default 3.
	Servers int
	// Dir holds each server's JetStream store; default a temporary
	// directory of the test.
	Dir string
	// SyncAlways makes each server fsync every write, as
	// sync_interval: always does.
	SyncAlways bool
}

// BatchInflight is the number of atomic batches a stream may have open at
// once on the clusters started here, as `max_batch_inflight_per_stream`
// sets it on an operator's servers (docs/scaling.md): the default, 50, is
// fewer than the writes several busy Tether nodes have in flight.
const BatchInflight = 1000

// Cluster is a running cluster of in-process servers.
type Cluster struct {
	servers []*server.Server
}

// Start starts an in-process cluster and waits until JetStream has a meta
// leader. The cluster shuts down when the test ends.
func Start(t testing.TB, cfg Config) *Cluster {
	t.Helper()
	if cfg.Dir == "" {
		cfg.Dir = t.TempDir()
	}
	c, err := StartCluster(cfg)
	if c != nil {
		t.Cleanup(c.Shutdown)
	}
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Main runs a package's tests with a cluster started for them all, in
// *cluster, and shuts it down after: a TestMain's body.
func Main(m *testing.M, cfg Config, cluster **Cluster) int {
	if cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "natstest")
		if err != nil {
			fmt.Fprintln(os.Stderr, "natstest:", err)
			return 1
		}
		defer os.RemoveAll(dir)
		cfg.Dir = dir
	}
	c, err := StartCluster(cfg)
	if c != nil {
		defer c.Shutdown()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "natstest:", err)
		return 1
	}
	*cluster = c
	return m.Run()
}

// StartCluster starts an in-process cluster in cfg.Dir and waits until
// JetStream has a meta leader. The caller shuts it down, also after an
// error.
func StartCluster(cfg Config) (*Cluster, error) {
	if cfg.Servers == 0 {
		cfg.Servers = 3
	}
	// Every server routes to every other from the start: a JetStream
	// cluster needs its routes configured, so the ports are chosen first.
	ports, err := FreePorts(cfg.Servers)
	if err != nil {
		return nil, err
	}
	var routes []*url.URL
	for _, p := range ports {
		routes = append(routes, &url.URL{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", p)})
	}
	c := &Cluster{}
	for i := range cfg.Servers {
		opts := &server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       -1,
			JetStream:  true,
			StoreDir:   filepath.Join(cfg.Dir, fmt.Sprintf("n%d", i+1)),
			SyncAlways: cfg.SyncAlways,
			NoLog:      true,
			NoSigs:     true,
		}
		opts.JetStreamLimits.MaxBatchInflightPerStream = BatchInflight
		opts.JetStreamLimits.MaxBatchInflightTotal = BatchInflight * 4
		if cfg.Servers > 1 {
			opts.Cluster = server.ClusterOpts{Name: "tether-test", Host: "127.0.0.1", Port: ports[i]}
			opts.Routes = routes
		}
		s, err := server.NewServer(opts)
		if err != nil {
			return c, fmt.Errorf("nats server %d: %w", i+1, err)
		}
		go s.Start()
		c.servers = append(c.servers, s)
		if !s.ReadyForConnections(10 * time.Second) {
			return c, fmt.Errorf("nats server %d did not start", i+1)
		}
	}
	deadline := time.Now().Add(30 * time.Second)
	for !c.ready() {
		if time.Now().After(deadline) {
			return c, errors.New("the JetStream cluster elected no meta leader within 30 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return c, nil
}

// FreePorts finds n TCP ports free on 127.0.0.1 now.
func FreePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// ready reports whether JetStream is usable: a meta leader, every server
// caught up with it.
func (c *Cluster) ready() bool {
	if len(c.servers) == 1 {
		return c.servers[0].JetStreamEnabled()
	}
	leader := false
	for _, s := range c.servers {
		if !s.JetStreamIsCurrent() {
			return false
		}
		leader = leader || s.JetStreamIsLeader()
	}
	return leader
}

// URLs are the client URLs of every server.
func (c *Cluster) URLs() []string {
	var out []string
	for _, s := range c.servers {
		out = append(out, s.ClientURL())
	}
	return out
}

// URL is every client URL, comma-separated, as --nats takes them.
func (c *Cluster) URL() string { return strings.Join(c.URLs(), ",") }

// Shutdown stops every server and waits for them.
func (c *Cluster) Shutdown() {
	for _, s := range c.servers {
		s.Shutdown()
	}
	for _, s := range c.servers {
		s.WaitForShutdown()
	}
}
