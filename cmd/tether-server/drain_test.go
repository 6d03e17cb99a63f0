// SPDX-License-Identifier: Apache-2.0

package main

import (
	"path/filepath"
	"strings"
	"testing"
)

// TestDeviceDrainCommand: device drain needs --data, and a running server
// there.
func TestDeviceDrainCommand(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	if code, _, stderr := runCmd(t, "sender", "add", "--data", data, "--name", "s"); code != 0 {
		t.Fatalf("sender add: %d %s", code, stderr)
	}
	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		contains string
	}{
		{"without --data", []string{"device", "drain"}, 2, "--data is required"},
		{"bad spread", []string{"device", "drain", "--data", data, "--over", "soon"}, 2, "invalid value"},
		{"no server running", []string{"device", "drain", "--data", data}, 1, "no server is running"},
	} {
		code, _, stderr := runCmd(t, tc.args...)
		if code != tc.code || !strings.Contains(stderr, tc.contains) {
			t.Errorf("%s: %d %q, want %d and %q", tc.name, code, stderr, tc.code, tc.contains)
		}
	}
}
