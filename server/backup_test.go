// SPDX-License-Identifier: Apache-2.0

package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"tether/internal/testwait"
	"tether/server/store"
)

// postSend sends one message through the HTTP API and returns its ID once
// the server answered 200; it is for goroutines, which must not Fatal.
func postSend(base, key string, req map[string]any) (string, error) {
	body, _ := json.Marshal(req)
	hreq, err := http.NewRequest(http.MethodPost, base+"/gcm/send", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	hreq.Header.Set("Authorization", "key="+key)
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var ans sendResponse
	if resp.StatusCode != http.StatusOK || json.Unmarshal(raw, &ans) != nil || ans.Success != 1 {
		return "", fmt.Errorf("send: %s %s", resp.Status, raw)
	}
	return ans.Results[0].MessageID, nil
}

// offlineDevice checks in a device, registers the app for sender and
// disconnects, so that what is sent to the token it returns waits in the
// store.
func offlineDevice(ts *testServer, sender string) (*device, string) {
	ts.t.Helper()
	d := ts.checkIn()
	token := d.register(app, sender)
	d.conn.Close()
	return d, token
}

// TestBackupUnderLoad: a backup taken through the admin socket while
// sends go on is a whole bbolt file (mode 0600) that passes bbolt's
// check and holds every message acknowledged before it began; restored
// into a data directory, it serves them to their devices.
func TestBackupUnderLoad(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.NATS = nil })
	snd := ts.addSender("")
	// Offline devices, so that what is sent waits in the store.
	const devices = 3
	var devs []*device
	var tokens []string
	for range devices {
		d, token := offlineDevice(ts, snd.ID)
		tokens = append(tokens, token)
		devs = append(devs, d)
	}
	_, loadToken := offlineDevice(ts, snd.ID)

	var mu sync.Mutex
	acked := map[string]string{} // message ID → token, once answered 200
	var load atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, token := range tokens {
		wg.Go(func() {
			// Below the cap of messages waiting per app, which would drop
			// the oldest.
			for n := range store.MaxPendingPerApp - 10 {
				select {
				case <-stop:
					return
				default:
				}
				id, err := postSend(ts.base, snd.ServerKey, map[string]any{"to": token, "data": map[string]string{"n": fmt.Sprint(n)}, "time_to_live": 3600})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				acked[id] = token
				mu.Unlock()
			}
		})
	}
	// Collapsible messages replace each other: writes that go on without
	// end, and without reaching a cap.
	for range 2 {
		wg.Go(func() {
			for n := 0; ; n++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := postSend(ts.base, snd.ServerKey, map[string]any{"to": loadToken, "collapse_key": fmt.Sprint("k", n%store.MaxCollapseKeysPerApp)}); err != nil {
					t.Error(err)
					return
				}
				load.Add(1)
			}
		})
	}
	testwait.Until(t, "sends acknowledged", 60*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= devices*20 && load.Load() > 20
	})
	mu.Lock()
	before := maps.Clone(acked)
	mu.Unlock()

	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	out := filepath.Join(t.TempDir(), "backup.db")
	loadAtStart := load.Load()
	res, err := admin.Backup(context.Background(), ts.dir, out)
	loadAtEnd := load.Load()
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("backup of %d bytes; %d collapsible sends answered while it ran", res.Bytes, loadAtEnd-loadAtStart)
	if !res.Online || res.Path != out {
		t.Errorf("backup %+v, want online at %s", res, out)
	}
	fi, err := os.Stat(out)
	if err != nil || fi.Mode().Perm() != 0o600 || fi.Size() != res.Bytes {
		t.Fatalf("backup file: %v, %v; want mode 0600 and %d bytes", fi, err, res.Bytes)
	}
	checkBolt(t, out)

	// Restored: the copy is the store of a new data directory.
	dir := t.TempDir()
	raw, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, storeFile), raw, 0o600); err != nil {
		t.Fatal(err)
	}
	ts.stop()
	restored := startServerIn(t, dir, func(c *Config) { c.NATS = nil })
	for i, d := range devs {
		want := map[string]bool{}
		for id, token := range before {
			if token == tokens[i] {
				want[id] = true
			}
		}
		d = restored.reconnect(d)
		for len(want) > 0 {
			m := d.expectMessage()
			delete(want, m.ID)
			d.ack(m.ID)
		}
	}
}

// checkBolt opens a bbolt file read-only, as any bbolt tool would, and
// runs bbolt's consistency check on it.
func checkBolt(t *testing.T, path string) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		var errs []error
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return errors.Join(errs...)
	})
	if err != nil {
		t.Errorf("bbolt check of %s: %v", path, err)
	}
}

// TestBackupAndCompactStopped: with no server running, backup copies the
// store directly and compaction gives back the space deletions left;
// while one runs, compaction is refused and changes nothing. A backup is
// never written over the store itself.
func TestBackupAndCompactStopped(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.NATS = nil })
	snd := ts.addSender("")
	d, token := offlineDevice(ts, snd.ID)
	big := strings.Repeat("x", 3000)
	var ids []string
	for range 60 {
		ids = append(ids, ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"big": big}}))
	}
	if _, err := Compact(context.Background(), ts.dir); !errors.Is(err, ErrServing) {
		t.Errorf("compaction while serving: %v", err)
	}
	// Delivered and acked: their pages are free, inside the file.
	d = ts.reconnect(d)
	for range ids {
		d.ack(d.expectMessage().ID)
	}
	testwait.Until(t, "acks stored", 30*time.Second, func() bool {
		return pendingCount(t, ts, d.id) == 0
	})
	ts.stop()

	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "offline.db")
	res, err := admin.Backup(context.Background(), ts.dir, out)
	if err != nil || res.Online {
		t.Fatalf("offline backup: %+v, %v", res, err)
	}
	if _, err := admin.Backup(context.Background(), ts.dir, filepath.Join(ts.dir, storeFile)); err == nil {
		t.Error("a backup over the store itself was taken")
	}
	admin.Close()
	checkBolt(t, out)

	c, err := Compact(context.Background(), ts.dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("compacted from %d to %d bytes", c.Before, c.After)
	if c.After >= c.Before {
		t.Errorf("compaction from %d to %d bytes, want smaller", c.Before, c.After)
	}
	if fi, err := os.Stat(filepath.Join(ts.dir, storeFile)); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("compacted store: %v, %v; want mode 0600", fi, err)
	}
	if _, err := Compact(context.Background(), t.TempDir()); !errors.Is(err, ErrNoStore) {
		t.Errorf("compaction of an empty directory: %v", err)
	}
	// The compacted store serves: the sender's key still sends.
	again := startServerIn(t, ts.dir, func(c *Config) { c.NATS = nil })
	again.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"after": "compaction"}})
}

// pendingCount is the number of messages queued for device.
func pendingCount(t *testing.T, ts *testServer, device string) int {
	t.Helper()
	msgs, _, err := ts.store.Pending(context.Background(), device, 0, 1000, nil)
	if err != nil {
		t.Fatal(err)
	}
	return len(msgs)
}
