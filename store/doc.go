// SPDX-License-Identifier: Apache-2.0

// Package store keeps a device agent's durable state in one bbolt file:
// the device's credentials, the apps' registrations and owners, the inbox
// of downstream messages waiting for their app, the IDs of downstream
// messages already received (so a redelivery is recognised), and the outbox
// of upstream messages waiting for the server's acknowledgement.
//
// Every method is one bbolt transaction, so what a method changes is either
// all on disk when it returns or not at all: the agent acknowledges a batch
// of downstream messages to the server only after AddMessages has returned.
// Times are absolute instants by the caller's clock, which the caller passes
// in; the store reads no clock itself.
//
// The file holds the device secret and registration tokens: Open creates it
// (and its directory) readable by its owner only. The store does not decide
// who may act for an app, when to dial, or what to tell an app: that is the
// agent's business. It keeps no goroutines and polls nothing; expired
// entries go when the caller runs Sweep or ExpireUpstream (the agent does
// so when a held message expires, as NextExpiry reports, and whenever it
// touches the inbox anyway), and reads skip expired entries that are still
// there.
//
// The caller's clock may not be the system's: the store keeps a time mark,
// the latest instant a write carried (TimeMark), so that the agent can
// resume its clock from it when the system clock went back or was never set.
//
// What the store holds for apps is bounded by the Quota the caller passes
// to AddMessages: past it, the oldest held messages are dropped in the
// transaction that stores the new ones, and counted for the app. A device
// whose server no longer knows it forgets its credentials and keeps its
// registrations, marked stale, until they are made again
// (ForgetCredentials); the tokens that changed wait for their app
// (TakeRefreshed).
//
// Layout, for the curious: bucket "device" holds the credentials and the
// time mark; bucket
// "apps" holds one bucket per app ID with its owner, its registrations
// ("senders": sender ID → token; "stale": sender → the token the device
// had before it checked in anew, until it is registered again;
// "refreshed": sender → the new token the app has not been told of), its
// inbox and outbox (keyed by a per-app
// sequence number, so iteration is arrival order; a held message's record
// is binary, or JSON as versions before it wrote them), how many messages its
// inbox holds and their bytes ("usage", counted afresh at Open), and the
// count of messages dropped before the app acknowledged them; bucket
// "seen" maps each downstream message ID to its expiry, app and inbox
// sequence number; bucket "expiry" indexes "seen" by expiry, so a sweep
// reads only what is due; bucket "held" indexes the held messages the
// same way; and bucket "arrivals" lists the seen IDs in order of arrival
// (a sequence number → ID), so that those of messages no longer held go
// oldest first past Writes.SeenIDs.
package store
