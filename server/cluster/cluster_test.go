// SPDX-License-Identifier: Apache-2.0

package cluster

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"tether/internal/natstest"
	"tether/internal/testwait"
)

var natsCluster *natstest.Cluster

func TestMain(m *testing.M) { os.Exit(natstest.Main(m, natstest.Config{}, &natsCluster)) }

var prefixes atomic.Int64

func connect(t *testing.T) *nats.Conn {
	t.Helper()
	nc, err := Connect(context.Background(), ConnConfig{URLs: natsCluster.URLs()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { Close(nc) })
	return nc
}

// running is a node whose Run goroutine the test owns.
type running struct {
	n      *Node
	leases *Leases
	stop   context.CancelFunc
	done   chan struct{}

	mu   sync.Mutex
	held map[int]bool
}

func startNode(t *testing.T, prefix string, parts int) *running {
	t.Helper()
	ctx := context.Background()
	n, err := NewNode(ctx, Config{Conn: connect(t), Prefix: prefix, Partitions: parts, LeaseTTL: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	r := &running{n: n, held: map[int]bool{}, done: make(chan struct{})}
	leases, watch, err := NewLeases(ctx, n,
		func(p int) { r.mu.Lock(); r.held[p] = true; r.mu.Unlock() },
		func(p int) { r.mu.Lock(); delete(r.held, p); r.mu.Unlock() })
	if err != nil {
		t.Fatal(err)
	}
	r.leases = leases
	runCtx, stop := context.WithCancel(ctx)
	r.stop = func() { stop(); <-r.done; watch.Stop() }
	go func() {
		defer close(r.done)
		n.Run(runCtx, leases)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			r.stop()
		}
	})
	return r
}

func (r *running) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.held)
}

// TestLeasesFollowTheNodes: the partitions spread over the nodes, each
// held by one; a node that stops gives its partitions to the others; one
// that joins gets its share.
func TestLeasesFollowTheNodes(t *testing.T) {
	const parts = 8
	prefix := fmt.Sprintf("l%d", prefixes.Add(1))
	nodes := []*running{startNode(t, prefix, parts), startNode(t, prefix, parts), startNode(t, prefix, parts)}
	spread := func(live []*running, lo int) func() bool {
		return func() bool {
			seen := map[int]bool{}
			total := 0
			for _, r := range live {
				if r.count() < lo {
					return false
				}
				for _, p := range r.leases.Held() {
					if seen[p] {
						return false // held twice
					}
					seen[p] = true
				}
				total += r.count()
			}
			return total == parts
		}
	}
	testwait.Until(t, "8 partitions over 3 nodes, at least 2 each", 20*time.Second, spread(nodes, 2))

	nodes[0].stop()
	if nodes[0].count() != 0 {
		t.Errorf("a stopped node holds %d partitions", nodes[0].count())
	}
	testwait.Until(t, "the other two to take every partition", 20*time.Second, spread(nodes[1:], 4))

	late := startNode(t, prefix, parts)
	testwait.Until(t, "the new node to get its share", 20*time.Second, spread(append(nodes[1:], late), 2))
}

// TestRatesHoldAcrossNodes: one key's budget is shared by every node, and
// refills with the clock.
func TestRatesHoldAcrossNodes(t *testing.T) {
	prefix := fmt.Sprintf("r%d", prefixes.Add(1))
	var mu sync.Mutex
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	var limits []*Rates
	for range 2 {
		n, err := NewNode(context.Background(), Config{Conn: connect(t), Prefix: prefix, Partitions: 1})
		if err != nil {
			t.Fatal(err)
		}
		r, err := NewRates(context.Background(), n, "device", 4, clock)
		if err != nil {
			t.Fatal(err)
		}
		limits = append(limits, r)
	}
	var got []bool
	for i := range 5 {
		ok, err := limits[i%2].Allow(context.Background(), "dev-1")
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, ok)
	}
	if want := []bool{true, true, true, true, false}; !slices.Equal(got, want) {
		t.Errorf("allowed %v, want %v", got, want)
	}
	if over, _ := limits[1].Exhausted(context.Background(), "dev-1"); !over {
		t.Error("an exhausted key is not reported so")
	}
	if ok, _ := limits[0].Allow(context.Background(), "dev-2"); !ok {
		t.Error("another key shares the first one's budget")
	}
	mu.Lock()
	now = now.Add(15 * time.Second) // a quarter of a minute: one more
	mu.Unlock()
	a, _ := limits[1].Allow(context.Background(), "dev-1")
	b, _ := limits[0].Allow(context.Background(), "dev-1")
	if !a || b {
		t.Errorf("after 15 s: %v then %v, want one more and no second", a, b)
	}
}

