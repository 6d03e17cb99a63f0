// SPDX-License-Identifier: Apache-2.0

package client

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"tether/internal/dbustest"
	"tether/ipc"
	"tether/ipc/dbusdoor"
	"tether/ipc/ipctest"
	"tether/ipc/socketdoor"
)

// TestWebPushBothDoors registers with the Web Push sender and a VAPID key
// and receives a binary payload, through the socket door and through the
// D-Bus door on a real bus.
func TestWebPushBothDoors(t *testing.T) {
	const vapid = "BNcRdreALRFXTkOOUHK1EtK2wtaz5Ry4YfYCA_0QTpQtUbVlUls0VJXg7A8u-Ts1XbjhazAkj7I99e8QcYP7DkM"
	payload := []byte{0, 1, 2, 0x7f, 0x80, 0xfe, 0xff, '\n', '"'}
	for _, door := range []string{"socket", "dbus"} {
		t.Run(door, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			b := ipctest.New("push.example.test:443", "device-1")
			var cfg Config
			if door == "socket" {
				cfg.Socket = filepath.Join(t.TempDir(), "tetherd.sock")
				srv, err := socketdoor.New(socketdoor.Config{Path: cfg.Socket, Backend: b, Logger: ipctest.Logger(t)})
				if err != nil {
					t.Fatal(err)
				}
				ipctest.Serve(t, srv)
			} else {
				cfg.Bus = dbustest.Start(t).Address
				srv, err := dbusdoor.New(dbusdoor.Config{Bus: cfg.Bus, Backend: b, Logger: ipctest.Logger(t)})
				if err != nil {
					t.Fatal(err)
				}
				ipctest.Serve(t, srv)
			}
			c, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			reg, err := c.RegisterWith(ctx, app, ipc.WebPushSender, RegisterOptions{VAPID: vapid})
			if err != nil {
				t.Fatal(err)
			}
			if reg.Token == "" || reg.Endpoint != "https://push.example.test:443/up/"+reg.Token {
				t.Fatalf("registration %+v, want a token and its endpoint", reg)
			}
			if got := b.VAPID(app, ipc.WebPushSender); got != vapid {
				t.Fatalf("the agent got VAPID key %q, want %q", got, vapid)
			}
			// Without a key, a Web Push registration still has its endpoint.
			other, err := c.RegisterWith(ctx, app+".other", ipc.WebPushSender, RegisterOptions{})
			if err != nil || other.Endpoint == "" {
				t.Fatalf("registration without VAPID: %+v, %v", other, err)
			}
			_, err = c.RegisterWith(ctx, app, "123", RegisterOptions{VAPID: vapid})
			var ae *AgentError
			if !errors.As(err, &ae) || ae.Code != ipc.CodeInvalidArgument {
				t.Fatalf("a VAPID key for a numeric sender: %v, want InvalidArgument", err)
			}

			l, err := c.Listen(ctx, app)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			b.Push(ipc.Message{ID: "wp:1", App: app, From: ipc.WebPushSender, CollapseKey: "topic1", TTL: 60, Raw: payload})
			ev, err := l.Next(ctx)
			if err != nil {
				t.Fatal(err)
			}
			m := ev.Message
			if m == nil || !bytes.Equal(m.Raw, payload) || m.From != ipc.WebPushSender || m.CollapseKey != "topic1" || len(m.Data) != 0 {
				t.Fatalf("got %+v, want raw %q from %s", ev, payload, ipc.WebPushSender)
			}
		})
	}
}
