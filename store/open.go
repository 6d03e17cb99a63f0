// SPDX-License-Identifier: Apache-2.0

package store

import (
	bolt "go.etcd.io/bbolt"

	"tether/internal/boltfile"
)

// ErrDamaged is wrapped by Open's error when the file is damaged: bbolt
// would panic on it, or fault, or write over live data. Open leaves such a
// file unchanged and does not start afresh beside it: what to do with it is
// for a person to decide.
var ErrDamaged = boltfile.ErrDamaged

// openFile opens the bbolt file at path after checking it whole. The
// agent's file is small (credentials, registrations, the messages waiting
// for apps), so the check, which reads every page in use, costs little at
// each start.
func openFile(path string) (*bolt.DB, error) {
	return boltfile.Open(path, 0o600, bolt.Options{Timeout: lockTimeout})
}
