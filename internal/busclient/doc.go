// Package busclient is a small D-Bus client: it connects to a bus over a
// Unix socket, authenticates with EXTERNAL, calls methods and receives
// signals, with the message format of the D-Bus specification.
//
// It exists for the size of tetherctl: godbus, a complete D-Bus library,
// is about 448 KiB on ARMv7, while tetherctl only calls the agent's
// methods and reads its signals. Values are encoded from a few Go types
// (string, ObjectPath, bool, uint32, int64, []string, map[string]string,
// map[string]Variant, Variant) and decoded into generic ones (see
// decoder.value). It is not a server and passes no file descriptors.
package busclient
