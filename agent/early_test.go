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

// TestEarlyHandOffAheadOfItsCommit: a listening app has a message while
// the transaction that stores it runs. When that commit fails (a full
// disk) the server has no ack, the session ends, and the message comes
// again in the next session, stored this time: a duplicate for the app,
// never a loss.
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
		if m := l.nextMessage(t); m.ID != id {
			t.Fatalf("the app got %q, want %q", m.ID, id)
		}
		select {
		case f := <-pc.frames:
			if f.Type != wire.TypeAck {
				t.Fatalf("the agent sent %s, want an ack", f.Type)
			}
		case <-pc.done:
			failed = id // the app had it, the server had no ack
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
		t.Fatalf("after the failed commit the app got %q, want %s again", m.ID, failed)
	}
	l.ack(t, d.agent, alice, app, failed)
}
