package packaging

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestInitScripts checks every shell init script Tether ships: sh -n
// reads it, it runs tetherd run as the tether user with its output going
// to the system log, and it writes no log file itself.
func TestInitScripts(t *testing.T) {
	tests := []struct {
		path string
		want []string
	}{
		{"openwrt/tetherd.init", []string{
			"\tprocd_set_param command /usr/bin/tetherd run\n",
			"procd_set_param user tether\n",
			"\tprocd_set_param stderr 1\n",
		}},
		{"openrc/tetherd.initd", []string{
			"\ncommand=/usr/bin/tetherd\n",
			"\ncommand_args=\"run\"\n",
			"\ncommand_user=\"tether:tether\"\n",
			"\noutput_logger=\"logger ",
			"\nerror_logger=\"logger ",
		}},
		{"sysv/tetherd.init", []string{
			"\nDAEMON=/usr/bin/tetherd\n",
			"\nDAEMON_ARGS=\"run\"\n",
			"\nRUN_AS=tether\n",
			"-c \"$RUN_AS:$RUN_AS\"",
			"| logger -t tetherd",
			"# Default-Start:     2 3 4 5\n",
			"# Default-Stop:      0 1 6\n",
		}},
	}
	for _, tt := range tests {
		t.Run(tt.path, func(t *testing.T) {
			if out, err := exec.Command("sh", "-n", tt.path).CombinedOutput(); err != nil {
				t.Fatalf("sh -n: %v\n%s", err, out)
			}
			b, err := os.ReadFile(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range tt.want {
				if !strings.Contains(string(b), want) {
					t.Errorf("the script lacks %q", want)
				}
			}
			if strings.Contains(string(b), "/var/log") {
				t.Error("the script writes to /var/log itself; tetherd's output goes to the system log")
			}
		})
	}
}
