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
// Every accepted message is in the store (package server/store) before it is
// acknowledged to whoever sent it: the HTTP answer for downstream, the
// upstream_ack frame for upstream. A downstream message stays queued until
// the device acks it or its time to live runs out, and every session of the
// device gets the unacked ones again. An upstream message stays queued until
// its route (the sender's webhook) takes it or its time to live runs out.
//
// Senders (app servers, each with a numeric sender ID and a server key) are
// managed with Admin, which goes through the running server's admin Unix
// socket in the data directory or, when no server runs, opens the store
// itself.
//
// The package is not a topic or group messaging service, does not deliver
// notification payloads and has no XMPP (CCS) endpoint yet.
package server
