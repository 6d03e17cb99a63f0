// SPDX-License-Identifier: Apache-2.0

// Package natsstore keeps the connection server's state in NATS JetStream,
// so that several tether-server processes share it and a fleet survives
// the loss of any one of them: JetStream replicates each write to a quorum
// (R3 on a cluster of three or more JetStream servers) before it answers,
// and nothing here is replicated by Tether itself.
//
// It is a store.Backend: the same rules as the single-node bbolt file,
// checked by the same suite (package storetest). How they map onto
// JetStream:
//
//   - State lives in streams that keep the last message of each subject
//     (MaxMsgsPerSubject 1), used as records: a sender, a device, a
//     registration, a queued message, a subscription each is one subject.
//     A record is deleted by a purge marker that expires a second later.
//   - A device's records (its queue, its registrations, their topic
//     subscriptions and its upstream messages) are in one stream, one of
//     Config.Shards, chosen by the device ID; senders are in a stream of
//     their own. Each stream has its own Raft leader, so writes spread over
//     the JetStream servers.
//   - Every change to a device is one atomic batch that carries the
//     sequence of the device's queue record as it was read
//     (Nats-Expected-Last-Subject-Sequence): two servers that change one
//     device at once cannot both win, and the loser reads again and
//     retries. GCM's caps, collapse keys and deleted-messages notices are
//     computed on that record, exactly as the bbolt store computes them.
//   - Message bodies and upstream dedupe entries carry a per-message TTL
//     (Nats-TTL), so the engine deletes them when they expire; no sweep
//     runs. A queue record drops expired entries at its next change.
//   - A registration token is made so that it hashes to its device's
//     shard; the token alone finds its record.
//
// The package knows nothing of sessions, HTTP or which server process
// holds which device; package cluster does that part.
package natsstore
