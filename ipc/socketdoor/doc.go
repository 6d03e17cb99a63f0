// SPDX-License-Identifier: Apache-2.0

// Package socketdoor is the agent's Unix socket door for local apps:
// newline-delimited JSON requests (docs/ipc.md) answered by an ipc.Backend,
// with the backend's events pushed to the connection that listens for an
// app.
//
// The door authenticates the peer with the kernel's credentials
// (SO_PEERCRED) and knows nothing of the agent, the store or the
// connection server: permissions, persistence and delivery windows are the
// backend's business.
package socketdoor
