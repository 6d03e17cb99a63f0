// SPDX-License-Identifier: Apache-2.0

package store_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"tether/server/store"
	"tether/server/store/storetest"
)

// BenchmarkStats is the store's part of one scrape of /metrics with
// 100,000 messages queued on 1,000 devices: a walk of the message
// bucket's pages.
func BenchmarkStats(b *testing.B) {
	ctx := context.Background()
	st, err := store.Open(filepath.Join(b.TempDir(), "server.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	snd, err := st.AddSender(ctx, "bench", "", storetest.Hash("key"), storetest.T0)
	if err != nil {
		b.Fatal(err)
	}
	const devices, perDevice = 1000, store.MaxPendingPerApp
	for d := range devices {
		dev, err := st.AddDevice(ctx, store.Device{SecretHash: storetest.Hash(fmt.Sprint(d)), Created: storetest.T0})
		if err != nil {
			b.Fatal(err)
		}
		reg, err := st.Register(ctx, dev.ID, "com.example.bench", snd.ID, "", storetest.T0)
		if err != nil {
			b.Fatal(err)
		}
		msgs := make([]store.Message, perDevice)
		for i := range msgs {
			msgs[i] = store.Message{ID: fmt.Sprintf("0:%016d%%%08x", d*perDevice+i, d), Device: dev.ID, Token: reg.Token, App: reg.App,
				Sender: snd.ID, Data: map[string]string{"n": "0123456789"}, Sent: storetest.T0, Expiry: storetest.T0.Add(time.Hour)}
		}
		if _, err := st.Enqueue(ctx, msgs, nil); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		s, err := st.Stats(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if s.Messages != devices*perDevice {
			b.Fatalf("%d messages, want %d", s.Messages, devices*perDevice)
		}
	}
}
