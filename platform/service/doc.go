// SPDX-License-Identifier: Apache-2.0

// Package service connects tetherd to the device's service manager.
//
// It installs and controls the daemon as a service of systemd, procd
// (OpenWrt), OpenRC or SysV init (Manager): it writes the unit or init
// script Tether ships, with the daemon's command line in it, makes the
// links that the service manager's own enable command would make, on the
// running system or under another root directory (a firmware image), and
// asks systemctl, rc-service or service to start, stop and report. It
// speaks systemd's notify protocol itself
// (Notifier: readiness, watchdog pings, stopping) and writes log lines the
// journal files under their level (JournalHandler).
//
// It is not the daemon's main loop and knows nothing of the agent: the
// command decides when it is ready and what "healthy" means, and hands
// that to the Notifier.
package service
