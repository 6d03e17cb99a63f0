// Package wire defines the protocol between a device agent and the
// connection server: the frames, their fields, their limits and their
// encoding (docs/protocol.md describes it for implementers).
//
// Every WebSocket message is one frame: a JSON envelope naming its type,
// an optional reference that ties a reply to its request, and a body.
// Decode checks the envelope; Frame.Decode checks that the body is the
// expected type and that its fields are within limits, so neither side
// acts on a half-valid frame. An unknown type decodes fine (Decode does not
// know what the peer may add later) and the receiver answers it with an
// error frame of code CodeUnknownType instead of dropping the connection.
//
// The package does no I/O: dialling, heartbeats and reconnection belong to
// the agent, sessions and queues to the server.
package wire
