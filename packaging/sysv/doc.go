// SPDX-License-Identifier: Apache-2.0

// Package sysv holds the SysV init script Tether ships for tetherd (Debian's
// sysvinit, BusyBox init), embedded so that `tetherd install --init sysv`
// writes the same script firmware recipes install as /etc/init.d/tetherd.
package sysv

import _ "embed"

// InitScript is tetherd.init as shipped: it runs /usr/bin/tetherd run as
// the tether user with start-stop-daemon, its output to syslog.
//
//go:embed tetherd.init
var InitScript string
