// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"errors"
	"reflect"
	"slices"
	"testing"

	"tether/ipc"
	"tether/wire"
)

func TestTopicSubscriptions(t *testing.T) {
	_, d, pc := onlineWithApp(t, nil)
	d.waitConnected(t)
	if err := d.agent.SubscribeTopic(bg, alice, app, sender, "weather.alerts"); err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	var sub wire.Subscribe
	if err := pc.waitFor(t, wire.TypeSubscribe).Decode(&sub); err != nil || sub != (wire.Subscribe{App: app, Sender: sender, Topic: "weather.alerts"}) {
		t.Fatalf("subscribe frame %+v, %v", sub, err)
	}
	if err := d.agent.UnsubscribeTopic(bg, alice, app, sender, "weather.alerts"); err != nil {
		t.Fatalf("unsubscribe: %v", err)
	}
	tests := []struct {
		name   string
		c      ipc.Caller
		sender string
		topic  string
		want   error
	}{
		{"bad topic name", alice, sender, "no spaces", ipc.ErrInvalidArgument},
		{"another user", bob, sender, "t", ipc.ErrPermission},
		{"unregistered sender", alice, "999", "t", ipc.ErrNotRegistered},
	}
	for _, tt := range tests {
		if err := d.agent.SubscribeTopic(bg, tt.c, app, tt.sender, tt.topic); !errors.Is(err, tt.want) {
			t.Errorf("%s: %v, want %v", tt.name, err, tt.want)
		}
	}
}

// A notice the server repeats, because its ack was lost, is applied once
// and acked every time.
func TestNoticesAppliedOnceAckedAlways(t *testing.T) {
	_, d, pc := onlineWithApp(t, nil)
	d.waitConnected(t)
	l, _ := listen(t, d.agent, alice, app)

	refresh := wire.TokenRefresh{ID: "n-1", App: app, Sender: sender, Token: "tok-rotated"}
	dropped := wire.DeletedMessages{ID: "n-2", App: app, Count: 101}
	for range 2 {
		pc.send("n-1", refresh)
		if ids := pc.waitAck(t); !slices.Equal(ids, []string{"n-1"}) {
			t.Fatalf("token refresh acked with %v", ids)
		}
		pc.send("n-2", dropped)
		if ids := pc.waitAck(t); !slices.Equal(ids, []string{"n-2"}) {
			t.Fatalf("deleted-messages notice acked with %v", ids)
		}
	}
	if token, err := d.store.Token(app, sender); err != nil || token != "tok-rotated" {
		t.Fatalf("stored token %q, %v", token, err)
	}
	// A message sent to the new token after the notices: the listener
	// sees each notice once, then the message, with its notification and
	// topic.
	pc.send("", wire.Message{ID: "m-1", App: app, From: sender, Token: "tok-rotated", TTL: 60,
		Data: map[string]string{"k": "v"}, Notification: map[string]string{"title": "Hi"}, Topic: "news"})
	want := []any{tokenRefreshed{sender, "tok-rotated"}, deleted(101)}
	for _, w := range want {
		if got := l.next(t); !reflect.DeepEqual(got, w) {
			t.Fatalf("listener got %#v, want %#v", got, w)
		}
	}
	m := l.nextMessage(t)
	if m.ID != "m-1" || m.Notification["title"] != "Hi" || m.Topic != "news" {
		t.Fatalf("message %+v", m)
	}
}

// An app ID reserved in the configuration can be registered only by its
// user, or by root on its behalf.
func TestReservedAppOwner(t *testing.T) {
	p := newPeer(t)
	d := newDevice(t, "", p.url, nil, func(c *Config) {
		c.AppOwners = map[string]uint32{app: bob.UID, "org.example.kiosk": bob.UID}
	}).start()
	p.nextConn(t)
	d.waitConnected(t)
	if _, err := d.agent.Register(bg, alice, ipc.RegisterRequest{App: app, Sender: sender}); !errors.Is(err, ipc.ErrPermission) {
		t.Fatalf("another user registered a reserved app: %v", err)
	}
	if _, err := d.agent.Register(bg, bob, ipc.RegisterRequest{App: app, Sender: sender}); err != nil {
		t.Fatalf("its user: %v", err)
	}
	root := ipc.Caller{UID: 0}
	if _, err := d.agent.Register(bg, root, ipc.RegisterRequest{App: "org.example.kiosk", Sender: sender}); err != nil {
		t.Fatalf("root: %v", err)
	}
	if owner, err := d.store.Owner("org.example.kiosk"); err != nil || owner != bob.UID {
		t.Fatalf("root registered the kiosk app for uid %d, %v; want %d", owner, err, bob.UID)
	}
}
