// SPDX-License-Identifier: Apache-2.0

// Package sleep lets the agent prepare for system suspend and recover
// after resume, where systemd-logind manages sleep. It holds a logind
// "delay" inhibitor lock, so that when the system is about to sleep the
// agent gets a moment (logind's InhibitDelayMaxSec, 5 s by default) to
// flush acknowledgements and close its connection cleanly, rather than
// leaving the server to find a dead connection by timeout.
//
// It neither suspends the system nor blocks suspend: the lock only delays
// sleep and is released as soon as the preparation is done. Without
// logind, Run returns ErrUnavailable and the agent does without.
package sleep
