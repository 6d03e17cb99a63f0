// SPDX-License-Identifier: Apache-2.0

package boltfile_test

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkOpen measures opening a file holding n keys or messages, of
// each kind the damage tests use: "open" is the kind's Open as tetherd and
// tether-server do it, the file checked whole; "unchecked" is opening the
// bbolt file without the check, for comparison. The page cache is warm, as
// after a restart of the process alone. An agent holds messages only until
// its apps read them, so its n is far below the server's in practice.
func BenchmarkOpen(b *testing.B) {
	for _, k := range kinds {
		for _, n := range []int{1_000, 100_000} {
			path := filepath.Join(b.TempDir(), "bench.db")
			k.make(b, path, n)
			fi, err := os.Stat(path)
			if err != nil {
				b.Fatal(err)
			}
			mb := float64(fi.Size()) / (1 << 20)
			b.Run(fmt.Sprintf("%s/n=%d/open", k.name, n), func(b *testing.B) {
				for b.Loop() {
					s, err := k.open(path)
					if err != nil {
						b.Fatal(err)
					}
					s.Close()
				}
				b.ReportMetric(mb, "MiB")
			})
			b.Run(fmt.Sprintf("%s/n=%d/unchecked", k.name, n), func(b *testing.B) {
				for b.Loop() {
					db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
					if err != nil {
						b.Fatal(err)
					}
					db.Close()
				}
				b.ReportMetric(mb, "MiB")
			})
		}
	}
}
