// SPDX-License-Identifier: Apache-2.0

// Package openrc holds the OpenRC init script Tether ships for tetherd
// (Alpine and other OpenRC systems), embedded so that `tetherd install
// --init openrc` writes the same script a package installs as
// /etc/init.d/tetherd.
package openrc

import _ "embed"

// InitScript is tetherd.initd as shipped: it runs /usr/bin/tetherd run as
// the tether user, its output to syslog.
//
//go:embed tetherd.initd
var InitScript string
