// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tether/internal/disktest"
	"tether/wire"
)

// TestEarlyHandOffAheadOfItsCommit: a message goes to a listening app
// while the transaction that stores it runs. When that commit fails (a
// full disk) the server has no ack, the session ends, and the message
// comes again in the next session, stored this time: the app has it once
// or twice (a copy handed over early is taken back only if the listener
// has not had it yet), never not at all.
func TestEarlyHandOffAheadOfItsCommit(t *testing.T) {
	dir := disktest.Small(t, "2m")
	p := newPeer(t)
	d := newDevice(t, filepath.Join(dir, "agent.db"), p.url, nil)
	registerDirect(t, d, app, sender, alice.UID)
	d.start()
	pc := p.nextConn(t)
	l, _ := listen(t, d.agent, alice, app)
	filler := disktest.Fill(t, dir)

	// Messages the app does not ack pile up in the store until a commit
	// needs a page the disk has no room for.
	big := strings.Repeat("x", 2000)
	failed := ""
	for i := 0; failed == ""; i++ {
		if i == 2000 {
			t.Fatal("2000 messages stored on a full disk")
		}
		id := fmt.Sprintf("m%04d", i)
		pc.send("", wire.Message{ID: id, App: app, From: sender, Token: peerToken(app, sender), Data: map[string]string{"n": id, "pad": big}, TTL: 3600})
		select {
		case f := <-pc.frames:
			if f.Type != wire.TypeAck {
				t.Fatalf("the agent sent %s, want an ack", f.Type)
			}
			if m := l.nextMessage(t); m.ID != id {
				t.Fatalf("the app got %q, want %q", m.ID, id)
			}
		case <-pc.done:
			failed = id // the server had no ack
		case <-time.After(waitLimit):
			t.Fatalf("no ack of %s and the session stays open", id)
		}
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	pc = p.nextConn(t)
	pc.message(failed, app, sender, 3600)
	if ids := pc.waitAck(t); len(ids) != 1 || ids[0] != failed {
		t.Fatalf("acked %v, want %s", ids, failed)
	}
	if m := l.nextMessage(t); m.ID != failed {
		t.Fatalf("after the failed commit the app got %q, want %s", m.ID, failed)
	}
	l.ack(t, d.agent, alice, app, failed)
}

// TestQuotaCountsWhatWaits: an app's listener holds a full window of
// messages it has not acked yet, and as many again wait behind them, on a
// quota of one window per app. Nothing is dropped: the quota bounds what
// waits for an app, not what flows to one that keeps up. Past the bound
// the oldest waiting message goes, never one the app has.
func TestQuotaCountsWhatWaits(t *testing.T) {
	_, d, pc := onlineWithApp(t, nil, func(c *Config) { c.Quota.AppMessages = Window })
	l, _ := listen(t, d.agent, alice, app)
	send := func(from, to int) {
		for i := from; i < to; i++ {
			pc.message(fmt.Sprintf("m%03d", i), app, sender, 3600)
		}
		pc.waitAcked(t, to-from)
	}
	send(0, Window) // the listener has them all
	for i := range Window {
		if m := l.nextMessage(t); m.ID != fmt.Sprintf("m%03d", i) {
			t.Fatalf("delivery %d: %q", i, m.ID)
		}
	}
	send(Window, 2*Window) // they wait behind the window
	send(2*Window, 2*Window+1)
	for i := range Window {
		l.ack(t, d.agent, alice, app, fmt.Sprintf("m%03d", i))
	}
	// m100 went for m200; the app hears of it, then has the rest.
	if e := l.next(t); e != deleted(1) {
		t.Fatalf("after its window the app got %#v, want deleted_messages 1", e)
	}
	for i := Window + 1; i <= 2*Window; i++ {
		if m := l.nextMessage(t); m.ID != fmt.Sprintf("m%03d", i) {
			t.Fatalf("delivery %d: %q", i, m.ID)
		}
	}
}
