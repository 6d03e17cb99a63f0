// SPDX-License-Identifier: Apache-2.0

// Package systemd holds the systemd units Tether ships: tetherd.service,
// embedded so that `tetherd install` writes the same unit the packages
// install (the unit file itself is the one source of both), and
// tether-server.service, which only the server's packages install.
package systemd

import _ "embed"

// Unit is tetherd.service as shipped: it runs /usr/bin/tetherd run.
//
//go:embed tetherd.service
var Unit string

// Executable is the binary the shipped unit runs.
const Executable = "/usr/bin/tetherd"
