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

// openFile opens the bbolt file at path after checking it whole, at every
// start: bbolt leaves no mark of an unclean close to skip the check by, and
// it is cheap beside a start. It reads every page in use once: a tenth of a
// second for 100,000 queued messages with the file in the page cache (see
// BenchmarkOpen), the time to read the file from disk without.
func openFile(path string, opt Options) (*bolt.DB, error) {
	return boltfile.Open(path, 0o600, bolt.Options{Timeout: opt.LockTimeout, MaxSize: opt.MaxSize})
}
