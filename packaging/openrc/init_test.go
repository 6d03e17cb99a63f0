// SPDX-License-Identifier: Apache-2.0

package openrc

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenRCReadsTheScript has openrc-run, where OpenRC is installed,
// read the script's dependencies and description.
func TestOpenRCReadsTheScript(t *testing.T) {
	if _, err := exec.LookPath("openrc-run"); err != nil {
		t.Skip("no openrc-run")
	}
	// openrc-run wants the script as a file it may run, by the name of
	// the service.
	script := filepath.Join(t.TempDir(), "tetherd")
	if err := os.WriteFile(script, []byte(InitScript), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ command, want string }{
		{"depend", "need net\nuse dns logger\nafter firewall\n"},
		{"describe", "Tether push-messaging agent"},
	}
	for _, tt := range tests {
		// openrc-run exits 0 even when the shell rejects the script:
		// what it prints is the check.
		out, err := exec.Command("openrc-run", script, tt.command).CombinedOutput()
		if err != nil || !strings.Contains(string(out), tt.want) || strings.Contains(string(out), "rror") {
			t.Errorf("openrc-run tetherd %s: %v\n%s\nwant %q", tt.command, err, out, tt.want)
		}
	}
}
