// SPDX-License-Identifier: Apache-2.0

package boltfile_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"tether/internal/disktest"
	serverstore "tether/server/store"
	"tether/store"
)

// Writing to a store on a full disk fails with an error that says so, and
// leaves the store as it was: it reads, takes writes again once there is
// room, and opens again, whole.
func TestAgentStoreFullDisk(t *testing.T) {
	dir := disktest.Small(t, "2m")
	path := filepath.Join(dir, "agent.db")
	s, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	const app = "com.example.app"
	if err := s.Register(store.Registration{App: app, Sender: "sender", Token: "token", Owner: 1000}); err != nil {
		t.Fatal(err)
	}
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	batch := func(n int) []store.Message {
		var msgs []store.Message
		for i := range 20 {
			msgs = append(msgs, store.Message{ID: fmt.Sprintf("m%d-%d", n, i), App: app, From: "sender", Token: "token",
				Data: map[string]string{"body": strings.Repeat("x", 1000)}, TTL: 86400, Received: t0, Expires: t0.Add(24 * time.Hour)})
		}
		return msgs
	}
	if _, _, err := s.AddMessages(batch(0), store.Quota{}); err != nil {
		t.Fatal(err)
	}
	filler := disktest.Fill(t, dir)

	failed := batch(untilRefused(t, 1000, func(n int) error {
		_, _, err := s.AddMessages(batch(n), store.Quota{})
		return err
	}))
	held := inbox(t, s, app)
	if slices.Contains(held, failed[0].ID) {
		t.Errorf("a message of the failed batch is held")
	}
	if !slices.Contains(held, "m0-0") {
		t.Errorf("the store lost m0-0: %v", held)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	outcomes, _, err := s.AddMessages(failed, store.Quota{})
	if err != nil {
		t.Fatalf("with room again: %v", err)
	}
	if outcomes[0] != store.Stored {
		t.Errorf("the failed batch's first message was %v before, now %v", failed[0].ID, outcomes[0])
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = store.Open(path); err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if held := inbox(t, s, app); !slices.Contains(held, failed[0].ID) || !slices.Contains(held, "m0-0") {
		t.Errorf("after reopening, held: %v", held)
	}
}

// untilRefused writes batches 1, 2, ... to a store on a full disk until
// one is refused, checks that the refusal says the disk is full, and
// returns that batch's number.
func untilRefused(t *testing.T, tries int, write func(batch int) error) int {
	t.Helper()
	for n := 1; n <= tries; n++ {
		err := write(n)
		if err == nil {
			continue // it fitted in room the store had inside its file
		}
		t.Logf("batch %d: %v", n, err)
		if !errors.Is(err, syscall.ENOSPC) {
			t.Errorf("error %q does not say the disk is full", err)
		}
		return n
	}
	t.Fatalf("%d batches fitted on a full disk", tries)
	return 0
}

func inbox(t *testing.T, s *store.Store, app string) []string {
	t.Helper()
	msgs, err := s.Inbox(app, 0, 100000, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range msgs {
		ids = append(ids, m.ID)
	}
	return ids
}

func TestServerStoreFullDisk(t *testing.T) {
	ctx := context.Background()
	dir := disktest.Small(t, "2m")
	path := filepath.Join(dir, "server.db")
	s, err := serverstore.Open(path, serverstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	t0 := time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)
	key := [32]byte{1}
	snd, err := s.AddSender(ctx, "backend", "", key[:], t0)
	if err != nil {
		t.Fatal(err)
	}
	var regs []serverstore.Registration
	for d := range 40 {
		secret := [32]byte{byte(d)}
		dev, err := s.AddDevice(ctx, serverstore.Device{SecretHash: secret[:], Created: t0})
		if err != nil {
			t.Fatal(err)
		}
		reg, err := s.Register(ctx, dev.ID, "com.example.app", snd.ID, "", t0)
		if err != nil {
			t.Fatal(err)
		}
		regs = append(regs, reg)
	}
	// Ten messages for each device in each batch: well under GCM's cap of
	// 100 for each app on each device, for as long as the disk lasts.
	batch := func(n int) []serverstore.Message {
		var msgs []serverstore.Message
		for i := range 10 {
			reg := regs[n%len(regs)]
			msgs = append(msgs, serverstore.Message{ID: fmt.Sprintf("m%d-%d", n, i), Device: reg.Device, Token: reg.Token,
				App: reg.App, Sender: snd.ID, Data: map[string]string{"body": strings.Repeat("x", 1000)},
				Sent: t0, Expiry: t0.Add(24 * time.Hour)})
		}
		return msgs
	}
	if _, err := s.Enqueue(ctx, batch(0), nil); err != nil {
		t.Fatal(err)
	}
	filler := disktest.Fill(t, dir)

	failed := batch(untilRefused(t, 300, func(n int) error {
		_, err := s.Enqueue(ctx, batch(n), nil)
		return err
	}))
	pending := func() []string {
		msgs, _, err := s.Pending(ctx, failed[0].Device, 0, 0, nil)
		if err != nil {
			t.Fatal(err)
		}
		var ids []string
		for _, m := range msgs {
			ids = append(ids, m.ID)
		}
		return ids
	}
	if slices.Contains(pending(), failed[0].ID) {
		t.Error("a message of the failed batch is queued")
	}
	if msgs, _, err := s.Pending(ctx, regs[0].Device, 0, 0, nil); err != nil || len(msgs) == 0 || msgs[0].ID != "m0-0" {
		t.Errorf("the store lost m0-0: %v, %v", msgs, err)
	}

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	if queued, err := s.Enqueue(ctx, failed, nil); err != nil || !queued[0] {
		t.Fatalf("with room again: %v, %v", queued, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = serverstore.Open(path, serverstore.Options{}); err != nil {
		t.Fatalf("reopen: %v", err)
	}
	if !slices.Contains(pending(), failed[0].ID) {
		t.Errorf("after reopening, %s is not queued", failed[0].ID)
	}
}