// TestRatesRefillWhateverTheClocks: a node whose clock is an hour ahead
// takes from a bucket; a node on time still sees it refill, instead of
// waiting an hour.
func TestRatesRefillWhateverTheClocks(t *testing.T) {
	prefix := fmt.Sprintf("r%d", prefixes.Add(1))
	var mu sync.Mutex
	now := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	clocks := []func() time.Time{
		func() time.Time { mu.Lock(); defer mu.Unlock(); return now.Add(time.Hour) },
		func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
	}
	var limits []*Rates
	for _, clock := range clocks {
		n, err := NewNode(context.Background(), Config{Conn: connect(t), Prefix: prefix, Partitions: 1})
		if err != nil {
			t.Fatal(err)
		}
		r, err := NewRates(context.Background(), n, "device", 4, clock)
		if err != nil {
			t.Fatal(err)
		}
		limits = append(limits, r)
	}
	for range 4 {
		if ok, err := limits[0].Allow(context.Background(), "dev-1"); !ok || err != nil {
			t.Fatalf("the node ahead: %v, %v", ok, err)
		}
	}
	if ok, _ := limits[1].Allow(context.Background(), "dev-1"); ok {
		t.Error("an exhausted bucket allowed an event")
	}
	mu.Lock()
	now = now.Add(30 * time.Second) // half a minute: two more
	mu.Unlock()
	var got []bool
	for range 3 {
		ok, _ := limits[1].Allow(context.Background(), "dev-1")
		got = append(got, ok)
	}
	if want := []bool{true, true, false}; !slices.Equal(got, want) {
		t.Errorf("the node on time after 30 s: %v, want %v", got, want)
	}
}

// TestSendersReachTheNodeWithAConnection: a node asks for a sender's XMPP
// connection and the node that holds it delivers; with none anywhere, the
// answer is that there is none.
func TestSendersReachTheNodeWithAConnection(t *testing.T) {
	prefix := fmt.Sprintf("s%d", prefixes.Add(1))
	ctx := context.Background()
	var delivered atomic.Value
	var appeared atomic.Value
	holder, err := NewNode(ctx, Config{Conn: connect(t), Prefix: prefix, Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	here, err := NewSenders(ctx, holder, func(_ context.Context, sender string, payload []byte) error {
		if string(payload) == "refuse" {
			return errors.New("the app server did not ack")
		}
		delivered.Store(sender + ":" + string(payload))
		return nil
	}, func(string) {})
	if err != nil {
		t.Fatal(err)
	}
	defer here.Close()
	asker, err := NewNode(ctx, Config{Conn: connect(t), Prefix: prefix, Partitions: 1})
	if err != nil {
		t.Fatal(err)
	}
	there, err := NewSenders(ctx, asker, func(context.Context, string, []byte) error { return errors.New("no connection here") },
		func(sender string) { appeared.Store(sender) })
	if err != nil {
		t.Fatal(err)
	}
	defer there.Close()

	if has, err := there.Has(ctx, "123456789012"); err != nil || has {
		t.Fatalf("before any connection: %v, %v", has, err)
	}
	if err := there.Deliver(ctx, "123456789012", []byte("up"), time.Second); !errors.Is(err, ErrNoRoute) {
		t.Fatalf("deliver with no connection: %v, want ErrNoRoute", err)
	}
	if err := here.Serve("123456789012"); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the other node to hear of the connection", 20*time.Second, func() bool { return appeared.Load() == "123456789012" })
	if has, err := there.Has(ctx, "123456789012"); err != nil || !has {
		t.Fatalf("with a connection: %v, %v", has, err)
	}
	if err := there.Deliver(ctx, "123456789012", []byte("up"), 5*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := delivered.Load(); got != "123456789012:up" {
		t.Errorf("delivered %v", got)
	}
	if err := there.Deliver(ctx, "123456789012", []byte("refuse"), 5*time.Second); err == nil || errors.Is(err, ErrNoRoute) {
		t.Errorf("a delivery that failed there: %v", err)
	}
	here.Stop("123456789012")
	testwait.Until(t, "the connection to be gone", 20*time.Second, func() bool { has, _ := there.Has(ctx, "123456789012"); return !has })
	if err := here.Serve("not a sender"); err == nil {
		t.Error("a sender ID that is not digits was taken")
	}
}
