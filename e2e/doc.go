// SPDX-License-Identifier: Apache-2.0

// Package e2e holds Tether's end-to-end tests: they build the real
// tether-server, tetherd and tetherctl binaries (with the race detector) and
// run them as processes on loopback, talking to them the way app servers and
// local apps do: HTTP to /gcm/send, the Unix socket, tetherctl, a webhook.
//
// Nothing here is imported by the product; it has no non-test code.
package e2e
