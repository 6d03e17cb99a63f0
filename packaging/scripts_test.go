package packaging

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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

// TestMaintainerScripts runs the .rpm's and .apk's scripts, rendered for
// each package, with the arguments rpm and apk give them, against stubs
// of systemctl, rc-service and rc-update that record their calls: the
// macros' behaviour on install, upgrade and erase, and Alpine's policy of
// enabling nothing. (cross/package_test.go installs the .debs with dpkg.)
func TestMaintainerScripts(t *testing.T) {
	reload := []string{}
	if _, err := os.Stat("/run/systemd/system"); err == nil {
		reload = []string{"systemctl daemon-reload"}
	}
	tests := []struct {
		pkg, script string
		args        []string
		calls       []string
		says        string // in the output; "" for no output
	}{
		{"tetherd", "rpm/post", []string{"1"}, []string{"systemctl --no-reload preset tetherd.service"}, "set server in /etc/tether/agent.toml"},
		{"tether-server", "rpm/post", []string{"1"}, []string{"systemctl --no-reload preset tether-server.service"}, "enroll create"},
		{"tetherd", "rpm/post", []string{"2"}, nil, ""},
		{"tetherd", "rpm/preun", []string{"0"}, []string{"systemctl --no-reload disable --now tetherd.service"}, ""},
		{"tether-server", "rpm/preun", []string{"0"}, []string{"systemctl --no-reload disable --now tether-server.service"}, ""},
		{"tetherd", "rpm/preun", []string{"1"}, nil, ""},
		{"tetherd", "rpm/postun", []string{"0"}, reload, ""},
		{"tetherd", "rpm/postun", []string{"1"}, append(reload, "systemctl try-restart tetherd.service"), ""},
		{"tether-server", "rpm/postun", []string{"1"}, append(reload, "systemctl try-restart tether-server.service"), ""},
		{"tetherd", "apk/post-install", []string{"0.2.0"}, nil, "rc-update add tetherd default"},
		{"tetherd", "apk/post-install", []string{"0.2.1", "0.2.0"}, nil, ""},
		{"tetherd", "apk/pre-deinstall", []string{"0.2.0"}, []string{
			"rc-service --exists tetherd", "rc-service --quiet tetherd status",
			"rc-service tetherd stop", "rc-update --quiet --all del tetherd",
		}, ""},
	}
	dir := t.TempDir()
	stubs := filepath.Join(dir, "stubs")
	if err := os.Mkdir(stubs, 0o755); err != nil {
		t.Fatal(err)
	}
	// The state directory exists or is made; either way install is a stub.
	for _, name := range []string{"systemctl", "rc-service", "rc-update", "install"} {
		stub := "#!/bin/sh\necho \"" + name + " $*\" >>\"$CALLS\"\n"
		if err := os.WriteFile(filepath.Join(stubs, name), []byte(stub), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	for _, pkg := range []string{"tetherd", "tether-server"} {
		if out, err := exec.Command("sh", "scripts/render.sh", pkg, filepath.Join(dir, pkg)).CombinedOutput(); err != nil {
			t.Fatalf("render.sh %s: %v\n%s", pkg, err, out)
		}
	}
	for _, tt := range tests {
		t.Run(tt.pkg+"/"+tt.script+"/"+strings.Join(tt.args, ","), func(t *testing.T) {
			script := filepath.Join(dir, tt.pkg, tt.script)
			b, err := os.ReadFile(script)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(string(b), "@") {
				t.Errorf("a placeholder is left in %s", tt.script)
			}
			calls := filepath.Join(t.TempDir(), "calls")
			cmd := exec.Command("sh", append([]string{script}, tt.args...)...)
			cmd.Env = append(os.Environ(), "PATH="+stubs+":/usr/bin:/bin", "CALLS="+calls)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			if (tt.says == "") != (len(out) == 0) || !strings.Contains(string(out), tt.says) {
				t.Errorf("output %q, want %q", out, tt.says)
			}
			recorded, _ := os.ReadFile(calls)
			var got []string
			for _, c := range strings.Split(strings.TrimSuffix(string(recorded), "\n"), "\n") {
				if c != "" && !strings.HasPrefix(c, "install ") {
					got = append(got, c)
				}
			}
			if !slices.Equal(got, tt.calls) {
				t.Errorf("calls %q, want %q", got, tt.calls)
			}
		})
	}
}
