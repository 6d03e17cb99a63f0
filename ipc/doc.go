// SPDX-License-Identifier: Apache-2.0

// Package ipc holds what the agent's front doors for local apps share: the
// Backend that serves them, the Listener that carries events back, the
// sentinel errors, and the requests, responses, events and names that
// appear on the wire (docs/ipc.md). The doors themselves are in
// ipc/socketdoor (the Unix socket, newline-delimited JSON) and ipc/dbusdoor
// (the org.tether.Push service on D-Bus).
//
// The package imports nothing outside the standard library, so that the
// agent and the clients of the doors (tetherctl) link no door they do not
// serve.
package ipc
