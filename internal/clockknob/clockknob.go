// SPDX-License-Identifier: Apache-2.0

// Package clockknob reads TETHER_CLOCK_OFFSET, the test knob that moves the
// wall clock tetherd and tether-server read, so that fault-injection runs
// can make a process's clock jump without touching the machine's clock.
// (libfaketime cannot reach static Go binaries.)
//
// The offset is read once, at start: a jump is a restart with another
// offset. Timers and deadlines are not moved, only the times the programs
// stamp on messages and compare with expiries. Nothing sets it in
// production; docs/reliability.md shows how the fault-injection harness
// uses it.
package clockknob

import (
	"fmt"
	"time"
)

// Env is the environment variable: a Go duration such as "90m" or "-2h".
const Env = "TETHER_CLOCK_OFFSET"

// FromEnv returns the offset set in the environment, zero when unset.
func FromEnv(getenv func(string) string) (time.Duration, error) {
	v := getenv(Env)
	if v == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q: want a duration such as 90m or -2h", Env, v)
	}
	return d, nil
}
