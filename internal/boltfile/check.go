// SPDX-License-Identifier: Apache-2.0

package boltfile

import (
	"time"

	bolt "go.etcd.io/bbolt"
)

// Check checks the bbolt file at path as Open does, under a shared lock
// that it waits for at most timeout, and changes nothing: for a copy of a
// store, such as a backup, before it is trusted.
func Check(path string, timeout time.Duration) error {
	return check(path, bolt.Options{Timeout: timeout})
}
