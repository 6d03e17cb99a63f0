// SPDX-License-Identifier: Apache-2.0

//go:build !tether_noinstall

package service

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"tether/packaging/openrc"
	"tether/packaging/openwrt"
	"tether/packaging/systemd"
	"tether/packaging/sysv"
)

// shipped are the scripts Tether ships, as cmd/tetherd installs them.
var shipped = map[Init]string{
	InitSystemd: systemd.Unit,
	InitProcd:   openwrt.InitScript,
	InitOpenRC:  openrc.InitScript,
	InitSysV:    sysv.InitScript,
}

// commandOf reads the command line back out of a rendered script, as the
// shell would: nil for a systemd unit, whose quoting the table below pins
// down instead.
func commandOf(t *testing.T, kind Init, script string) []string {
	t.Helper()
	if kind == InitSystemd {
		return nil
	}
	var lines []string
	for _, cl := range layouts[kind].command {
		for _, l := range strings.Split(script, "\n") {
			if strings.HasPrefix(strings.TrimSpace(l), cl.prefix) {
				lines = append(lines, strings.TrimSpace(l))
			}
		}
	}
	return shellRead(t, kind, lines)
}

// shellRead runs a script's command lines in sh and returns the words
// they give the daemon: procd_set_param's, or those of the variables
// openrc-run and the SysV script eval.
func shellRead(t *testing.T, kind Init, lines []string) []string {
	t.Helper()
	var prog string
	switch kind {
	case InitProcd:
		prog = `procd_set_param() { shift; printf '%s\0' "$@"; }` + "\n" + strings.Join(lines, "\n") + "\n"
	case InitOpenRC:
		prog = strings.Join(lines, "\n") + "\n" + `eval "set -- $command_args"; printf '%s\0' "$command" "$@"` + "\n"
	case InitSysV:
		prog = strings.Join(lines, "\n") + "\n" + `eval "set -- $DAEMON_ARGS"; printf '%s\0' "$DAEMON" "$@"` + "\n"
	}
	out, err := exec.Command("sh", "-ec", prog).CombinedOutput()
	if err != nil {
		t.Fatalf("sh: %v\n%s\n%s", err, prog, out)
	}
	return strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
}

// FuzzShellCommand: whatever the words of tetherd's command line, the
// shell reads back the same ones from the lines install writes into the
// procd, OpenRC and SysV scripts.
func FuzzShellCommand(f *testing.F) {
	for _, seed := range []string{"run", "", "a b", "it's", `"$HOME"`, "`id`", "\\", "50%", "line\nbreak", "-n", "*", "~", "a;b|c&d", "'", "\t"} {
		f.Add("/usr/bin/tetherd", seed)
	}
	f.Fuzz(func(t *testing.T, exe, arg string) {
		if exe == "" || strings.ContainsRune(exe+arg, 0) {
			t.Skip("no empty binary, and no NUL in a command line")
		}
		args := []string{"run", arg}
		for _, kind := range []Init{InitProcd, InitOpenRC, InitSysV} {
			if layouts[kind].plainExe && shellQuote(exe) != exe {
				continue // New refuses it
			}
			var lines []string
			for _, cl := range layouts[kind].command {
				lines = append(lines, cl.prefix+cl.value(exe, args))
			}
			got := shellRead(t, kind, lines)
			if want := append([]string{exe}, args...); strings.Join(got, "\x00") != strings.Join(want, "\x00") {
				t.Errorf("%s: the shell reads %q from %q, want %q", kind, got, lines, want)
			}
		}
	})
}

