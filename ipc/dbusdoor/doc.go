// SPDX-License-Identifier: Apache-2.0

// Package dbusdoor is the agent's D-Bus door for local apps: the service
// org.tether.Push (docs/ipc.md), whose methods an ipc.Backend answers and
// whose signals carry the backend's events.
//
// The door asks the bus daemon who calls and knows nothing of the agent,
// the store or the connection server. It speaks D-Bus with
// internal/busclient, and answers calls from its own tables: each call is
// checked against its method's signature, run in a goroutine of its own,
// and introspection is written from the same tables.
package dbusdoor
