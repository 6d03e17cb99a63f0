// Package systemd holds the systemd unit Tether ships for tetherd, embedded
// so that `tetherd install` writes the same unit the packages install. The
// unit file itself, tetherd.service, is the one source of both.
package systemd

import _ "embed"

// Unit is tetherd.service as shipped: it runs /usr/bin/tetherd run.
//
//go:embed tetherd.service
var Unit string

// Executable is the binary the shipped unit runs.
const Executable = "/usr/bin/tetherd"