func TestRenderScript(t *testing.T) {
	awkward := []string{"run", "--server=wss://h:8443/a b", "--data=/srv/it's $HOME/50%", `--x=a"b\c`}
	tests := []struct {
		name string
		kind Init
		exe  string
		args []string
		want string // a line of the result
	}{
		{"systemd as shipped", InitSystemd, "/usr/bin/tetherd", []string{"run"}, "ExecStart=/usr/bin/tetherd run\n"},
		{"systemd quoted", InitSystemd, "/opt/tether/bin/tetherd", awkward,
			`ExecStart=/opt/tether/bin/tetherd run "--server=wss://h:8443/a b" "--data=/srv/it's $$HOME/50%%" "--x=a\"b\\c"` + "\n"},
		{"procd as shipped", InitProcd, "/usr/bin/tetherd", []string{"run"}, "\tprocd_set_param command /usr/bin/tetherd run\n"},
		{"procd quoted", InitProcd, "/usr/sbin/tetherd", awkward, ""},
		{"openrc as shipped", InitOpenRC, "/usr/bin/tetherd", []string{"run"}, "command=/usr/bin/tetherd\ncommand_args=run\n"},
		{"openrc quoted", InitOpenRC, "/opt/bin/tetherd", awkward, ""},
		{"sysv as shipped", InitSysV, "/usr/bin/tetherd", []string{"run"}, "DAEMON=/usr/bin/tetherd\nDAEMON_ARGS=run\n"},
		{"sysv quoted", InitSysV, "/opt/my bin/tetherd", awkward, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := renderScript(layouts[tt.kind].command, shipped[tt.kind], tt.exe, tt.args)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(got, tt.want) {
				t.Errorf("rendered:\n%s\nwant the lines %q", got, tt.want)
			}
			if cmd := commandOf(t, tt.kind, got); cmd != nil {
				want := append([]string{tt.exe}, tt.args...)
				if strings.Join(cmd, "\x00") != strings.Join(want, "\x00") {
					t.Errorf("the shell reads the command line as %q, want %q", cmd, want)
				}
			}
			// Everything else stays as it was.
			strip := func(s string) string {
				var keep []string
			lines:
				for _, l := range strings.Split(s, "\n") {
					for _, cl := range layouts[tt.kind].command {
						if strings.HasPrefix(strings.TrimSpace(l), cl.prefix) {
							continue lines
						}
					}
					keep = append(keep, l)
				}
				return strings.Join(keep, "\n")
			}
			if strip(got) != strip(shipped[tt.kind]) {
				t.Errorf("rendered:\n%s\nchanged more than the command line of the shipped script", got)
			}
		})
	}
}

