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
// after.
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
func (r *Rates) read(ctx context.Context, key string) (bucket, uint64, error) {
	now := r.now()
	b := bucket{Tokens: r.perMinute, At: now}
	m, err := r.stream.GetLastMsgForSubject(ctx, r.key(key))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return b, 0, nil
	}
	if err != nil {
		return b, 0, err
	}
	if json.Unmarshal(m.Data, &b) != nil {
		b = bucket{Tokens: r.perMinute, At: now}
	}
	if elapsed := now.Sub(b.At); elapsed > 0 {
		b.Tokens = min(r.perMinute, b.Tokens+elapsed.Minutes()*r.perMinute)
		b.At = now
	}
	return b, m.Sequence, nil
}

// Allow takes one event for key, or reports that key is over its rate.
func (r *Rates) Allow(ctx context.Context, key string) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		b, seq, err := r.read(ctx, key)
		if err != nil {
			return true, fmt.Errorf("read rate of %s: %w", r.subject, err)
		}
		if b.Tokens < 1 {
			return false, nil
		}
		b.Tokens--
		msg := nats.NewMsg(r.key(key))
		msg.Data = mustJSON(b)
		msg.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(seq, 10))
		msg.Header.Set(jetstream.MsgTTLHeader, "120s")
		_, err = r.js.PublishMsg(ctx, msg)
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
	b, _, err := r.read(ctx, key)
	if err != nil {
		return false, fmt.Errorf("read rate of %s: %w", r.subject, err)
	}
	return b.Tokens < 1, nil
}
