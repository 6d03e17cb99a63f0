// SPDX-License-Identifier: Apache-2.0

// Package wire defines the protocol between a device agent and the
// connection server: the frames, their fields, their limits and their
// encoding (docs/protocol.md describes it for implementers).
//
// Every WebSocket message is one frame. In version 1 each is a JSON
// envelope naming its type, an optional reference that ties a reply to its
// request, and a body. Version 2 sends the two frames that go with every
// message, message and ack, in a compact binary form, and keeps the rest
// as JSON. The agent offers its highest version in Hello and the server
// picks the session's in Welcome (Negotiate); a Codec then encodes and
// decodes the session's frames in that version.
//
// Decode (or Codec.Decode) checks the envelope; Frame.Decode checks that
// the body is the expected type and that its fields are within limits, so
// neither side acts on a half-valid frame. A compact frame is decoded and
// checked whole by Codec.Decode. An unknown type decodes fine (Decode
// does not know what the peer may add later) and the receiver answers it
// with an error frame of code CodeUnknownType instead of dropping the
// connection.
//
// The package does no I/O: dialling, heartbeats and reconnection belong to
// the agent, sessions and queues to the server.
package wire
