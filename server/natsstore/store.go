// SPDX-License-Identifier: Apache-2.0

package natsstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	mathrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/jetstreamext"

	"tether/server/internal/jsstream"
	"tether/server/store"
)

// Config configures Open.
type Config struct {
	// Conn is the connection to the NATS cluster. The store uses it and
	// does not close it.
	Conn *nats.Conn
	// Prefix names the streams (PREFIX_META, PREFIX_0, ...) and the
	// subjects (prefix.meta.>, prefix.0.>, ...); default "tether". Two
	// prefixes on one cluster are two independent states.
	Prefix string
	// Shards is the number of streams that devices are spread over. It is
	// fixed when the state is first created: a later Open reads it from
	// the state and ignores this. Default 8.
	Shards int
	// Replicas is the replication of new streams: 0 means 3 when the
	// cluster has three or more JetStream servers, else 1.
	Replicas int
	// Timeout bounds a call whose context has no deadline; default 10 s.
	Timeout time.Duration
	// OnUnavailable, when set, is called after a call failed for want of
	// JetStream for its whole timeout: the NATS server this process is
	// connected to may be cut off from the others.
	OnUnavailable func()
	Logger        *slog.Logger
	// Observer, when set, is told of each commit and of the messages the
	// rules drop.
	Observer store.Observer
}

// Store is the state of a Tether cluster in JetStream. Its methods are safe
// for concurrent use, by any number of server processes.
type Store struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	prefix   string
	shards   int
	replicas int
	timeout  time.Duration
	log      *slog.Logger
	// unavailable is Config.OnUnavailable, or nothing.
	unavailable func()
	obs         store.Observer

	// The changes of each device waiting to be written together
	// (updateDevice), and the devices being written.
	devMu      sync.Mutex
	devPending map[string][]*deviceOp
	devWriting map[string]bool
	writers    sync.WaitGroup
}

// SchemaVersion is written into a new state; Open refuses another.
const SchemaVersion = 1

// MaxShards bounds Config.Shards.
const MaxShards = 256

// meta is the record that says how the state is laid out.
type meta struct {
	Version int `json:"version"`
	Shards  int `json:"shards"`
}

var _ store.Backend = (*Store)(nil)

// Open makes the streams when there are none yet and returns the store.
// It waits, within ctx, for a cluster that is still electing its leaders.
func Open(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.Conn == nil {
		return nil, errors.New("open state in JetStream: no NATS connection")
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "tether"
	}
	if !validToken(cfg.Prefix) {
		return nil, fmt.Errorf("open state in JetStream: prefix %q: use letters, digits, - and _", cfg.Prefix)
	}
	if cfg.Shards == 0 {
		cfg.Shards = 8
	}
	if cfg.Shards < 1 || cfg.Shards > MaxShards {
		return nil, fmt.Errorf("open state in JetStream: %d shards, want 1 to %d", cfg.Shards, MaxShards)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("open state in JetStream: %w", err)
	}
	s := &Store{nc: cfg.Conn, js: js, prefix: cfg.Prefix, replicas: cfg.Replicas, timeout: cfg.Timeout, log: cfg.Logger, unavailable: cfg.OnUnavailable, obs: store.ObserverOrNone(cfg.Observer),
		devPending: map[string][]*deviceOp{}, devWriting: map[string]bool{}}
	if s.unavailable == nil {
		s.unavailable = func() {}
	}
	if err := s.setUp(ctx, cfg.Shards); err != nil {
		return nil, fmt.Errorf("open state in JetStream: %w", err)
	}
	return s, nil
}

// setUp creates the meta stream, agrees on the layout with any other
// process doing the same, and creates the shards' streams.
func (s *Store) setUp(ctx context.Context, shards int) error {
	if err := s.ensureStream(ctx, s.metaStream(), s.prefix+".meta.>"); err != nil {
		return err
	}
	layout := meta{Version: SchemaVersion, Shards: shards}
	for {
		raw, seq, err := s.get(ctx, s.metaStream(), s.metaKey("schema"))
		if err != nil {
			return err
		}
		if raw != nil {
			if err := json.Unmarshal(raw, &layout); err != nil {
				return fmt.Errorf("read the state's layout: %w: %v", store.ErrCorrupt, err)
			}
			break
		}
		b, _ := json.Marshal(layout)
		_, err = s.commit(ctx, s.metaStream(), []write{{subject: s.metaKey("schema"), data: b, expect: &seq}})
		if err == nil {
			break
		}
		if !errors.Is(err, errConflict) {
			return fmt.Errorf("write the state's layout: %w", err)
		}
	}
	if layout.Version != SchemaVersion {
		return fmt.Errorf("state schema version %d, this server reads %d", layout.Version, SchemaVersion)
	}
	if layout.Shards < 1 || layout.Shards > MaxShards {
		return fmt.Errorf("state layout of %d shards: %w", layout.Shards, store.ErrCorrupt)
	}
	s.shards = layout.Shards
	for i := range s.shards {
		if err := s.ensureStream(ctx, s.shardStream(i), s.shardSubject(i, ">")); err != nil {
			return err
		}
	}
	return s.giveWebhookSecrets(ctx)
}

