// SPDX-License-Identifier: Apache-2.0

package store

import (
	"context"
	"time"
)

// Backend is the connection server's durable state, whatever keeps it: the
// bbolt file of this package on a single machine, or the JetStream buckets
// of package natsstore that several server processes share. Both keep the
// same rules, which the suite in package storetest checks on each:
// GCM's caps and collapse keys, times to live, upstream deduplication and
// cap, topic fan-out, receipts and token rotation.
//
// Every method that returns nil has made its change durable: on disk for
// bbolt, on a quorum of JetStream servers for a cluster. Callers pass
// hashes rather than secrets and the server's clock as now; a backend reads
// no clock of its own for GCM's rules.
type Backend interface {
	AddSender(ctx context.Context, name, webhook string, keyHash []byte, now time.Time) (Sender, error)
	Sender(ctx context.Context, id string) (Sender, error)
	SenderByKeyHash(ctx context.Context, keyHash []byte) (Sender, error)
	RotateSenderKey(ctx context.Context, id string, keyHash []byte, grace time.Duration, now time.Time) (Sender, error)
	UpdateSender(ctx context.Context, id string, change SenderChange) (Sender, error)
	Senders(ctx context.Context) ([]Sender, error)
	RemoveSender(ctx context.Context, id string) error

	AddDevice(ctx context.Context, dev Device) (Device, error)
	Device(ctx context.Context, id string) (Device, error)
	DeviceInfo(ctx context.Context, id string) (DeviceInfo, error)
	Devices(ctx context.Context) ([]DeviceInfo, error)
	SeenDevice(ctx context.Context, id string, at time.Time, agent, mode string) error
	RevokeDevice(ctx context.Context, id string, now time.Time) (Device, error)
	RemoveDevice(ctx context.Context, id string, now time.Time) (Device, error)
	ExpireDevices(ctx context.Context, before, now time.Time) ([]string, error)
	CertRevoked(ctx context.Context, certID string) (bool, error)

	AddEnrollKey(ctx context.Context, k EnrollKey) (EnrollKey, error)
	EnrollKeys(ctx context.Context) ([]EnrollKey, error)
	RevokeEnrollKey(ctx context.Context, id string, now time.Time) error
	SpendEnrollKey(ctx context.Context, hash []byte, now time.Time) (EnrollKey, error)
	RefundEnrollKey(ctx context.Context, id string) error

	Register(ctx context.Context, device, app, sender, vapid string, now time.Time) (Registration, error)
	Unregister(ctx context.Context, device, app, sender string, now time.Time) (dropped int, err error)
	ActiveRegistration(ctx context.Context, device, app, sender string) (Registration, error)
	ResolveTokens(ctx context.Context, tokens []string, now time.Time) ([]Resolution, error)
	RotateToken(ctx context.Context, token string, grace time.Duration, now time.Time) (Registration, error)

	Enqueue(ctx context.Context, msgs []Message, live Live) (queued []bool, err error)
	// Pending passes over the messages skip names before it reads their
	// bodies, and its last lets the caller's cursor move past them.
	Pending(ctx context.Context, device string, after uint64, limit int, skip func(id string) bool) (msgs []Message, last uint64, err error)
	Ack(ctx context.Context, device string, ids []string, now time.Time) (acked int, receipts []Upstream, err error)
	AddReceipts(ctx context.Context, msgs []Message, now time.Time) ([]Upstream, error)
	Notices(ctx context.Context, device string) ([]Notice, error)

	Subscribe(ctx context.Context, device, app, sender, topic string, now time.Time) error
	Unsubscribe(ctx context.Context, device, app, sender, topic string) error
	Topics(ctx context.Context, token string) ([]string, error)
	Subscriptions(ctx context.Context, token string) ([]Subscription, error)
	ChangeSubscriptions(ctx context.Context, sender, topic string, tokens []string, subscribing bool, now time.Time) ([]SubscriptionOutcome, error)

	PutUpstream(ctx context.Context, u *Upstream, seenUntil time.Time) (PutOutcome, error)
	Upstream(ctx context.Context, seq uint64) (Upstream, error)
	NextUpstream(ctx context.Context, device, sender string, after uint64, limit int) ([]Upstream, error)
	EachUpstream(ctx context.Context, fn func(Upstream) error) error
	DeleteUpstream(ctx context.Context, seq uint64) error

	PutTopicMessage(ctx context.Context, tm *TopicMessage) error
	TopicMessages(ctx context.Context, after uint64, limit int) ([]TopicMessage, error)
	DeleteTopicMessage(ctx context.Context, seq uint64) error
	FanOut(ctx context.Context, seq uint64, step FanOutStep) (FanOutResult, error)

	Close() error
}

// Sweeper is a Backend that must be told to delete what has expired. A
// backend whose engine expires records by itself is not one.
type Sweeper interface {
	// SweepExpired deletes what has expired by now and returns when the
	// next record expires (zero if none).
	SweepExpired(ctx context.Context, now time.Time) (next time.Time, removed int, err error)
}

var (
	_ Backend = (*Store)(nil)
	_ Sweeper = (*Store)(nil)
)
