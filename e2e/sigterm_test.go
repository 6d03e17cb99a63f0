// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"tether/internal/testwait"
)

// TestSIGTERMDuringBurstLosesNothing stops the agent with SIGTERM, as
// systemd does, while messages stream both ways: app servers send
// downstream as fast as the server takes them and the local app sends
// upstream. The agent must exit 0 on its own, and once it is started again
// every message the server accepted reaches the app, no message the app's
// ack was confirmed for comes again, and every upstream message the agent
// accepted reaches the webhook.
func TestSIGTERMDuringBurstLosesNothing(t *testing.T) {
	f := newFleet(t)
	l := newLedger()
	stopListen, stopSend := make(chan struct{}), make(chan struct{})
	var listening, sending sync.WaitGroup
	listening.Add(1)
	go func() { defer listening.Done(); listenThroughCrashes(f.agent.sock, l, stopListen) }()

	// The senders keep at most window messages stored and not yet at the
	// app, under the server's cap of 100 per app (GCM's: one more drops
	// them all, which is the server's choice, not a loss).
	const senders, window = 4, 60
	outstanding := func() int {
		l.mu.Lock()
		defer l.mu.Unlock()
		n := 0
		for id := range l.accepted {
			if l.deliveries[id] == 0 {
				n++
			}
		}
		return n
	}
	var next sync.Mutex
	seq := 0
	sending.Add(senders + 1)
	for range senders {
		go func() {
			defer sending.Done()
			for {
				select {
				case <-stopSend:
					return
				default:
				}
				if outstanding() >= window {
					time.Sleep(5 * time.Millisecond) // the app, or the agent, is behind
					continue
				}
				next.Lock()
				n := seq
				seq++
				next.Unlock()
				r, err := f.srv.send(f.key, map[string]any{"to": f.token, "data": map[string]any{"seq": n}})
				if err != nil || len(r.Results) != 1 || r.Results[0].MessageID == "" {
					t.Errorf("the server refused message %d: %+v, %v", n, r, err)
					return
				}
				l.mu.Lock()
				l.accepted[r.Results[0].MessageID] = n
				l.mu.Unlock()
			}
		}()
	}
	go func() { defer sending.Done(); sendUpThroughCrashes(f.agent.sock, f.sender, l, stopSend) }()

	counts := func() (accepted, delivered, up int) {
		l.mu.Lock()
		defer l.mu.Unlock()
		return len(l.accepted), len(l.deliveries), len(l.upAccepted)
	}
	// SIGTERM in the thick of it: deliveries, acks and upstream sends are
	// being stored while the agent shuts down.
	testwait.For(t, "the burst to get going", 60*time.Second, func() error {
		if _, d, u := counts(); d < 50 || u < 3 {
			return fmt.Errorf("%d delivered, %d sent upstream", d, u)
		}
		return nil
	})
	a0, d0, u0 := counts()
	f.agent.p.stop() // fails the test unless tetherd exits 0 within 20 s
	a1, _, _ := counts()
	f.agent.start()
	testwait.For(t, "more of the burst after the restart", 60*time.Second, func() error {
		if a, d, u := counts(); a < a1+50 || d < d0+50 || u < u0+3 {
			return fmt.Errorf("%d accepted, %d delivered, %d upstream", a, d, u)
		}
		return nil
	})
	close(stopSend)
	sending.Wait() // the ledger of what was accepted is final

	testwait.For(t, "every accepted message to reach the app", 90*time.Second, func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		for id, n := range l.accepted {
			if l.deliveries[id] == 0 {
				return fmt.Errorf("message %s (seq %d) not delivered yet", id, n)
			}
		}
		return nil
	})
	testwait.For(t, "every accepted upstream message to reach the webhook", 90*time.Second, func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		f.hook.mu.Lock()
		defer f.hook.mu.Unlock()
		got := map[string]bool{}
		for _, b := range f.hook.got {
			if id, ok := b["message_id"].(string); ok {
				got[id] = true
			}
		}
		for id := range l.upAccepted {
			if !got[id] {
				return fmt.Errorf("upstream %s not at the webhook yet", id)
			}
		}
		return nil
	})
	close(stopListen)
	listening.Wait()

	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.afterAck) > 0 {
		t.Errorf("%d deliveries of messages whose ack was confirmed, e.g. %s", len(l.afterAck), l.afterAck[0])
	}
	// Every delivery is one the server accepted: nothing made up, and the
	// seq in its data is the one sent under its ID.
	for id, n := range l.seqOf {
		if sent, ok := l.accepted[id]; !ok || sent != n {
			t.Errorf("delivered %s with seq %d, which the server did not accept as such", id, n)
		}
	}
	redelivered := 0
	for _, n := range l.deliveries {
		redelivered += n - 1
	}
	t.Logf("SIGTERM after %d accepted, %d delivered, %d upstream; %d accepted while tetherd stopped; in all %d accepted and delivered (%d redelivered before an ack), %d upstream at the webhook",
		a0, d0, u0, a1-a0, len(l.accepted), redelivered, len(l.upAccepted))
}
