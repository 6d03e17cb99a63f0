// SPDX-License-Identifier: Apache-2.0

package natsstore_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"tether/server/natsstore"
	"tether/server/store"
)

// senderAndDevice adds a sender and a device to s.
func senderAndDevice(t *testing.T, s *natsstore.Store, now time.Time) (store.Sender, store.Device) {
	t.Helper()
	snd, err := s.AddSender(context.Background(), "s", "", []byte("key hash"), now)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := s.AddDevice(context.Background(), store.Device{SecretHash: []byte("secret hash"), Created: now})
	if err != nil {
		t.Fatal(err)
	}
	return snd, dev
}

// TestLegacyUpstreamMoved: an upstream message that a server before lanes
// queued (up.DEVICE.HASH.RECEIVED) is moved into its lane when its shard's
// partition is taken, once, and is then read as any other.
func TestLegacyUpstreamMoved(t *testing.T) {
	s, _ := open(t, 2)
	ctx := context.Background()
	now := time.Now()
	snd, dev := senderAndDevice(t, s, now)
	shard := s.ShardOf(dev.ID)
	old := store.Upstream{Device: dev.ID, App: "com.example.app", Sender: snd.ID, Token: "t", ID: "before", Received: now, Expiry: now.Add(time.Hour)}
	body, err := json.Marshal(old)
	if err != nil {
		t.Fatal(err)
	}
	js, err := jetstream.New(connect(t))
	if err != nil {
		t.Fatal(err)
	}
	subject := fmt.Sprintf("%s.%d.up.%s.0123456789abcdef0123456789abcdef.%d", s.Prefix(), shard, dev.ID, now.UnixNano())
	if _, err := js.Publish(ctx, subject, body); err != nil {
		t.Fatal(err)
	}

	for i, want := range []int{1, 0} {
		if moved, err := s.MoveLegacyUpstream(ctx, shard); err != nil || moved != want {
			t.Fatalf("move %d: %d, %v; want %d", i+1, moved, err, want)
		}
	}
	lane, err := s.NextUpstream(ctx, dev.ID, snd.ID, 0, 10)
	if err != nil || len(lane) != 1 || lane[0].ID != "before" {
		t.Fatalf("lane after the move: %+v, %v", lane, err)
	}
	var queued []store.Upstream
	if err := s.EachUpstreamIn(ctx, shard, func(u store.Upstream) error { queued = append(queued, u); return nil }); err != nil {
		t.Fatal(err)
	}
	if len(queued) != 1 || queued[0].Seq != lane[0].Seq {
		t.Errorf("queue after the move: %+v, want the message at %d", queued, lane[0].Seq)
	}
	if err := s.DeleteUpstream(ctx, lane[0].Seq); err != nil {
		t.Fatal(err)
	}
	if lane, err := s.NextUpstream(ctx, dev.ID, snd.ID, 0, 10); err != nil || len(lane) != 0 {
		t.Errorf("lane after delivery: %+v, %v", lane, err)
	}
}
