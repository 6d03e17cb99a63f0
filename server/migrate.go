// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"tether/server/store"
)

// MigrateConfig says what Migrate moves where.
type MigrateConfig struct {
	// DataDir holds the single-node store to move; no server may run on it.
	DataDir string
	// NATS is the cluster to move it into.
	NATS NATSConfig
	// Now is the clock for what expires; default time.Now.
	Now func() time.Time
}

// Migrated counts what Migrate moved.
type Migrated struct {
	Senders       int `json:"senders"`
	Devices       int `json:"devices"`
	Registrations int `json:"registrations"`
	Messages      int `json:"messages"`
	Upstream      int `json:"upstream"`
	Seen          int `json:"upstream_ids_seen"`
	TopicMessages int `json:"topic_messages"`
	EnrollKeys    int `json:"enrollment_keys"`
	Certificates  int `json:"certificates"`
}

// Migrate moves a single-node store into a cluster's state: senders,
// devices with their certificate bindings, enrollment keys, registrations with their topics, queued messages and notices,
// upstream messages and the IDs seen lately, and topic messages, each with
// the time it has left. It changes nothing in the store, and can run again
// after a crash halfway: what is in the cluster already stays.
func Migrate(ctx context.Context, cfg MigrateConfig) (Migrated, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	path := filepath.Join(cfg.DataDir, storeFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return Migrated{}, fmt.Errorf("migrate: %s: %w", cfg.DataDir, ErrNoStore)
	}
	src, err := store.Open(path, store.Options{LockTimeout: 500 * time.Millisecond})
	if errors.Is(err, store.ErrLocked) {
		return Migrated{}, fmt.Errorf("migrate: stop the server on %s first: %w", cfg.DataDir, err)
	}
	if err != nil {
		return Migrated{}, fmt.Errorf("migrate: %w", err)
	}
	defer src.Close()
	dst, err := openAdminCluster(ctx, cfg.NATS)
	if err != nil {
		return Migrated{}, fmt.Errorf("migrate: %w", err)
	}
	defer dst.close()
	var n Migrated
	now := cfg.Now()
	err = src.Export(ctx, func(r store.Record) error {
		if err := dst.st.Import(ctx, r, now); err != nil {
			return err
		}
		switch {
		case r.Sender != nil:
			n.Senders++
		case r.Device != nil:
			n.Devices++
		case r.Registration != nil:
			n.Registrations++
		case r.Queue != nil:
			n.Messages += len(r.Queue.Messages)
		case r.Upstream != nil:
			n.Upstream++
		case r.Seen != nil:
			n.Seen++
		case r.TopicMessage != nil:
			n.TopicMessages++
		case r.EnrollKey != nil:
			n.EnrollKeys++
		case r.Cert != nil:
			n.Certificates++
		}
		return nil
	})
	if err != nil {
		return n, fmt.Errorf("migrate: %w", err)
	}
	return n, nil
}
