// SPDX-License-Identifier: Apache-2.0

// Package server is Tether's connection server: the middle of app server →
// connection server → device agent.
//
// One listener (HTTP or, with a certificate, HTTPS) serves two sides:
//
//   - App servers send downstream messages with GCM's legacy HTTP API,
//     POST /gcm/send or /fcm/send with "Authorization: key=SERVER_KEY"
//     (docs/server-api.md), so existing GCM client libraries work unchanged.
//   - Device agents hold one WebSocket session each at wire.Path and speak
//     package wire (docs/protocol.md): check-in, registrations, downstream
//     messages with acks, upstream messages.
//
// Every accepted message is in the store (store.Backend: the bbolt file of
// package server/store, or a cluster's JetStream state, package
// server/natsstore) before it is acknowledged to whoever sent it: the HTTP answer for downstream, the
// upstream_ack frame for upstream. A downstream message stays queued until
// the device acks it or its time to live runs out, and every session of the
// device gets the unacked ones again. An upstream message stays queued until
// its route (an XMPP connection or the webhook of its sender) takes it or
// its time to live runs out.
//
// Messages to a topic or a condition are stored once and then fanned out
// by one goroutine into the queues of the subscribed registrations, a
// batch per store transaction, resuming from the stored position after a
// restart. GCM's caps apply per app on a device (100 non-collapsible
// messages, 4 collapse keys); what they drop, and token rotations, reach
// the device as notices it acks like messages.
//
// Devices announce their power mode (mains, battery, low) in hello and
// state frames; on battery a session holds normal-priority messages back
// and pushes them in a batch behind the next high-priority one, on mains,
// or after Config.BatteryMaxDelay. Only the agent drives heartbeats: the
// server answers pings, times a session out after the agent's announced
// heartbeat plus a grace, and serves heartbeat probes, idle connections
// that leave the device's session alone. Before it closes a session for
// its own reasons (shutdown, an unavailable store, a device reconnecting
// too often) it sends a goaway that says when to come back.
//
// Senders (app servers, each with a numeric sender ID and a server key) and
// token rotations are managed with Admin, which goes through the running
// server's admin Unix socket in the data directory or, when no server
// runs, opens the store itself.
//
// App servers may also hold XMPP connections, as with GCM's Cloud
// Connection Server (Config.XMPPListen; the stream layer is package
// server/xmpp): downstream messages come in as stanzas, many stored per
// commit and each answered with an ack or a nack, and a sender's upstream
// messages and receipts go out on one of its connections until the app
// server acks them. A message takes one route: the sender's XMPP
// connections while it has any, else its webhook.
//
// With Config.NATS the server is one node of a cluster (docs/scaling.md):
// the nodes share their state in NATS JetStream, reach the node holding a
// device's session over NATS (package server/cluster), take turns at the
// work one node must do at a time (upstream delivery, fan-out) by leased
// partitions, and hold limits across the cluster.
//
// The package has no device groups.
package server
