// SPDX-License-Identifier: Apache-2.0

// Package agent is the core of tetherd, the device agent: it keeps the
// device connected to the connection server, stores what comes down and
// hands it to local apps, and carries apps' upstream messages to the server.
//
// An Agent owns one Link (a WebSocket connection that reconnects by itself,
// moving between the nodes it is given, link.go) and one store.Store, and
// coordinates two parts with locks of their own: the inbox (inbox.go: the
// apps' listeners, their windows, and the commits of messages and app
// acks) and the outbox (outbox.go: the current session, and what was sent
// on it and waits for the server's answer: requests, upstream messages,
// the outcomes Send promised, the sends held back in low power). It
// implements ipc.Backend, so every door (ipc/socketdoor, ipc/dbusdoor)
// reaches it the same way; it knows nothing of sockets or D-Bus. The device's credentials
// belong to the servers stored with them (those of the check-in, then of
// each session on another list), and stay good while the configured
// servers still name one of them.
//
// Downstream: the frames that arrive together (one, plus whatever the reader
// has already queued) are stored in one transaction, shared with the apps'
// acks that come meanwhile (commit.go), and acknowledged to the server in
// one ack, duplicates included, once it commits. A listening app with room
// in its window, and nothing stored for it ahead of them, has the new
// messages while that transaction runs; a failed commit costs it a
// duplicate, never a message. Each app has at most one listener and at most
// Window messages delivered and not yet acknowledged; what it does not
// acknowledge is delivered again on its next Listen, and what it
// acknowledges is not, while the store keeps its ID (Config.SeenIDs). A
// message waits in the store until its app acknowledges it or its time to
// live runs out (then the app is told how many it missed, as GCM's
// deleted_messages). Every message is held at least
// a few seconds after receipt, so a "now or never" message (TTL 0) still
// reaches an app that is listening. What the store holds is bounded per app
// and in all (Config.Quota), counting what waits for an app and not what its
// listener has: past it an app's oldest waiting messages go, in the
// transaction that stores the new ones, and the app is told how many, so
// that no app fills the store for the others and no session ends for want of
// room.
//
// Upstream: Send stores the message first (at most MaxPending per app),
// sends it while connected, and sends it again after every reconnection
// until the server acknowledges it; the server drops repeats. The app learns
// the outcome once, on its listener and on the channel Send returns. The
// server keeps its own MaxPending per app, of those not yet delivered to
// the app server: one more is refused for good (TooManyMessages, the
// app's outcome). Over the device's upstream rate the server asks for the
// message later (unavailable): it stays pending and goes again.
//
// Registrations: a known (app, sender) is answered from the store, offline
// included. An app ID belongs to the Unix user who registered it first;
// only that user and root may act for it, and one user may hold at most
// Config.UserRegistrations. Unregister drops the token and the held
// messages from that sender; the app stays bound to its user, and its
// messages from other senders stay.
//
// A server that refuses the device's credentials twice in a row no longer
// knows the device (enroll.go). With an enrollment key or a client
// certificate the agent checks in anew, registers every app again before
// it sends upstream, and tells each app its new tokens; without, or when
// the device was revoked, it says so once and dials only about every
// longest backoff.
//
// The agent drives heartbeats (WebSocket pings), so that a device on a
// metered or battery-powered link decides how often its radio wakes up;
// the server only times out sessions it no longer hears from.
package agent
