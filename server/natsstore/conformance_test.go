// SPDX-License-Identifier: Apache-2.0

package natsstore_test

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"github.com/nats-io/nats.go"

	"tether/internal/natstest"
	"tether/server/natsstore"
	"tether/server/store"
	"tether/server/store/storetest"
)

// cluster is the three-server JetStream cluster every test of the package
// shares; each test has state of its own under a prefix of its own.
var cluster *natstest.Cluster

func TestMain(m *testing.M) {
	os.Exit(natstest.Main(m, natstest.Config{}, &cluster))
}

var prefixes atomic.Int64

// open opens a fresh state on the shared cluster, on a connection to one
// of its servers.
func open(t testing.TB, shards int) (*natsstore.Store, natsstore.Config) {
	t.Helper()
	return openObserved(t, shards, nil)
}

// openObserved opens a fresh state as open does, which tells obs what it
// does.
func openObserved(t testing.TB, shards int, obs store.Observer) (*natsstore.Store, natsstore.Config) {
	t.Helper()
	cfg := natsstore.Config{Conn: connect(t), Prefix: fmt.Sprintf("t%d", prefixes.Add(1)), Shards: shards, Observer: obs}
	s, err := natsstore.Open(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s, cfg
}

func connect(t testing.TB) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(cluster.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// TestConformance runs the backends' suite on a three-server cluster.
func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T) store.Backend {
			s, _ := open(t, 3)
			return s
		},
		Reopen: func(t *testing.T, b store.Backend) store.Backend {
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			// Another process, on another connection, sees the same state.
			s, err := natsstore.Open(context.Background(), natsstore.Config{Conn: connect(t), Prefix: prefixOf(t, b)})
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		OpenObserved: func(t *testing.T, obs store.Observer) store.Backend {
			s, _ := openObserved(t, 3, obs)
			return s
		},
	})
}

// BenchmarkPending: a session's read of a full window's queue, with and
// without the messages in flight left out (storetest.BenchPending).
func BenchmarkPending(b *testing.B) {
	s, _ := open(b, 3)
	defer s.Close()
	storetest.BenchPending(b, s)
}

func prefixOf(t *testing.T, b store.Backend) string {
	t.Helper()
	return b.(*natsstore.Store).Prefix()
}
