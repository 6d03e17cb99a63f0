// SPDX-License-Identifier: Apache-2.0

// Package platform holds the watchers that tell the agent about the device
// it runs on: platform/power (mains, battery, low battery),
// platform/network (the default route and which network it leads to) and
// platform/sleep (system suspend and resume). Each watcher reports facts
// through a callback and knows nothing of the agent; what to do with them
// (hold the connection, stretch the heartbeat, reconnect) is the agent's
// business.
package platform