// streamConfig is every stream's: the last message per subject, each
// write to a quorum, with TTLs, atomic batches and direct reads.
func (s *Store) streamConfig(name, subject string, replicas int) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:               name,
		Description:        "Tether connection server state (docs/scaling.md)",
		Subjects:           []string{subject},
		Storage:            jetstream.FileStorage,
		Replicas:           replicas,
		MaxMsgsPerSubject:  1,
		AllowDirect:        true,
		AllowMsgTTL:        true,
		AllowAtomicPublish: true,
		AllowRollup:        true,
	}
}

// ensureStream creates a stream unless it exists.
func (s *Store) ensureStream(ctx context.Context, name, subject string) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	_, err := jsstream.Ensure(ctx, s.js, s.streamConfig(name, subject, s.replicas), s.log)
	return err
}

// Close waits for the changes being written; the connection belongs to
// the caller.
func (s *Store) Close() error {
	s.writers.Wait()
	return nil
}

// Shards is the number of streams devices are spread over.
func (s *Store) Shards() int { return s.shards }

func (s *Store) metaStream() string        { return strings.ToUpper(s.prefix) + "_META" }
func (s *Store) metaKey(key string) string { return s.prefix + ".meta." + key }

func (s *Store) shardStream(i int) string { return strings.ToUpper(s.prefix) + "_" + strconv.Itoa(i) }
func (s *Store) shardSubject(i int, key string) string {
	return s.prefix + "." + strconv.Itoa(i) + "." + key
}

// ShardOf is the shard that holds key's records: a device ID, a token, or
// a sender ID for its topic messages.
func (s *Store) ShardOf(key string) int { return shardOf(key, s.shards) }

func shardOf(key string, shards int) int {
	h := fnv.New32a()
	h.Write([]byte(key))
	return int(h.Sum32() % uint32(shards))
}

// bound gives ctx the store's timeout when it has no deadline.
func (s *Store) bound(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok {
		return ctx, func() {}
	}
	return context.WithTimeout(ctx, s.timeout)
}

// sleep waits d or until ctx ends; false means ctx ended.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// validToken reports whether s can stand as one token of a subject.
func validToken(s string) bool {
	if s == "" || len(s) > 255 {
		return false
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_') {
			return false
		}
	}
	return true
}

// errConflict means a record changed between its read and a write that
// expected it unchanged: read again and retry.
var errConflict = errors.New("record changed meanwhile")

// errTransient is a failure that a retry may get past: a leader being
// elected, too many batches in flight, a batch cut short.
var errTransient = errors.New("JetStream busy")

// classify turns JetStream's answers into what callers branch on.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		switch apiErr.ErrorCode {
		case jetstream.JSErrCodeStreamWrongLastSequence, jetstream.JSErrCodeStreamWrongLastSequenceConstant:
			return fmt.Errorf("%w: %w", errConflict, err)
		case errCodeTooManyInflight, errCodeIncompleteBatch, errCodeNotReady:
			return fmt.Errorf("%w: %w", errTransient, err)
		case errCodeInsufficientResources, errCodeStorageExceeded, errCodeAccountResources:
			return fmt.Errorf("%w: %w", store.ErrFull, err)
		}
		return err
	}
	if errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, jetstream.ErrNoStreamResponse) {
		return fmt.Errorf("%w: %w", errTransient, err)
	}
	return err
}

// JetStream error codes not named by nats.go.
const (
	errCodeReplicasNotSupported  jetstream.ErrorCode = 10074
	errCodeTooManyInflight       jetstream.ErrorCode = 10210
	errCodeIncompleteBatch       jetstream.ErrorCode = 10176
	errCodeNotReady              jetstream.ErrorCode = 10008 // JetStream system temporarily unavailable
	errCodeInsufficientResources jetstream.ErrorCode = 10023
	errCodeStorageExceeded       jetstream.ErrorCode = 10047
	errCodeAccountResources      jetstream.ErrorCode = 10002
)

