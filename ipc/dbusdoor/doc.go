// SPDX-License-Identifier: Apache-2.0

// Package dbusdoor is the agent's D-Bus door for local apps: the service
// org.tether.Push (docs/ipc.md), whose methods an ipc.Backend answers and
// whose signals carry the backend's events.
//
// The door asks the bus daemon who calls and knows nothing of the agent,
// the store or the connection server. It is the only part of the agent
// that links a D-Bus library.
package dbusdoor
