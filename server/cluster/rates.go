// SPDX-License-Identifier: Apache-2.0

package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"tether/server/internal/jsstream"
)

// Rates is a rate limit that holds across the nodes: perMinute events a
// minute per key, in bursts of up to as many, a token bucket per key kept
// in a JetStream stream and changed only if unchanged since it was read.
// A bucket left alone refills within a minute; its record expires soon
// after. Nodes whose clocks disagree make it looser, never stuck.
type Rates struct {
	js        jetstream.JetStream
	stream    jetstream.Stream
	subject   string
	perMinute float64
	now       func() time.Time
}

// bucket is a key's record.
type bucket struct {
	Tokens float64   `json:"tokens"`
	At     time.Time `json:"at"`
}

// NewRates prepares the limit named name (a subject token), in the
// cluster's stream of rates.
func NewRates(ctx context.Context, n *Node, name string, perMinute int, now func() time.Time) (*Rates, error) {
	st, err := jsstream.Ensure(ctx, n.js, jetstream.StreamConfig{
		Name: strings.ToUpper(n.cfg.Prefix) + "_RATES", Description: "Tether connection server rate limits (docs/scaling.md)",
		Subjects: []string{n.cfg.Prefix + ".rates.>"}, Storage: jetstream.FileStorage, Replicas: n.cfg.Replicas,
		MaxMsgsPerSubject: 1, AllowDirect: true, AllowMsgTTL: true,
	}, n.log)
	if err != nil {
		return nil, fmt.Errorf("rate limit %s: %w", name, err)
	}
	return &Rates{js: n.js, stream: st, subject: n.cfg.Prefix + ".rates." + name + ".", perMinute: float64(perMinute), now: now}, nil
}

func (r *Rates) key(key string) string {
	h := sha256.Sum256([]byte(key))
	return r.subject + hex.EncodeToString(h[:16])
}

// read returns key's bucket, refilled to now, and its record's sequence.
// ahead says the record was written by a node whose clock is ahead of
// this one's: the bucket refills from now on, on this node's clock, so
// that clocks that disagree make the limit looser, never stop it
// refilling; a refusal writes that down (Allow).
func (r *Rates) read(ctx context.Context, key string) (b bucket, seq uint64, ahead bool, err error) {
	now := r.now()
	b = bucket{Tokens: r.perMinute, At: now}
	m, err := r.stream.GetLastMsgForSubject(ctx, r.key(key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return b, 0, false, nil
	}
	if err != nil {
		return b, 0, false, err
	}
	if json.Unmarshal(m.Data, &b) != nil {
		b = bucket{Tokens: r.perMinute, At: now}
	}
	ahead = b.At.After(now)
	b.Tokens = min(r.perMinute, b.Tokens+max(now.Sub(b.At), 0).Minutes()*r.perMinute)
	b.At = now
	return b, m.Sequence, ahead, nil
}

// write stores b as key's bucket if its record is still at seq.
func (r *Rates) write(ctx context.Context, key string, b bucket, seq uint64) error {
	msg := nats.NewMsg(r.key(key))
	msg.Data = mustJSON(b)
	msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seq, 10))
	msg.Header.Set(jetstream.MsgTTLHeader, "120s")
	_, err := r.js.PublishMsg(ctx, msg)
	return err
}

// Allow takes one event for key, or reports that key is over its rate.
func (r *Rates) Allow(ctx context.Context, key string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		b, seq, ahead, err := r.read(ctx, key)
		if err != nil {
			return true, fmt.Errorf("read rate of %s: %w", r.subject, err)
		}
		if b.Tokens < 1 {
			if ahead {
				r.write(ctx, key, b, seq) // a conflict means another node wrote: fine
			}
			return false, nil
		}
		b.Tokens--
		err = r.write(ctx, key, b, seq)
		var apiErr *jetstream.APIError
		switch {
		case err == nil:
			return true, nil
		case errors.As(err, &apiErr) && (apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence || apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant):
			continue // another node took one meanwhile
		}
		return true, fmt.Errorf("count rate of %s: %w", r.subject, err)
	}
}

// Exhausted reports, without taking an event, whether key is over its rate.
func (r *Rates) Exhausted(ctx context.Context, key string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	b, _, _, err := r.read(ctx, key)
	if err != nil {
		return false, fmt.Errorf("read rate of %s: %w", r.subject, err)
	}
	return b.Tokens < 1, nil
}
