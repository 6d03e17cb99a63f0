// Package service connects tetherd to the device's service manager.
//
// It installs and controls the daemon as a service of systemd, procd
// (OpenWrt), OpenRC or SysV init through github.com/kardianos/service, with
// the unit or init script that Tether ships instead of that library's
// generic ones (Manager). It speaks systemd's notify protocol itself
// (Notifier: readiness, watchdog pings, stopping) and writes log lines the
// journal files under their level (JournalHandler).
//
// It is not the daemon's main loop and knows nothing of the agent: the
// command decides when it is ready and what "healthy" means, and hands
// that to the Notifier.
package service