func TestRenderScriptRefuses(t *testing.T) {
	tests := []struct {
		name, script, err string
	}{
		{"no command line", "[Service]\nType=simple\n", "found 0"},
		{"two command lines", "ExecStart=/bin/true\nExecStart=/bin/false\n", "found 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := renderScript(layouts[InitSystemd].command, tt.script, "/x", nil)
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err = %v, want one saying %q", err, tt.err)
			}
		})
	}
	if _, err := New(Config{Name: "tetherd", Init: InitSystemd, Scripts: map[Init]string{InitSystemd: "[Service]\n"}}); err == nil || !strings.Contains(err.Error(), "ExecStart") {
		t.Errorf("New with a unit lacking ExecStart: %v", err)
	}
	if _, err := New(Config{Name: "tetherd", Init: InitOpenRC, Scripts: map[Init]string{InitSystemd: systemd.Unit}}); err == nil || !strings.Contains(err.Error(), "no openrc script") {
		t.Errorf("New without a script for the init system: %v", err)
	}
	if _, err := New(Config{Name: "tetherd", Root: t.TempDir(), Scripts: shipped}); err == nil || !strings.Contains(err.Error(), "choose one") {
		t.Errorf("New under a root without an init system: %v", err)
	}
	if _, err := New(Config{Name: "tetherd", Executable: "/opt/my bin/tetherd", Init: InitOpenRC, Scripts: shipped}); err == nil || !strings.Contains(err.Error(), "path of letters") {
		t.Errorf("New for OpenRC with a path openrc-run would split: %v", err)
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

// TestDetect builds the traces each service manager leaves in a root
// directory and checks which one detect names.
func TestDetect(t *testing.T) {
	tests := []struct {
		name  string
		paths []string
		want  Init
	}{
		{"systemd with compatibility scripts", []string{"/run/systemd/system/", "/etc/init.d/"}, InitSystemd},
		{"OpenWrt", []string{"/sbin/procd", "/etc/init.d/"}, InitProcd},
		{"Alpine", []string{"/run/openrc/softlevel", "/etc/init.d/"}, InitOpenRC},
		{"OpenRC installed, not booted", []string{"/run/openrc/deptree", "/sbin/openrc-run", "/etc/init.d/"}, InitSysV},
		{"SysV", []string{"/etc/init.d/"}, InitSysV},
		{"none", nil, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			for _, p := range tt.paths {
				p = root + p
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if !strings.HasSuffix(p, "/") {
					if err := os.WriteFile(p, nil, 0o755); err != nil {
						t.Fatal(err)
					}
				}
			}
			got, err := detect(root)
			if tt.want == "" {
				if !errors.Is(err, ErrNoInit) {
					t.Errorf("detect = %q, %v, want ErrNoInit", got, err)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("detect = %q, %v, want %s", got, err, tt.want)
			}
		})
	}
}

// TestInstallUnderRoot installs into a root directory, as a firmware
// build or a package would, for each service manager: the script with its
// mode, the links that enable it, and nothing asked of a service manager;
// then uninstalls.
func TestInstallUnderRoot(t *testing.T) {
	tests := []struct {
		kind   Init
		script string
		mode   os.FileMode
		links  map[string]string
	}{
		{InitSystemd, "/etc/systemd/system/tetherd.service", 0o644, map[string]string{
			"/etc/systemd/system/multi-user.target.wants/tetherd.service": "/etc/systemd/system/tetherd.service",
		}},
		{InitProcd, "/etc/init.d/tetherd", 0o755, map[string]string{
			"/etc/rc.d/S95tetherd": "../init.d/tetherd",
			"/etc/rc.d/K10tetherd": "../init.d/tetherd",
		}},
		{InitOpenRC, "/etc/init.d/tetherd", 0o755, map[string]string{
			"/etc/runlevels/default/tetherd": "/etc/init.d/tetherd",
		}},
		{InitSysV, "/etc/init.d/tetherd", 0o755, map[string]string{
			"/etc/rc2.d/S95tetherd": "../init.d/tetherd",
			"/etc/rc3.d/S95tetherd": "../init.d/tetherd",
			"/etc/rc4.d/S95tetherd": "../init.d/tetherd",
			"/etc/rc5.d/S95tetherd": "../init.d/tetherd",
			"/etc/rc0.d/K05tetherd": "../init.d/tetherd",
			"/etc/rc1.d/K05tetherd": "../init.d/tetherd",
			"/etc/rc6.d/K05tetherd": "../init.d/tetherd",
		}},
	}
	// No service manager may be asked anything under a root.
	t.Setenv("PATH", t.TempDir())
	ctx := context.Background()
	for _, tt := range tests {
		t.Run(string(tt.kind), func(t *testing.T) {
			root := t.TempDir()
			m, err := New(Config{Name: "tetherd", Executable: "/usr/bin/tetherd", Arguments: []string{"run", "--log-level=debug"}, Init: tt.kind, Root: root, Scripts: shipped})
			if err != nil {
				t.Fatal(err)
			}
			if err := m.Control(ctx, "install"); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(root, tt.script)
			if m.Script() != path {
				t.Errorf("Script() = %s, want %s", m.Script(), path)
			}
			fi, err := os.Stat(path)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != tt.mode {
				t.Errorf("%s has mode %v, want %v", tt.script, fi.Mode(), tt.mode)
			}
			want, _ := renderScript(layouts[tt.kind].command, shipped[tt.kind], "/usr/bin/tetherd", []string{"run", "--log-level=debug"})
			if got, _ := os.ReadFile(path); string(got) != want {
				t.Errorf("%s:\n%s\nwant:\n%s", tt.script, got, want)
			}
			var found int
			filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err != nil || d.Type()&os.ModeSymlink == 0 {
					return err
				}
				found++
				rel := strings.TrimPrefix(p, root)
				target, _ := os.Readlink(p)
				if wt, ok := tt.links[rel]; !ok || target != wt {
					t.Errorf("link %s -> %s, want %q", rel, target, wt)
				}
				return nil
			})
			if found != len(tt.links) {
				t.Errorf("%d links, want %d: %v", found, len(tt.links), tt.links)
			}

			if err := m.Control(ctx, "install"); !errors.Is(err, ErrInstalled) {
				t.Errorf("second install: %v, want ErrInstalled", err)
			}
			if err := m.Control(ctx, "start"); err == nil || !strings.Contains(err.Error(), "not controlled") {
				t.Errorf("start under a root: %v", err)
			}
			if err := m.Control(ctx, "uninstall"); err != nil {
				t.Fatal(err)
			}
			filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
				if err == nil && !d.IsDir() {
					t.Errorf("%s is left after uninstall", p)
				}
				return err
			})
			if err := m.Control(ctx, "uninstall"); !errors.Is(err, ErrNotInstalled) {
				t.Errorf("second uninstall: %v, want ErrNotInstalled", err)
			}
			if _, err := m.Status(ctx); !errors.Is(err, ErrNotInstalled) {
				t.Errorf("status: %v, want ErrNotInstalled", err)
			}
		})
	}
}

// TestInstalledUnitVerifies: systemd-analyze verify accepts the unit
// install writes, with flags on its command line.
func TestInstalledUnitVerifies(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("no systemd-analyze")
	}
	root := t.TempDir()
	exe, err := os.Executable() // verify wants a binary that exists
	if err != nil {
		t.Fatal(err)
	}
	m, err := New(Config{Name: "tetherd", Executable: exe, Arguments: []string{"run", "--data=/srv/tether data", "--server=wss://h/50%"}, Init: InitSystemd, Root: root, Scripts: shipped})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Control(context.Background(), "install"); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("systemd-analyze", "verify", m.Script()).CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
