package openwrt

import (
	"os/exec"
	"strings"
	"testing"
)

// TestInitScript runs the procd script's start_service under sh with
// procd's and OpenWrt's functions stubbed, and checks the instance it
// declares.
func TestInitScript(t *testing.T) {
	harness := `
procd_open_instance() { echo open; }
procd_set_param() { echo "param $*"; }
procd_close_instance() { echo close; }
user_exists() { [ "$1" = tether ]; }
mkdir() { echo "mkdir $*"; }
chown() { echo "chown $*"; }
chmod() { echo "chmod $*"; }
. ./tetherd.init
start_service
`
	out, err := exec.Command("sh", "-ec", harness).CombinedOutput()
	if err != nil {
		t.Fatalf("start_service: %v\n%s", err, out)
	}
	for _, want := range []string{
		"mkdir -p /var/run/tether /etc/tether/data",
		"chown tether:tether /var/run/tether /etc/tether/data",
		"open",
		"param command /usr/bin/tetherd run",
		"param user tether",
		"param term_timeout 30",
		"param file /etc/tether/agent.toml",
		"close",
	} {
		if !strings.Contains(string(out), want+"\n") {
			t.Errorf("start_service did not %q:\n%s", want, out)
		}
	}
	if n := strings.Count(InitScript, "procd_set_param command "); n != 1 {
		t.Errorf("%d command lines; tetherd install rewrites exactly one", n)
	}
}
