// SPDX-License-Identifier: Apache-2.0

package systemd

import (
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

func TestUnitRunsTheShippedBinary(t *testing.T) {
	if !strings.Contains(Unit, "\nExecStart="+Executable+" run\n") {
		t.Errorf("the unit does not run %s run:\n%s", Executable, Unit)
	}
	for _, want := range []string{"Type=notify", "User=tether", "StateDirectory=tether", "RuntimeDirectory=tether", "CapabilityBoundingSet=\n"} {
		if !strings.Contains(Unit, want) {
			t.Errorf("the unit lacks %q", want)
		}
	}
}

// TestUnitSecurity keeps the exposure score systemd-analyze gives each
// shipped unit at the figure its documentation reports, or lower: tetherd's
// in docs/firmware.md, tether-server's in the unit's own comment.
func TestUnitSecurity(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("no systemd-analyze")
	}
	for _, tc := range []struct {
		unit string
		max  float64
	}{
		{"tetherd.service", 1.3},
		{"tether-server.service", 1.4},
	} {
		t.Run(tc.unit, func(t *testing.T) {
			out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--threshold=15", tc.unit).CombinedOutput()
			if err != nil {
				if strings.Contains(string(out), "offline") && strings.Contains(string(out), "unrecognized") {
					t.Skip("systemd-analyze has no --offline")
				}
				t.Fatalf("systemd-analyze security: %v\n%s", err, out)
			}
			prefix := "Overall exposure level for " + tc.unit + ": "
			i := strings.Index(string(out), prefix)
			if i < 0 {
				t.Fatalf("no overall exposure level in:\n%s", out)
			}
			field := strings.Fields(string(out)[i+len(prefix):])[0]
			score, err := strconv.ParseFloat(field, 64)
			if err != nil {
				t.Fatalf("exposure level %q: %v", field, err)
			}
			if score > tc.max {
				t.Errorf("exposure level %.1f, above the %.1f documented:\n%s", score, tc.max, out)
			}
		})
	}
}

// TestServerUnit checks what the server's packages and docs rely on: the
// unit runs the packaged binary with the packaged config file as the
// tether-server user, tells systemd when it is ready and reloads on
// SIGHUP.
func TestServerUnit(t *testing.T) {
	unit, err := os.ReadFile("tether-server.service")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"\nExecStart=/usr/bin/tether-server serve --config /etc/tether/server.toml\n",
		"\nExecReload=/bin/kill -HUP $MAINPID\n",
		"\nType=notify\n", "\nUser=tether-server\n", "\nGroup=tether-server\n",
		"\nStateDirectory=tether-server\n", "\nStateDirectoryMode=0700\n", "\nNoNewPrivileges=yes\n",
	} {
		if !strings.Contains(string(unit), want) {
			t.Errorf("tether-server.service lacks %q", strings.TrimSpace(want))
		}
	}
}
