package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"
)

// The crash run's downstream stream mixes the three ways GCM lets a stored
// message end: most must be delivered, some share a collapse key (a newer
// one may replace them), some live one second (they may expire).
type messageKind int

const (
	plain messageKind = iota
	collapsing
	shortLived
)

const chaosCollapseKey = "state"

func kindOf(seq int) messageKind {
	switch seq % 10 {
	case 3:
		return collapsing
	case 7:
		return shortLived
	}
	return plain
}

// chaosMessage is what the app server sends as message seq.
func chaosMessage(token string, seq int) map[string]any {
	msg := map[string]any{"to": token, "data": map[string]any{"seq": seq}}
	switch kindOf(seq) {
	case collapsing:
		msg["collapse_key"] = chaosCollapseKey
	case shortLived:
		msg["time_to_live"] = 1
	}
	return msg
}

// chaosLedger accounts for every message of a crash run.
type chaosLedger struct {
	mu sync.Mutex
	// accepted maps the message IDs the server answered with to their seq.
	accepted map[string]int
	// deliveries counts how often each message reached the app.
	deliveries map[string]int
	// seqOf maps each delivered message ID to the seq in its data, which
	// also covers messages whose send answer was lost in a crash.
	seqOf map[string]int
	// acked holds the messages whose ack the agent confirmed.
	acked map[string]bool
	// afterAck lists deliveries of messages already acked: must stay empty.
	afterAck []string
	// upAccepted holds upstream IDs the agent accepted from the app.
	upAccepted map[string]bool
}

func newLedger() *chaosLedger {
	return &chaosLedger{accepted: map[string]int{}, deliveries: map[string]int{}, seqOf: map[string]int{}, acked: map[string]bool{}, upAccepted: map[string]bool{}}
}

// undelivered lists what must have reached the app and has not: every
// accepted plain message, and under the collapse key the newest accepted
// message or one sent after it. Short-lived ones may have expired.
func (l *chaosLedger) undelivered() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	newestCollapsing := -1
	for id, seq := range l.accepted {
		switch kindOf(seq) {
		case plain:
			if l.deliveries[id] == 0 {
				out = append(out, id)
			}
		case collapsing:
			newestCollapsing = max(newestCollapsing, seq)
		}
	}
	if newestCollapsing >= 0 && !slices.ContainsFunc(slices.Collect(maps.Values(l.seqOf)), func(seq int) bool {
		return kindOf(seq) == collapsing && seq >= newestCollapsing
	}) {
		out = append(out, fmt.Sprintf("the newest message under collapse key %q (seq %d)", chaosCollapseKey, newestCollapsing))
	}
	return out
}

// listenThroughCrashes is a local app that keeps listening across agent
// restarts, acking every message and recording what the agent confirmed.
func listenThroughCrashes(sock string, l *chaosLedger, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		c, err := dialApp(sock)
		if err != nil {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		closed := make(chan struct{})
		go func() {
			select {
			case <-stop:
			case <-closed:
			}
			c.close()
		}()
		listenOnce(c, l)
		close(closed)
	}
}

func listenOnce(c *appConn, l *chaosLedger) {
	if _, err := c.call(map[string]any{"op": "listen", "app": app}); err != nil {
		time.Sleep(100 * time.Millisecond)
		return
	}
	c.conn.SetReadDeadline(time.Time{})
	pendingAcks := map[int]string{}
	seq := 1000
	for {
		line, err := c.r.ReadBytes('\n')
		if err != nil {
			return
		}
		var ev struct {
			ID      *int   `json:"id"`
			OK      bool   `json:"ok"`
			Event   string `json:"event"`
			Message struct {
				ID   string            `json:"message_id"`
				Data map[string]string `json:"data"`
			} `json:"message"`
		}
		if json.Unmarshal(bytes.TrimSpace(line), &ev) != nil {
			continue
		}
		switch {
		case ev.Event == "message":
			id := ev.Message.ID
			l.mu.Lock()
			l.deliveries[id]++
			if seq, err := strconv.Atoi(ev.Message.Data["seq"]); err == nil {
				l.seqOf[id] = seq
			}
			if l.acked[id] {
				l.afterAck = append(l.afterAck, id)
			}
			l.mu.Unlock()
			seq++
			pendingAcks[seq] = id
			ack, _ := json.Marshal(map[string]any{"id": seq, "op": "ack", "app": app, "ids": []string{id}})
			if c.writeLine(ack) != nil {
				return
			}
		case ev.ID != nil && ev.OK:
			if id, ok := pendingAcks[*ev.ID]; ok {
				l.mu.Lock()
				l.acked[id] = true
				l.mu.Unlock()
				delete(pendingAcks, *ev.ID)
			}
		}
	}
}

