// SPDX-License-Identifier: Apache-2.0

package store_test

import (
	"path/filepath"
	"testing"

	"tether/server/store"
	"tether/server/store/storetest"
)

// TestConformance runs the backends' suite on bbolt files.
func TestConformance(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		Open: func(t *testing.T) store.Backend {
			return openAt(t, filepath.Join(t.TempDir(), "server.db"), nil)
		},
		Reopen: func(t *testing.T, b store.Backend) store.Backend {
			path := b.(*store.Store).Path()
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			return openAt(t, path, nil)
		},
		OpenObserved: func(t *testing.T, obs store.Observer) store.Backend {
			return openAt(t, filepath.Join(t.TempDir(), "server.db"), obs)
		},
	})
}

// openAt opens the store at path, with obs, until the test ends.
func openAt(t *testing.T, path string, obs store.Observer) *store.Store {
	t.Helper()
	st, err := store.Open(path, store.Options{Observer: obs})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	return st
}
