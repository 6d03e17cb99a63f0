// SPDX-License-Identifier: Apache-2.0

package store_test

import (
	"path/filepath"
	"testing"

	"tether/server/store"
	"tether/server/store/storetest"
)

// BenchmarkPending: a session's read of a full window's queue, with and
// without the messages in flight left out (storetest.BenchPending).
func BenchmarkPending(b *testing.B) {
	st, err := store.Open(filepath.Join(b.TempDir(), "server.db"), store.Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer st.Close()
	storetest.BenchPending(b, st)
}
