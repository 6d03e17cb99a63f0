// SPDX-License-Identifier: Apache-2.0

// Package openwrt holds the procd init script Tether ships for OpenWrt,
// embedded so that `tetherd install --init procd` writes the same script
// the .ipk installs as /etc/init.d/tetherd.
package openwrt

import _ "embed"

// InitScript is tetherd.init as shipped.
//
//go:embed tetherd.init
var InitScript string
