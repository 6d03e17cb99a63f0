// SPDX-License-Identifier: Apache-2.0

// Package busclient is a small D-Bus client: it connects to a bus over a
// Unix socket, authenticates with EXTERNAL, calls methods and receives
// signals, with the message format of the D-Bus specification.
//
// It exists for the size of tetherctl and tetherd: godbus, a complete
// D-Bus library, is about 448 KiB on ARMv7, while tetherctl only calls the
// agent's methods, reads its signals and, as a UnifiedPush distributor,
// owns a name and answers a few methods; tetherd's D-Bus door owns
// org.tether.Push and emits its signals, and its watchers follow logind
// and UPower. Values are encoded from a few Go types (string,
// ObjectPath, bool, uint32, int64, []byte, []string, map[string]string,
// map[string]Variant, Variant) and decoded into generic ones (see
// decoder.value); on a connection dialled with DialWithFDs, a descriptor
// a reply carries (type h, such as logind's inhibitor lock) is decoded as
// an *os.File for the caller to close. A served call is answered by its
// receiver (NextCall, then Reply or ReplyError), and signals are sent
// with Emit: there are no object tables and no introspection, which a
// server writes for itself.
//
// A connection's signals come out of one queue (NextSignal): two parts of
// a program that each follow signals need a connection each.
package busclient
