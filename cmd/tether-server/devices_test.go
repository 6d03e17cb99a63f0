// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tether/server/store"
)

func TestEnrollCommandsWithoutServer(t *testing.T) {
	for _, tgt := range targets(t) {
		t.Run(tgt.name, func(t *testing.T) {
			at := tgt.args()
			cmd := func(args ...string) (int, string, string) {
				t.Helper()
				return runCmd(t, append(args, at...)...)
			}
			code, stdout, stderr := cmd("enroll", "create", "--json")
			var one map[string]string
			if err := json.Unmarshal([]byte(stdout), &one); code != 0 || err != nil || len(one) != 2 || !strings.HasPrefix(one["id"], "ek-") || len(one["key"]) != 43 {
				t.Fatalf("enroll create --json: %d %q %q %v", code, stdout, stderr, err)
			}
			code, stdout, stderr = cmd("enroll", "create", "--uses", "50", "--expires", "24h")
			if code != 0 || !strings.Contains(stdout, "key ") || !strings.Contains(stderr, "only this once") {
				t.Fatalf("enroll create: %d %q %q", code, stdout, stderr)
			}
			if code, _, stderr := cmd("enroll", "revoke", "--id", one["id"]); code != 0 {
				t.Fatalf("enroll revoke: %d %s", code, stderr)
			}
			if code, _, stderr := cmd("enroll", "revoke", "--id", "ek-000000000000"); code != 1 || !strings.Contains(stderr, "no such enrollment key") {
				t.Errorf("revoke of an unknown key: %d %q", code, stderr)
			}
			code, stdout, _ = cmd("enroll", "list", "--json")
			var keys []struct {
				ID      string    `json:"id"`
				Uses    int       `json:"uses"`
				Usable  bool      `json:"usable"`
				Revoked time.Time `json:"revoked"`
				Key     string    `json:"key"`
			}
			if err := json.Unmarshal([]byte(stdout), &keys); code != 0 || err != nil || len(keys) != 2 {
				t.Fatalf("enroll list --json: %d %q %v", code, stdout, err)
			}
			for _, k := range keys {
				revoked := k.ID == one["id"]
				if k.Usable == revoked || revoked == k.Revoked.IsZero() || k.Key != "" {
					t.Errorf("listed %+v", k)
				}
			}
			code, stdout, _ = cmd("enroll", "list")
			if code != 0 || !strings.Contains(stdout, "revoked") || !strings.Contains(stdout, "0/50") || strings.Contains(stdout, one["key"]) {
				t.Errorf("enroll list: %d %q", code, stdout)
			}
		})
	}
}

// TestDeviceCommandsOnStoppedStore lists, shows, revokes and removes
// devices in the store of a stopped server.
func TestDeviceCommandsOnStoppedStore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "data")
	if code, _, stderr := runCmd(t, "sender", "add", "--data", dir, "--name", "x"); code != 0 {
		t.Fatalf("sender add: %s", stderr)
	}
	st, err := store.Open(filepath.Join(dir, "server.db"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	senders, _ := st.Senders(ctx)
	a, err := st.AddDevice(ctx, store.Device{SecretHash: []byte("h"), Created: time.Now(), Agent: "tetherd/1.0", PowerMode: "mains", EnrolledBy: "fleet"})
	if err != nil {
		t.Fatal(err)
	}
	b, _ := st.AddDevice(ctx, store.Device{SecretHash: []byte("i"), Created: time.Now()})
	reg, err := st.Register(ctx, a.ID, "com.example.app", senders[0].ID, "", time.Now())
	st.Close()
	if err != nil {
		t.Fatal(err)
	}
	cmd := func(args ...string) (int, string, string) {
		t.Helper()
		return runCmd(t, append(args, "--data", dir)...)
	}
	code, stdout, _ := cmd("device", "list", "--json")
	var list []map[string]any
	if err := json.Unmarshal([]byte(stdout), &list); code != 0 || err != nil || len(list) != 2 {
		t.Fatalf("device list --json: %d %q %v", code, stdout, err)
	}
	for _, d := range list {
		for _, field := range []string{"id", "created", "last_seen", "agent", "power_mode", "registrations", "revoked"} {
			if _, ok := d[field]; !ok {
				t.Errorf("device list --json: no %s in %v", field, d)
			}
		}
		if d["id"] == a.ID && (d["registrations"] != 1.0 || d["agent"] != "tetherd/1.0" || d["revoked"] != false) {
			t.Errorf("listed %v", d)
		}
		if strings.Contains(stdout, reg.Token) || strings.Contains(stdout, "secret") {
			t.Error("device list shows a token or a secret")
		}
	}
	code, stdout, _ = cmd("device", "list")
	if code != 0 || !strings.Contains(stdout, "LAST SEEN") || !strings.Contains(stdout, a.ID) || !strings.Contains(stdout, b.ID) {
		t.Errorf("device list: %d %q", code, stdout)
	}
	if code, stdout, _ := cmd("device", "show", "--id", a.ID); code != 0 || !strings.Contains(stdout, "enrolled_by") || !strings.Contains(stdout, "fleet") {
		t.Errorf("device show: %d %q", code, stdout)
	}
	if code, stdout, stderr := cmd("device", "revoke", "--id", a.ID); code != 0 || !strings.Contains(stdout, "revoked device "+a.ID) {
		t.Fatalf("device revoke: %d %q %q", code, stdout, stderr)
	}
	code, stdout, _ = cmd("device", "show", "--id", a.ID, "--json")
	var shown map[string]any
	if err := json.Unmarshal([]byte(stdout), &shown); code != 0 || err != nil || shown["revoked"] != true || shown["registrations"] != 0.0 {
		t.Errorf("device show after revoke: %d %q %v", code, stdout, err)
	}
	if code, _, stderr := cmd("device", "remove", "--id", b.ID); code != 0 {
		t.Fatalf("device remove: %d %q", code, stderr)
	}
	if code, _, stderr := cmd("device", "show", "--id", b.ID); code != 1 || !strings.Contains(stderr, "no such device") {
		t.Errorf("show of a removed device: %d %q", code, stderr)
	}
}

// TestServeRefusesUnsafeEnrollment: no way to enroll, a short fleet key,
// and a key file others can read each stop the server at start, saying
// why.
func TestServeRefusesUnsafeEnrollment(t *testing.T) {
	readable := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(readable, []byte(strings.Repeat("k", 40)), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "no way for devices to enroll"},
		{[]string{"--enroll-key", "a"}, "use at least 22"},
		{[]string{"--enroll-key-file", readable}, "chmod 600"},
	} {
		args := append([]string{"serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "data")}, tc.args...)
		if code, _, stderr := runCmd(t, args...); code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%q: exit %d, %q; want 1 saying %q", tc.args, code, stderr, tc.want)
		}
	}
}
