// SPDX-License-Identifier: Apache-2.0

// Package power watches how the device is powered: from the mains, from a
// battery, or from a battery that is running low. The agent uses it to ping
// less often on battery and to hold its connection when the battery is low.
//
// It reads the kernel's power_supply class in sysfs and listens to the
// kernel's uevents for that class, or, where UPower runs on the system bus,
// asks UPower and listens to its PropertiesChanged signals instead. It waits
// for events rather than polling: the only timer is a slow re-read of the
// battery's capacity while on battery from sysfs, because many battery
// drivers send no event when only the capacity changes. On mains nothing
// wakes it but an event.
//
// It does not manage power (no suspend, no charging control); see
// tether/platform/sleep for suspend and resume.
package power
