// SPDX-License-Identifier: Apache-2.0

// Package client is the Go client of the Tether agent (tetherd) for apps
// on a device: it registers an app with its app server's sender ID,
// listens for the app's messages and acknowledges them, sends upstream
// messages and reads the agent's status, through the agent's Unix socket
// or its D-Bus service (docs/ipc.md). tetherctl is built on it.
//
// A Client holds no connection: each request opens one of its own, so a
// Client may be shared by goroutines and outlives restarts of the agent.
// A Listener holds the connection that makes it the app's listener, and
// ends when the agent goes away: listen again, and what the app had not
// acknowledged comes again.
//
// Delivery is at least once. Handle a message, then Ack it; a message is
// never delivered again once Ack has returned, and may be delivered again
// until then, so handle messages idempotently, keyed by their ID.
//
// The package links the standard library and tether's own small D-Bus
// client only, so that it stays small in a device's firmware.
package client
