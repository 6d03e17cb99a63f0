// SPDX-License-Identifier: Apache-2.0

package main

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"tether/internal/conftoml"
)

// TestPackagedConfigNamesEveryFlag keeps the packaged server.toml a
// complete list: every serve flag has its snake_case key there, set or
// commented out, so that an operator finds each setting in the file the
// package installs; and the file is TOML.
func TestPackagedConfigNamesEveryFlag(t *testing.T) {
	text, err := os.ReadFile("../../packaging/config/server.toml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := conftoml.Parse(text); err != nil {
		t.Fatalf("packaging/config/server.toml: %v", err)
	}
	code, _, help := runCmd(t, "serve", "-h")
	flags := regexp.MustCompile(`(?m)^  -([a-z-]+)`).FindAllStringSubmatch(help, -1)
	if code != 0 || len(flags) < 10 {
		t.Fatalf("serve -h: exit %d, %d flags:\n%s", code, len(flags), help)
	}
	for _, f := range flags {
		if f[1] == "config" {
			continue // the file itself
		}
		key := strings.ReplaceAll(f[1], "-", "_")
		if !regexp.MustCompile(`(?m)^#?` + key + ` = `).Match(text) {
			t.Errorf("packaging/config/server.toml has no %s (--%s)", key, f[1])
		}
	}
}
