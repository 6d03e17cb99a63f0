// SPDX-License-Identifier: Apache-2.0

// Package updist is a UnifiedPush distributor on D-Bus: it owns
// org.unifiedpush.Distributor.tether on a user's session bus, serves the
// org.unifiedpush.Distributor2 and Distributor1 interfaces to the
// connectors (apps) of that user, and hands each of their registrations
// to the Tether agent as a registration of its own with the built-in Web
// Push sender. The agent's messages for a registration go to the
// connector's org.unifiedpush.Connector2 (or Connector1) at
// /org/unifiedpush/Connector, body bytes unchanged, and are acknowledged
// to the agent only once the connector has them.
//
// The distributor keeps its registrations in a small file of its own, so
// that it can listen again after a restart and hand each connector its
// endpoint again, as the specification expects of a distributor that
// starts.
package updist