// retry runs attempt until it succeeds, fails for good, or ctx ends:
// conflicts and transient failures are retried after a short random wait
// that grows, so that racing writers fall out of step.
func (s *Store) retry(ctx context.Context, attempt func(ctx context.Context) error) error {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	wait := 500 * time.Microsecond
	for {
		// Each try has a few seconds: a stream whose leader is being
		// elected lets a request wait for nothing.
		try, cancelTry := context.WithTimeout(ctx, tryTimeout)
		err := attempt(try)
		cancelTry()
		if err != nil && ctx.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			err = fmt.Errorf("%w: %w", errTransient, err)
		}
		if err == nil || !errors.Is(err, errConflict) && !errors.Is(err, errTransient) {
			return err
		}
		if ctx.Err() == nil && sleep(ctx, wait/2+mathrand.N(wait)) {
			wait = min(2*wait, 20*time.Millisecond)
			continue
		}
		if errors.Is(err, errTransient) {
			s.unavailable()
		}
		return err
	}
}

// tryTimeout bounds one request to JetStream within a call.
const tryTimeout = 4 * time.Second

// write is one message of a commit.
type write struct {
	subject string
	data    []byte
	// expect, when set, is the sequence subject must have now (0: none),
	// or the commit fails with errConflict.
	expect *uint64
	// expectOf, with expect, is a filter whose last sequence is expected
	// instead of subject's: 0 makes sure that no subject it matches has a
	// record.
	expectOf string
	// ttl, when set, makes the engine delete the record after it.
	ttl time.Duration
	// purge deletes the record: a marker that expires a second later.
	purge bool
}

// tombstoneTTL is how long a purge marker stays: the least TTL the engine
// takes.
const tombstoneTTL = time.Second

func (w write) msg() *nats.Msg {
	m := &nats.Msg{Subject: w.subject, Data: w.data, Header: nats.Header{}}
	if w.expect != nil {
		m.Header.Set(jetstream.ExpectedLastSubjSeqHeader, strconv.FormatUint(*w.expect, 10))
		if w.expectOf != "" {
			m.Header.Set(jetstream.ExpectedLastSubjSeqSubjHeader, w.expectOf)
		}
	}
	ttl := w.ttl
	if w.purge {
		m.Data = nil
		m.Header.Set(kvOperation, kvPurge)
		ttl = tombstoneTTL
	}
	if ttl > 0 {
		// Whole seconds, rounded up: the engine's unit.
		m.Header.Set(jetstream.MsgTTLHeader, strconv.FormatInt(int64((ttl+time.Second-1)/time.Second), 10)+"s")
	}
	return m
}

// The KV convention for deleted records, so that `nats kv` tools read the
// streams as buckets would be read.
const (
	kvOperation = "KV-Operation"
	kvPurge     = "PURGE"
)

// commit writes ws to one stream, all or nothing, and returns the
// sequence of the last one; ws[i] has that sequence less len(ws)-1-i.
func (s *Store) commit(ctx context.Context, stream string, ws []write) (uint64, error) {
	start := time.Now()
	seq, err := s.publish(ctx, stream, ws)
	if err == nil && len(ws) > 0 {
		s.obs.Committed(time.Since(start))
	}
	return seq, err
}

// publish writes ws to stream, atomically when there are several.
func (s *Store) publish(ctx context.Context, stream string, ws []write) (uint64, error) {
	switch len(ws) {
	case 0:
		return 0, nil
	case 1:
		ack, err := s.js.PublishMsg(ctx, ws[0].msg(), jetstream.WithExpectStream(stream))
		if err != nil {
			return 0, classify(err)
		}
		return ack.Sequence, nil
	}
	msgs := make([]*nats.Msg, len(ws))
	for i, w := range ws {
		msgs[i] = w.msg()
	}
	msgs[0].Header.Set(jetstream.ExpectedStreamHeader, stream)
	ack, err := jetstreamext.PublishMsgBatch(ctx, s.js, msgs, jetstreamext.BatchFlowControl{AckFirst: false})
	if err != nil {
		return 0, classify(err)
	}
	if ack.BatchSize != uint64(len(ws)) {
		return 0, fmt.Errorf("%w: batch of %d stored as %d", errTransient, len(ws), ack.BatchSize)
	}
	return ack.Sequence, nil
}

// maxBatch bounds the messages of one atomic batch (JetStream's default
// max_batch_size is 1000).
const maxBatch = 1000

// apiError is the error part of a JetStream API answer.
type apiError struct {
	Code        int                 `json:"code"`
	ErrorCode   jetstream.ErrorCode `json:"err_code"`
	Description string              `json:"description"`
}

func (e *apiError) err() error {
	return &jetstream.APIError{Code: e.Code, ErrorCode: e.ErrorCode, Description: e.Description}
}

// errCodeNoMessage: a get found no message.
const errCodeNoMessage jetstream.ErrorCode = 10037

