// SPDX-License-Identifier: Apache-2.0

// Package store keeps the connection server's durable state in one bbolt
// file: senders (app servers) and hashes of their keys, devices and hashes
// of their secrets, registrations and their topic subscriptions, the
// downstream queue of every device with GCM's per-app caps, notices for
// devices (token refreshes, counts of deleted messages), topic messages
// waiting for fan-out, and the upstream queue (app messages and delivery
// receipts) towards app servers.
//
// Every method is one transaction, so a caller that gets nil back knows its
// change is on disk. Writes that arrive together from many goroutines
// (downstream sends, acks, upstream messages) go through bbolt's Batch and
// share one fsync.
//
// The store holds no secrets in the clear and reads no clock: callers pass
// hashes and times in. It does no networking and knows nothing of sessions,
// HTTP or routes; package server does. This is the server's store, not the
// device agent's (that one is package tether/store).
package store
