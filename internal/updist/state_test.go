// SPDX-License-Identifier: Apache-2.0

package updist

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

func TestCheckRegistration(t *testing.T) {
	tests := []struct {
		name, service, token, wantErr string
	}{
		{"good", "org.example.App", "0d9a6a66-2f5c-4b5e-9a43-5b8e6f1a0c11", ""},
		{"unique name", ":1.42", "t", "well-known"},
		{"no dot", "app", "t", "well-known"},
		{"no service", "", "t", "well-known"},
		{"no token", "org.example.App", "", "1 to 100"},
		{"long token", "org.example.App", strings.Repeat("a", 101), "1 to 100"},
		{"space", "org.example.App", "a b", "space"},
		{"control", "org.example.App", "a\x01", "control"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkRegistration(tt.service, tt.token)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("checkRegistration(%q, %q) = %v, want %q", tt.service, tt.token, err, tt.wantErr)
			}
		})
	}
}

// The state file round-trips, is the user's alone, and a missing one is
// no registrations.
func TestSaveLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "unifiedpush.json")
	if regs, err := load(path); err != nil || regs != nil {
		t.Fatalf("load of no file = %v, %v", regs, err)
	}
	want := []registration{
		{Token: "t1", Service: "org.example.A", Description: "A", VAPID: "BNc", Endpoint: "https://p/up/x", Version: 2},
		{Token: "t2", Service: "org.example.B", Endpoint: "https://p/up/y", Version: 1},
	}
	if err := save(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := load(path)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Errorf("load = %+v, %v; want %+v", got, err, want)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("state file mode %v, %v; want 0600", fi.Mode(), err)
	}
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("state directory mode %v, %v; want 0700", fi.Mode(), err)
	}
	if err := os.WriteFile(path, []byte(`{"registrations":[{"token":"","service":"org.example.A"}]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := load(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("load of a bad registration: %v, want an error naming the file", err)
	}
}

func TestDefaultStateFile(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"XDG_STATE_HOME": "/s", "HOME": "/h"}, "/s/tether/unifiedpush.json"},
		{map[string]string{"HOME": "/h"}, "/h/.local/state/tether/unifiedpush.json"},
		{map[string]string{}, ""},
	}
	for _, tt := range tests {
		got, err := DefaultStateFile(func(k string) string { return tt.env[k] })
		if got != tt.want || (err != nil) != (tt.want == "") {
			t.Errorf("DefaultStateFile(%v) = %q, %v; want %q", tt.env, got, err, tt.want)
		}
	}
}

// FuzzLoad reads arbitrary state files: an error or registrations that
// pass the checks, never a panic.
func FuzzLoad(f *testing.F) {
	f.Add([]byte(`{"registrations":[{"token":"t","service":"org.example.A","endpoint":"https://p/up/x","version":2}]}`))
	f.Add([]byte(`{"registrations":null}`))
	f.Add([]byte(`[]`))
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "state.json")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		regs, err := load(path)
		if err != nil {
			return
		}
		for _, r := range regs {
			if checkRegistration(r.Service, r.Token) != nil {
				t.Fatalf("load passed a bad registration %+v", r)
			}
		}
	})
}