// get reads the record at subject from its stream's leader, so that it
// reflects every write acknowledged before: raw is nil when there is none
// (or it was deleted), and seq is what a write that expects it unchanged
// passes.
func (s *Store) get(ctx context.Context, stream, subject string) (raw []byte, seq uint64, err error) {
	m, err := s.getMsg(ctx, stream, map[string]any{"last_by_subj": subject})
	if err != nil || m == nil {
		return nil, 0, err
	}
	if m.Header.Get(kvOperation) != "" {
		return nil, m.Sequence, nil
	}
	return m.Data, m.Sequence, nil
}

// getMsg asks a stream's leader for one message; nil means none.
func (s *Store) getMsg(ctx context.Context, stream string, req map[string]any) (*jetstream.RawStreamMsg, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	body, _ := json.Marshal(req)
	for {
		try, cancelTry := context.WithTimeout(ctx, tryTimeout)
		reply, err := s.nc.RequestWithContext(try, "$JS.API.STREAM.MSG.GET."+stream, body)
		cancelTry()
		if err != nil {
			// No leader, or one being elected: ask again.
			again := errors.Is(err, nats.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil
			if again && sleep(ctx, 50*time.Millisecond) {
				continue
			}
			return nil, fmt.Errorf("read from stream %s: %w", stream, classify(err))
		}
		var resp struct {
			Error   *apiError `json:"error"`
			Message *struct {
				Subject string    `json:"subject"`
				Seq     uint64    `json:"seq"`
				Header  []byte    `json:"hdrs"`
				Data    []byte    `json:"data"`
				Time    time.Time `json:"time"`
			} `json:"message"`
		}
		if err := json.Unmarshal(reply.Data, &resp); err != nil {
			return nil, fmt.Errorf("read from stream %s: decode answer: %w", stream, err)
		}
		switch {
		case resp.Error != nil && resp.Error.ErrorCode == errCodeNoMessage:
			return nil, nil
		case resp.Error != nil:
			err := classify(resp.Error.err())
			if errors.Is(err, errTransient) && sleep(ctx, 50*time.Millisecond) {
				continue
			}
			return nil, fmt.Errorf("read from stream %s: %w", stream, err)
		case resp.Message == nil:
			return nil, fmt.Errorf("read from stream %s: an answer without a message", stream)
		}
		m := &jetstream.RawStreamMsg{Subject: resp.Message.Subject, Sequence: resp.Message.Seq, Data: resp.Message.Data, Time: resp.Message.Time}
		if len(resp.Message.Header) > 0 {
			hdr, err := decodeHeader(resp.Message.Header)
			if err != nil {
				return nil, fmt.Errorf("read from stream %s: %w", stream, err)
			}
			m.Header = hdr
		}
		return m, nil
	}
}

// decodeHeader parses a NATS/1.0 header block.
func decodeHeader(raw []byte) (nats.Header, error) {
	m := nats.NewMsg("")
	lines := strings.Split(string(raw), "\r\n")
	if len(lines) == 0 || !strings.HasPrefix(lines[0], "NATS/1.0") {
		return nil, fmt.Errorf("message header %.20q: not NATS/1.0", raw)
	}
	for _, line := range lines[1:] {
		if line == "" {
			continue
		}
		k, v, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("message header line %.40q: no colon", line)
		}
		m.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
	}
	return m.Header, nil
}

// lastMsgs reads the last message of every subject matching filters from
// the stream's nearest replica; a replica may lag, so callers check what
// they read against a record read from the leader.
func (s *Store) lastMsgs(ctx context.Context, stream string, filters []string) ([]*jetstream.RawStreamMsg, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	failed := func(err error) error {
		if len(filters) > 1 {
			return fmt.Errorf("read %s and %d more subjects: %w", filters[0], len(filters)-1, classify(err))
		}
		return fmt.Errorf("read %s: %w", filters[0], classify(err))
	}
	msgs, err := jetstreamext.GetLastMsgsFor(ctx, s.js, stream, filters)
	if err != nil {
		return nil, failed(err)
	}
	var out []*jetstream.RawStreamMsg
	for m, err := range msgs {
		if err != nil {
			if errors.Is(err, jetstreamext.ErrNoMessages) {
				break
			}
			return nil, failed(err)
		}
		if m.Header.Get(kvOperation) == "" {
			out = append(out, m)
		}
	}
	return out, nil
}

// decode decodes a record.
func decode[T any](raw []byte, what string) (T, error) {
	var v T
	if err := json.Unmarshal(raw, &v); err != nil {
		return v, fmt.Errorf("decode %s: %w: %v", what, store.ErrCorrupt, err)
	}
	return v, nil
}

func encode(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		// Records are plain structs of strings, numbers and maps of
		// strings: they always encode.
		panic(fmt.Sprintf("encode record: %v", err))
	}
	return b
}

func ptr(n uint64) *uint64 { return &n }

// Prefix is the prefix of the state's streams and subjects.
func (s *Store) Prefix() string { return s.prefix }
