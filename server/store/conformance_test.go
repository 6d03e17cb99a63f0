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
			st, err := store.Open(filepath.Join(t.TempDir(), "server.db"), store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		},
		Reopen: func(t *testing.T, b store.Backend) store.Backend {
			path := b.(*store.Store).Path()
			if err := b.Close(); err != nil {
				t.Fatal(err)
			}
			st, err := store.Open(path, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { st.Close() })
			return st
		},
	})
}
