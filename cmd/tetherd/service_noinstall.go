// SPDX-License-Identifier: Apache-2.0

//go:build tether_noinstall

package main

import (
	"context"
	"fmt"
)

// runService refuses: this build leaves out the service installer
// (platform/service's Manager, os/exec and the scripts, 192 KiB on ARMv7)
// for firmware whose image installs the unit or init script itself
// (docs/firmware.md).
func runService(_ context.Context, action string, _ []string, env environ) int {
	fmt.Fprintf(env.stderr, "tetherd %s: this tetherd was built without the service installer (tag tether_noinstall): the firmware installs the unit or init script, and the init system controls it\n", action)
	return 2
}
