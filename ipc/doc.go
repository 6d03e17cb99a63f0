// Package ipc holds the agent's front doors for local apps: the Unix socket
// speaking newline-delimited JSON and the org.tether.Push service on D-Bus
// (both in docs/ipc.md).
//
// A door authenticates the peer with the kernel's credentials, turns requests
// into calls on a Backend and pushes the backend's events back to the app.
// It knows nothing of the agent, the store or the connection server: the
// Backend interface below is all it needs, and permissions, persistence and
// delivery windows are the backend's business.
package ipc
