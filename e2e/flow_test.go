// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"
)

// appEvent is a line the agent pushes to a listening app.
type appEvent struct {
	Event   string `json:"event"`
	Count   int    `json:"count"`
	Message struct {
		ID string `json:"message_id"`
	} `json:"message"`
}

// A device that keeps up has 190 messages in flight (sent and not yet
// acked by its app) without a deleted_messages: the connection server's
// cap of 100 counts what waits for a device, not what flows to it, and
// the agent's quota of 100 counts what waits for an app, not what the
// app has. A device that is away loses its waiting messages past 100, as
// on GCM.
func TestFlowKeepsUpCapBitesAway(t *testing.T) {
	srv := startServer(t)
	sender, key := srv.addSender("thermo-backend", "")
	a := startAgent(t, srv.url())
	token := a.register(app, sender)
	c, err := dialApp(a.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	if _, err := c.call(map[string]any{"op": "listen", "app": app}); err != nil {
		t.Fatal(err)
	}
	events := make(chan appEvent, 1000)
	go func() {
		defer close(events)
		for _, line := range c.events {
			var ev appEvent
			if json.Unmarshal(line, &ev) == nil {
				events <- ev
			}
		}
		for {
			line, err := c.readLine(time.Minute)
			if err != nil {
				return
			}
			var ev appEvent
			if json.Unmarshal(line, &ev) == nil && ev.Event != "" {
				events <- ev
			}
		}
	}()
	nextMessage := func() string {
		t.Helper()
		select {
		case ev, ok := <-events:
			switch {
			case !ok:
				t.Fatal("the agent closed the app's connection")
			case ev.Event != "message":
				t.Fatalf("the app got %+v, want a message", ev)
			}
			return ev.Message.ID
		case <-time.After(30 * time.Second):
			t.Fatal("no message within 30 s")
		}
		return ""
	}
	ack := func(ids []string) {
		t.Helper()
		b, err := json.Marshal(map[string]any{"op": "ack", "app": app, "ids": ids, "id": 0})
		if err != nil {
			t.Fatal(err)
		}
		if err := c.writeLine(b); err != nil {
			t.Fatal(err)
		}
	}

	// The app takes the first 100, its window, and acks none yet: 90
	// more wait for it in the agent, all of them acked to the server.
	const inFlight = 190
	var sent []string
	for i := range inFlight {
		sent = append(sent, srv.mustSend(key, map[string]any{"to": token, "data": map[string]string{"n": fmt.Sprint(i)}}))
	}
	var got []string
	for range 100 {
		got = append(got, nextMessage())
	}
	ack(got)
	for range inFlight - 100 {
		got = append(got, nextMessage())
	}
	// The last ack waits for its answer, given once the ack is on disk,
	// so that stopping the agent next cannot undo it; acks may come on
	// any connection of the app's (docs/ipc.md).
	acker, err := dialApp(a.sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := acker.call(map[string]any{"op": "ack", "app": app, "ids": got[100:]}); err != nil {
		t.Fatalf("ack the last %d: %v", inFlight-100, err)
	}
	acker.close()
	if !sameIDs(got, sent) {
		t.Fatalf("the app got %d messages, not the %d sent", len(got), len(sent))
	}

	// Away, the 101st waiting message drops the 100 before it.
	a.p.stop()
	c.close()
	for i := range 101 {
		srv.mustSend(key, map[string]any{"to": token, "data": map[string]string{"away": fmt.Sprint(i)}})
	}
	a.start()
	msgs, _ := a.listen(app)
	if n := nextEvent(t, msgs, "deleted_messages"); n.Count != 100 {
		t.Errorf("deleted_messages counts %d, want 100", n.Count)
	}
	if d := next(t, msgs); d.Data["away"] != "100" {
		t.Errorf("after the notice the app got %v, want the last message", d.Data)
	}
}
