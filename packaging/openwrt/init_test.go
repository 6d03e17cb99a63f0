// SPDX-License-Identifier: Apache-2.0

package openwrt

import (
	"os/exec"
	"strings"
	"testing"
)

// TestInitScript runs the procd script's start_service under sh with
// procd's and OpenWrt's functions stubbed, the UCI options given by the
// case, and checks the instance it declares.
func TestInitScript(t *testing.T) {
	harness := `
procd_open_instance() { echo open; }
procd_set_param() { echo "param $*"; }
procd_append_param() { echo "append $*"; }
procd_close_instance() { echo close; }
user_exists() { [ "$1" = tether ]; }
config_load() { [ "$1" = tether ]; }
config_get() { eval "$1=\${UCI_$3:-}"; }
config_list_foreach() { for s in $UCI_server; do "$3" "$s"; done; }
mkdir() { echo "mkdir $*"; }
chown() { echo "chown $*"; }
chmod() { echo "chmod $*"; }
. ./tetherd.init
start_service
`
	common := []string{
		"open",
		"param command /usr/bin/tetherd run",
		"param user tether",
		"param term_timeout 30",
		"param file /etc/tether/agent.toml /etc/config/tether",
		"close",
	}
	tests := []struct {
		name    string
		uci     []string // UCI_<option>=value
		want    []string
		wantNot []string
	}{
		{
			name: "no UCI options",
			want: []string{
				"mkdir -p /var/run/tether /etc/tether/data",
				"chown tether:tether /var/run/tether /etc/tether/data",
			},
			wantNot: []string{"append"},
		},
		{
			name: "servers, store and heartbeat",
			uci:  []string{"UCI_server=wss://a.example:8443 wss://b.example:8443", "UCI_data_dir=/overlay/tether", "UCI_heartbeat=5m"},
			want: []string{
				"append command --server wss://a.example:8443",
				"append command --server wss://b.example:8443",
				"append command --data /overlay/tether",
				"append command --heartbeat 5m",
				"mkdir -p /var/run/tether /overlay/tether",
				"chown tether:tether /var/run/tether /overlay/tether",
			},
		},
		{
			name:    "only a server",
			uci:     []string{"UCI_server=wss://a.example:8443"},
			want:    []string{"append command --server wss://a.example:8443"},
			wantNot: []string{"--data", "--heartbeat"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmd := exec.Command("sh", "-ec", harness)
			cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, tt.uci...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("start_service: %v\n%s", err, out)
			}
			for _, want := range append(common, tt.want...) {
				if !strings.Contains(string(out), want+"\n") {
					t.Errorf("start_service did not %q:\n%s", want, out)
				}
			}
			for _, no := range tt.wantNot {
				if strings.Contains(string(out), no) {
					t.Errorf("start_service did %q:\n%s", no, out)
				}
			}
		})
	}
	if n := strings.Count(InitScript, "procd_set_param command "); n != 1 {
		t.Errorf("%d command lines; tetherd install rewrites exactly one", n)
	}
}
