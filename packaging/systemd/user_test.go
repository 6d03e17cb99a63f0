// SPDX-License-Identifier: Apache-2.0

package systemd

import (
	"os"
	"strings"
	"testing"
)

// TestUpDistributorActivation: the session bus's service file and the
// user unit agree, so that D-Bus activation starts the unit, and the unit
// is done starting once the distributor owns its name.
func TestUpDistributorActivation(t *testing.T) {
	unit, err := os.ReadFile("user/tether-up-distributor.service")
	if err != nil {
		t.Fatal(err)
	}
	service, err := os.ReadFile("../dbus/org.unifiedpush.Distributor.tether.service")
	if err != nil {
		t.Fatal(err)
	}
	const name, start = "org.unifiedpush.Distributor.tether", "/usr/bin/tetherctl up-distributor"
	tests := []struct {
		file string
		text []byte
		want []string
	}{
		{"tether-up-distributor.service", unit, []string{"\nType=dbus\n", "\nBusName=" + name + "\n", "\nExecStart=" + start + "\n", "\nWantedBy=default.target\n"}},
		{name + ".service", service, []string{"[D-BUS Service]\n", "\nName=" + name + "\n", "\nExec=" + start + "\n", "\nSystemdService=tether-up-distributor.service\n"}},
	}
	for _, tt := range tests {
		for _, want := range tt.want {
			if !strings.Contains(string(tt.text), want) {
				t.Errorf("%s lacks %q", tt.file, strings.TrimSpace(want))
			}
		}
	}
}
