// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"tether/internal/disktest"
	"tether/internal/logtest"
	"tether/ipc"
	"tether/wire"
)

// One sender sends 300 messages of 3.9 KB to an app that does not listen,
// on a device whose disk has 2 MiB: the app keeps its newest 100 and is
// told how many went, another vendor's app gets every message of its own
// meanwhile, and the session is never ended for want of room. (Without
// the quota the store outgrows the disk, as TestDiskFullAgent in e2e
// shows.)
func TestQuotaOnASmallDisk(t *testing.T) {
	disk := disktest.Small(t, "2m")
	p := newPeer(t)
	logs := &logtest.Buffer{}
	d := newDevice(t, filepath.Join(disk, "agent.db"), p.url, nil, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	registerDirect(t, d, app, sender, alice.UID)
	registerDirect(t, d, meter, "777", bob.UID)
	d.start()
	pc := p.nextConn(t)
	lm, _ := listen(t, d.agent, bob, meter)

	pad := strings.Repeat("x", 3900)
	var meterIDs []string
	for i := range 300 {
		pc.send("", wire.Message{ID: fmt.Sprintf("big-%03d", i), App: app, From: sender, Token: peerToken(app, sender),
			Data: map[string]string{"pad": pad}, TTL: 3600})
		if i%30 == 0 {
			id := fmt.Sprintf("meter-%03d", i)
			meterIDs = append(meterIDs, id)
			pc.send("", wire.Message{ID: id, App: meter, From: "777", Token: peerToken(meter, "777"), Data: map[string]string{"kwh": "1"}, TTL: 3600})
		}
	}
	pc.waitAcked(t, 300+len(meterIDs))
	for _, id := range meterIDs {
		m := lm.nextMessage(t)
		if m.ID != id {
			t.Fatalf("meter got %q, want %q", m.ID, id)
		}
		lm.ack(t, d.agent, bob, meter, m.ID)
	}

	l, _ := listen(t, d.agent, alice, app)
	if e := l.next(t); e != deleted(200) {
		if m, ok := e.(ipc.Message); ok {
			e = "message " + m.ID
		}
		t.Fatalf("the app that did not listen got %v first, want deleted_messages 200", e)
	}
	for i := 200; i < 300; i++ {
		if m := l.nextMessage(t); m.ID != fmt.Sprintf("big-%03d", i) {
			t.Fatalf("got %q, want big-%03d: the newest are kept, in order", m.ID, i)
		}
	}
	select {
	case <-p.conns:
		t.Fatalf("the agent connected again: the session ended\n%s", logs)
	default:
	}
	if strings.Contains(logs.String(), "ending the session") {
		t.Errorf("the session was ended:\n%s", logs)
	}
}

// Each Unix user may hold so many registrations; root, and the apps
// reserved for a user in the configuration, are not counted. Concurrent
// registrations do not slip past the limit.
func TestRegistrationsPerUser(t *testing.T) {
	const kiosk = "org.example.kiosk"
	p := newPeer(t)
	d := newDevice(t, "", p.url, nil, func(c *Config) {
		c.UserRegistrations = 3
		c.AppOwners = map[string]uint32{kiosk: alice.UID}
	}).start()
	p.nextConn(t)
	d.waitConnected(t)

	register := func(c ipc.Caller, app, sender string) error {
		_, err := d.agent.Register(bg, c, ipc.RegisterRequest{App: app, Sender: sender})
		return err
	}
	for i := range 3 {
		if err := register(alice, fmt.Sprintf("org.example.a%d", i), sender); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name        string
		c           ipc.Caller
		app, sender string
		want        error
	}{
		{"one more", alice, "org.example.a3", sender, ipc.ErrTooManyRegistrations},
		{"one more sender", alice, "org.example.a0", "777", ipc.ErrTooManyRegistrations},
		{"one the user has", alice, "org.example.a0", sender, nil},
		{"a reserved app", alice, kiosk, sender, nil},
		{"root, for itself", root, "org.example.root", sender, nil},
		{"root, for the user", root, "org.example.a0", "888", nil},
		{"another user", bob, "org.example.b0", sender, nil},
	}
	for _, tt := range tests {
		if err := register(tt.c, tt.app, tt.sender); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		} else if err != nil && !strings.Contains(err.Error(), "user 1000 has 3 registrations") {
			t.Errorf("%s: %q does not say how many the user has", tt.name, err)
		}
	}

	// Bob has one; of 10 at once, two more pass.
	var wg sync.WaitGroup
	errs := make(chan error, 10)
	for i := range 10 {
		wg.Go(func() { errs <- register(bob, fmt.Sprintf("org.example.c%d", i), sender) })
	}
	wg.Wait()
	close(errs)
	ok := 0
	for err := range errs {
		switch {
		case err == nil:
			ok++
		case !errors.Is(err, ipc.ErrTooManyRegistrations):
			t.Errorf("concurrent register: %v", err)
		}
	}
	if ok != 2 {
		t.Errorf("%d of 10 concurrent registrations passed, want 2", ok)
	}
}
