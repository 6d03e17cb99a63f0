// SPDX-License-Identifier: Apache-2.0

// Package jsstream creates the JetStream streams of a Tether cluster: on a
// cluster that is still electing its leaders it tries again, and a stream
// that asks for no replication in particular gets three replicas where the
// cluster can place them, one where it cannot.
//
// It is the one place both the state (package natsstore) and the nodes'
// coordination (package cluster) create streams; it knows nothing of what
// the streams hold.
package jsstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// JetStream's answers when it cannot place as many replicas as asked.
const (
	errCodeNoPeers              jetstream.ErrorCode = 10005
	errCodeReplicasNotSupported jetstream.ErrorCode = 10074
)

// tryTimeout bounds one request: a cluster still electing its meta leader
// lets a request wait for nothing.
const tryTimeout = 5 * time.Second

// Ensure returns the stream named in cfg, creating it if there is none.
// With cfg.Replicas 0 it asks for three replicas and settles for one,
// with a warning, on a cluster that cannot place three. It tries again
// until ctx ends.
func Ensure(ctx context.Context, js jetstream.JetStream, cfg jetstream.StreamConfig, log *slog.Logger) (jetstream.Stream, error) {
	auto := cfg.Replicas == 0
	if auto {
		cfg.Replicas = 3
	}
	for {
		try, cancel := context.WithTimeout(ctx, tryTimeout)
		st, err := js.Stream(try, cfg.Name)
		if err == nil {
			cancel()
			return st, nil
		}
		st, err = js.CreateStream(try, cfg)
		cancel()
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			log.Info("stream created", "stream", cfg.Name, "replicas", cfg.Replicas)
			return st, nil
		case auto && cfg.Replicas > 1 && errors.As(err, &apiErr) &&
			(apiErr.ErrorCode == errCodeReplicasNotSupported || apiErr.ErrorCode == errCodeNoPeers):
			log.Warn("fewer than three JetStream servers: the stream is not replicated", "stream", cfg.Name)
			cfg.Replicas = 1
			continue
		case errors.Is(err, jetstream.ErrStreamNameAlreadyInUse):
			continue // created meanwhile by another process: read it
		}
		log.Debug("stream not created yet; trying again", "stream", cfg.Name, "err", err)
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("create stream %s: %w", cfg.Name, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
