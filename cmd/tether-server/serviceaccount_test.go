// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testServiceAccountCommands makes, lists and revokes service-account
// keys of sender id with cmd.
func testServiceAccountCommands(t *testing.T, cmd func(args ...string) (int, string, string), id string) {
	t.Helper()
	dir := t.TempDir()
	file := filepath.Join(dir, "sa.json")
	exists := filepath.Join(dir, "exists.json")
	if err := os.WriteFile(exists, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []cmdCase{
		{"without --public-url", []string{"sender", "service-account", "--id", id, "--out", file}, 2, "public-url"},
		{"without --out", []string{"sender", "service-account", "--id", id, "--public-url", "https://push.example"}, 2, "out"},
		{"of no sender", []string{"sender", "service-account", "--id", "999999999999", "--public-url", "https://push.example", "--out", file}, 1, "no such sender"},
		{"a bad public URL", []string{"sender", "service-account", "--id", id, "--public-url", "ftp://push.example", "--out", file}, 1, "public URL"},
		{"over a file", []string{"sender", "service-account", "--id", id, "--public-url", "https://push.example", "--out", exists}, 1, "exists"},
		{"make", []string{"sender", "service-account", "--id", id, "--public-url", "https://push.example:8443", "--out", file}, 0, "token_uri       https://push.example:8443/token"},
		{"list", []string{"sender", "service-account", "list", "--id", id}, 0, id + "@push.example"},
		{"revoke an unknown key", []string{"sender", "service-account", "revoke", "--id", id, "--key", "0123"}, 1, "no such service-account key"},
	} {
		code, _, _ := runCmdCase(t, cmd, tc)
		if _, err := os.Stat(file); code != 0 && tc.args[2] == "--id" && err == nil {
			t.Errorf("%s: left a file behind", tc.name)
		}
	}
	fi, err := os.Stat(file)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("service-account file: %v, %v; want mode 0600", fi, err)
	}
	raw, _ := os.ReadFile(file)
	var account map[string]string
	if err := json.Unmarshal(raw, &account); err != nil || account["type"] != "service_account" || account["project_id"] != id ||
		!strings.HasPrefix(account["private_key"], "-----BEGIN PRIVATE KEY-----") {
		t.Fatalf("service-account file %s: %v", raw, err)
	}
	code, stdout, stderr := cmd("sender", "service-account", "list", "--id", id, "--json")
	var keys []map[string]string
	if err := json.Unmarshal([]byte(stdout), &keys); code != 0 || err != nil || len(keys) != 1 || keys[0]["private_key_id"] != account["private_key_id"] {
		t.Fatalf("list --json: %d %q %q %v", code, stdout, stderr, err)
	}
	if strings.Contains(stdout, "PRIVATE KEY") {
		t.Error("list shows a private key")
	}
	if code, stdout, stderr := cmd("sender", "service-account", "revoke", "--id", id, "--key", account["private_key_id"]); code != 0 || !strings.Contains(stdout, "revoked") {
		t.Errorf("revoke: %d %q %q", code, stdout, stderr)
	}
	if code, stdout, _ := cmd("sender", "service-account", "list", "--id", id, "--json"); code != 0 || strings.TrimSpace(stdout) != "[]" {
		t.Errorf("list after revoke: %d %q", code, stdout)
	}
}
