// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestBackupAndCompactCommands: on a stopped server's data directory,
// backup writes a 0600 copy and compact rewrites the store; both refuse
// bad arguments with a usage error and a missing store with an error.
func TestBackupAndCompactCommands(t *testing.T) {
	data := filepath.Join(t.TempDir(), "data")
	if code, _, stderr := runCmd(t, "sender", "add", "--data", data, "--name", "s"); code != 0 {
		t.Fatalf("sender add: %d %s", code, stderr)
	}
	out := filepath.Join(t.TempDir(), "copy.db")
	for _, tc := range []struct {
		name     string
		args     []string
		code     int
		contains string // in stdout, or stderr on failure
	}{
		{"backup without --out", []string{"backup", "--data", data}, 2, "--out is required"},
		{"compact without --data", []string{"compact"}, 2, "--data is required"},
		{"backup of no store", []string{"backup", "--data", t.TempDir(), "--out", out}, 1, "no server store"},
		{"compact of no store", []string{"compact", "--data", t.TempDir()}, 1, "no server store"},
		{"backup", []string{"backup", "--data", data, "--out", out}, 0, "from the stopped store"},
		{"compact", []string{"compact", "--data", data}, 0, "compacted the store"},
	} {
		code, stdout, stderr := runCmd(t, tc.args...)
		got := stdout
		if code != 0 {
			got = stderr
		}
		if code != tc.code || !strings.Contains(got, tc.contains) {
			t.Errorf("%s: %d %q %q, want %d and %q", tc.name, code, stdout, stderr, tc.code, tc.contains)
		}
	}
	if fi, err := os.Stat(out); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("backup file: %v, %v", fi, err)
	}
	code, stdout, _ := runCmd(t, "backup", "--data", data, "--out", out, "--json")
	var res struct {
		Path   string `json:"path"`
		Bytes  int64  `json:"bytes"`
		Online bool   `json:"online"`
	}
	if err := json.Unmarshal([]byte(stdout), &res); code != 0 || err != nil || res.Path != out || res.Bytes == 0 || res.Online {
		t.Errorf("backup --json: %d %q %v", code, stdout, err)
	}
}
