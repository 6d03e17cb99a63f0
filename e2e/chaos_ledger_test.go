// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"time"
)

// An in-process ledger, listener and upstream sender, for tests that
// restart the agent while messages stream (TestSIGTERMDuringBurstLosesNothing).
// The chaos test kills its app too, so its app is a process of its own
// (chaos_app_test.go).

// chaosLedger accounts for every message of a run that restarts the
// agent, kept by a listener inside the test process.
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