// sendThroughCrashes is an app server sending downstream until stopped,
// retrying a message until the server accepts it, as GCM clients do.
func sendThroughCrashes(t *testing.T, f *fleet, l *chaosLedger, stop <-chan struct{}) int {
	sent := 0
	for seq := 0; ; seq++ {
		for {
			select {
			case <-stop:
				return sent
			default:
			}
			r, err := f.srv.send(f.key, chaosMessage(f.token, seq))
			if err == nil && len(r.Results) == 1 && r.Results[0].MessageID != "" {
				l.mu.Lock()
				l.accepted[r.Results[0].MessageID] = seq
				l.mu.Unlock()
				sent++
				break
			}
			if err == nil && len(r.Results) == 1 && r.Results[0].Error != "Unavailable" && r.Results[0].Error != "InternalServerError" {
				t.Errorf("message %d refused for good: %+v", seq, r)
				return sent
			}
			time.Sleep(50 * time.Millisecond) // the server is down or busy: retry
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sendUpThroughCrashes is a local app sending upstream until stopped.
func sendUpThroughCrashes(sock, to string, l *chaosLedger, stop <-chan struct{}) {
	for n := 0; ; n++ {
		id := fmt.Sprintf("up-%d", n)
		for {
			select {
			case <-stop:
				return
			default:
			}
			c, err := dialApp(sock)
			if err == nil {
				_, err = c.call(map[string]any{"op": "send", "app": app, "to": to, "message_id": id, "data": map[string]any{"n": strconv.Itoa(n)}})
				c.close()
			}
			if err == nil {
				l.mu.Lock()
				l.upAccepted[id] = true
				l.mu.Unlock()
				break
			}
			time.Sleep(100 * time.Millisecond) // agent down, or 20 pending: retry
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func chaosSeed(t *testing.T) uint64 {
	if s := os.Getenv("TETHER_CHAOS_SEED"); s != "" {
		seed, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("TETHER_CHAOS_SEED: %v", err)
		}
		return seed
	}
	return uint64(time.Now().UnixNano())
}

// TestSurvivesKillNine streams messages both ways while the agent and the
// server are killed with SIGKILL at random moments and restarted. Every
// message the server accepted is accounted for: delivered to the app, or
// replaced under its collapse key, or expired by its TTL; no message is
// delivered after the app's ack was confirmed; every upstream message the
// agent accepted reaches the webhook. Rerun a failure with TETHER_CHAOS_SEED.
func TestSurvivesKillNine(t *testing.T) {
	seed := chaosSeed(t)
	t.Logf("TETHER_CHAOS_SEED=%d", seed)
	rng := rand.New(rand.NewPCG(seed, 0))
	f := newFleet(t)
	l := newLedger()

	stopListen, stopSend := make(chan struct{}), make(chan struct{})
	var listening, sending sync.WaitGroup
	var sent int
	listening.Add(1)
	go func() { defer listening.Done(); listenThroughCrashes(f.agent.sock, l, stopListen) }()
	sending.Add(2)
	go func() { defer sending.Done(); sent = sendThroughCrashes(t, f, l, stopSend) }()
	go func() { defer sending.Done(); sendUpThroughCrashes(f.agent.sock, f.sender, l, stopSend) }()

	kills := map[string]int{}
	for range 8 {
		time.Sleep(time.Duration(300+rng.IntN(1200)) * time.Millisecond)
		if rng.IntN(2) == 0 {
			f.agent.p.kill()
			kills["tetherd"]++
			time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
			f.agent.start()
		} else {
			f.srv.p.kill()
			kills["tether-server"]++
			time.Sleep(time.Duration(rng.IntN(500)) * time.Millisecond)
			f.srv.start()
		}
	}
	time.Sleep(500 * time.Millisecond)
	close(stopSend)
	sending.Wait() // what was in flight is now accepted or not: the ledger is final

	waitFor(t, "every accepted message to reach the app", 90*time.Second, func() error {
		if missing := l.undelivered(); len(missing) > 0 {
			return fmt.Errorf("%d accepted messages not delivered yet, e.g. %s", len(missing), missing[0])
		}
		return nil
	})
	waitFor(t, "every accepted upstream message to reach the webhook", 90*time.Second, func() error {
		l.mu.Lock()
		defer l.mu.Unlock()
		got := map[string]bool{}
		f.hook.mu.Lock()
		for _, b := range f.hook.got {
			if id, ok := b["message_id"].(string); ok {
				got[id] = true
			}
		}
		f.hook.mu.Unlock()
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
		t.Errorf("%d deliveries of messages the app had already acked, e.g. %s", len(l.afterAck), l.afterAck[0])
	}
	redelivered := 0
	for _, n := range l.deliveries {
		redelivered += n - 1
	}
	f.hook.mu.Lock()
	distinct := map[any]bool{}
	for _, b := range f.hook.got {
		distinct[b["message_id"]] = true
	}
	upDup := len(f.hook.got) - len(distinct)
	f.hook.mu.Unlock()
	unanswered := 0 // sends whose answer was lost in a crash, delivered anyway
	for id := range l.deliveries {
		if _, ok := l.accepted[id]; !ok {
			unanswered++
		}
	}
	// How each accepted message ended.
	var ended [3]struct{ accepted, delivered int }
	for id, seq := range l.accepted {
		k := kindOf(seq)
		ended[k].accepted++
		if l.deliveries[id] > 0 {
			ended[k].delivered++
		}
	}
	t.Logf("kills %v; downstream: %d accepted (%d distinct IDs): plain %d, all delivered; collapse key %d, %d delivered, %d replaced by a newer one; TTL 1 s %d, %d delivered, %d expired; "+
		"%d more delivered from sends whose answer was lost; %d redelivered before an ack, 0 after; upstream: %d accepted, all at the webhook, %d repeated webhook posts",
		kills, sent, len(l.accepted), ended[plain].accepted,
		ended[collapsing].accepted, ended[collapsing].delivered, ended[collapsing].accepted-ended[collapsing].delivered,
		ended[shortLived].accepted, ended[shortLived].delivered, ended[shortLived].accepted-ended[shortLived].delivered,
		unanswered, redelivered, len(l.upAccepted), upDup)
	if sent == 0 || len(l.upAccepted) == 0 {
		t.Fatal(errors.New("the run sent nothing: the test proved nothing"))
	}
}
