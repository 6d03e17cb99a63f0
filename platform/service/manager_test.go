//go:build !tether_noinstall

package service

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const unit = `[Unit]
Description=Test

[Service]
ExecStart=/usr/bin/tetherd run
User=tether
`

const procdScript = `#!/bin/sh /etc/rc.common
USE_PROCD=1
start_service() {
	procd_open_instance
	procd_set_param command /usr/bin/tetherd run
	procd_close_instance
}
`

func TestRenderScript(t *testing.T) {
	tests := []struct {
		name   string
		kind   Init
		script string
		exe    string
		args   []string
		want   string // the command line in the result
		err    string
	}{
		{"systemd as shipped", InitSystemd, unit, "/usr/bin/tetherd", []string{"run"}, "ExecStart=/usr/bin/tetherd run\n", ""},
		{"systemd with flags", InitSystemd, unit, "/opt/tether/bin/tetherd", []string{"run", "--server", "wss://h:8443/a b", "--log-level", "debug"},
			`ExecStart=/opt/tether/bin/tetherd run --server "wss://h:8443/a b" --log-level debug` + "\n", ""},
		{"systemd specifiers", InitSystemd, unit, "/usr/bin/tetherd", []string{"run", "--data", "/var/lib/50%$HOME"},
			"ExecStart=/usr/bin/tetherd run --data /var/lib/50%%$$HOME\n", ""},
		{"systemd quotes", InitSystemd, unit, "/usr/bin/tetherd", []string{`a"b\c`}, `ExecStart=/usr/bin/tetherd "a\"b\\c"` + "\n", ""},
		{"procd", InitProcd, procdScript, "/usr/sbin/tetherd", []string{"run", "--server", "wss://h it's"},
			"\tprocd_set_param command /usr/sbin/tetherd run --server 'wss://h it'\\''s'\n", ""},
		{"no command line", InitSystemd, "[Service]\nType=simple\n", "/x", nil, "", "found 0"},
		{"two command lines", InitSystemd, unit + "ExecStart=/bin/true\n", "/x", nil, "", "found 2"},
		{"template braces", InitSystemd, unit + "Environment=X={{Name}}\n", "/x", nil, "", "braces"},
		{"no shipped script for sysv", InitSysV, unit, "/x", nil, "", "no command line"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := renderScript(tt.kind, tt.script, tt.exe, tt.args)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one saying %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(got, tt.want) {
				t.Errorf("rendered:\n%s\nwant the line %q", got, tt.want)
			}
			// Everything else stays as it was.
			strip := func(s string) string {
				var keep []string
				for _, l := range strings.Split(s, "\n") {
					if !strings.Contains(l, "ExecStart=") && !strings.Contains(l, "procd_set_param command") {
						keep = append(keep, l)
					}
				}
				return strings.Join(keep, "\n")
			}
			if strip(got) != strip(tt.script) {
				t.Errorf("rendered:\n%s\nchanged more than the command line of:\n%s", got, tt.script)
			}
		})
	}
}

func TestParseInit(t *testing.T) {
	for in, want := range map[string]Init{"": InitAuto, "auto": InitAuto, "systemd": InitSystemd, "procd": InitProcd, "openrc": InitOpenRC, "sysv": InitSysV} {
		if got, err := ParseInit(in); err != nil || got != want {
			t.Errorf("ParseInit(%q) = %q, %v", in, got, err)
		}
	}
	if _, err := ParseInit("upstart"); err == nil {
		t.Error("ParseInit accepted upstart")
	}
}

// stubSystemctl puts a systemctl on PATH that logs its arguments and
// answers is-active with state.
func stubSystemctl(t *testing.T, state string) (logPath string) {
	dir := t.TempDir()
	logPath = filepath.Join(dir, "calls")
	script := "#!/bin/sh\necho \"$*\" >> " + logPath + "\n" +
		"case \"$1\" in is-active) echo " + state + ";; list-unit-files) echo tetherd.service enabled;; esac\n"
	if err := os.WriteFile(filepath.Join(dir, "systemctl"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return logPath
}

func TestManagerControlsSystemd(t *testing.T) {
	calls := stubSystemctl(t, "active")
	m, err := New(Config{Name: "tetherd", Init: InitSystemd, Scripts: map[Init]string{InitSystemd: unit}})
	if err != nil {
		t.Fatal(err)
	}
	if m.System() != "linux-systemd" {
		t.Errorf("system %q", m.System())
	}
	for _, a := range []string{"start", "stop", "restart"} {
		if err := m.Control(a); err != nil {
			t.Fatalf("%s: %v", a, err)
		}
	}
	if st, err := m.Status(); err != nil || st != "running" {
		t.Errorf("status %q, %v", st, err)
	}
	b, err := os.ReadFile(calls)
	if err != nil {
		t.Fatal(err)
	}
	want := "start tetherd.service\nstop tetherd.service\nrestart tetherd.service\nis-active tetherd.service\n"
	if string(b) != want {
		t.Errorf("systemctl calls:\n%s\nwant:\n%s", b, want)
	}
	if err := m.Control("reload"); err == nil {
		t.Error("Control accepted reload")
	}
}

func TestManagerStatusStopped(t *testing.T) {
	stubSystemctl(t, "inactive")
	m, err := New(Config{Name: "tetherd", Init: InitSystemd})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := m.Status(); err != nil || st != "stopped" {
		t.Errorf("status %q, %v", st, err)
	}
	m, err = New(Config{Name: "absent", Init: InitSystemd})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := m.Status(); !errors.Is(err, ErrNotInstalled) {
		t.Errorf("status of a unit systemctl does not list: %v, want ErrNotInstalled", err)
	}
}

func TestManagerRejectsBadScript(t *testing.T) {
	_, err := New(Config{Name: "tetherd", Init: InitSystemd, Scripts: map[Init]string{InitSystemd: "[Service]\n"}})
	if err == nil || !strings.Contains(err.Error(), "ExecStart") {
		t.Errorf("New with a unit lacking ExecStart: %v", err)
	}
}
