// SPDX-License-Identifier: Apache-2.0

package storetest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"tether/server/store"
)

// BenchPending measures a session's read of its device's queue when a
// full window of messages is queued: "all" returns the 100, "skip-99"
// leaves out the 99 already in flight and returns the one that is not,
// as a session reads once the device has acked one message.
func BenchPending(b *testing.B, s store.Backend) {
	ctx := context.Background()
	snd, err := s.AddSender(ctx, "bench", "", Hash("key"), T0)
	if err != nil {
		b.Fatal(err)
	}
	dev, err := s.AddDevice(ctx, store.Device{SecretHash: Hash("secret"), Created: T0})
	if err != nil {
		b.Fatal(err)
	}
	reg, err := s.Register(ctx, dev.ID, "com.example.bench", snd.ID, "", T0)
	if err != nil {
		b.Fatal(err)
	}
	const queued = store.MaxPendingPerApp
	msgs := make([]store.Message, queued)
	inflight := make(map[string]bool, queued)
	for i := range msgs {
		id := fmt.Sprintf("m%d", i)
		msgs[i] = store.Message{ID: id, Device: dev.ID, Token: reg.Token, App: reg.App, Sender: snd.ID,
			Data: map[string]string{"temperature": "21.5", "unit": "C", "room": "kitchen"}, Sent: T0, Expiry: T0.Add(time.Hour)}
		if i < queued-1 {
			inflight[id] = true
		}
	}
	if _, err := s.Enqueue(ctx, msgs, nil); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name string
		skip func(id string) bool
		want int
	}{
		{"all", nil, queued},
		{"skip-99", func(id string) bool { return inflight[id] }, 1},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				got, _, err := s.Pending(ctx, dev.ID, 0, queued, bc.skip)
				if err != nil || len(got) != bc.want {
					b.Fatalf("Pending = %d messages, %v; want %d", len(got), err, bc.want)
				}
			}
		})
	}
}
