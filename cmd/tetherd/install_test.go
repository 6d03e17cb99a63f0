// SPDX-License-Identifier: Apache-2.0

//go:build !tether_noinstall

package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"tether/packaging/systemd"
)

// serviceHost runs `tetherd ARGS` (this test binary) as the service
// commands would run on a device: as root, with a stub systemctl on PATH
// that logs its calls, and with dir bind-mounted over /etc/systemd/system in
// a mount namespace of its own, so that the unit lands in dir and this
// machine's systemd configuration is untouched.
type serviceHost struct {
	t     *testing.T
	units string // stands for /etc/systemd/system
	calls string // what systemctl was asked
	bin   string
}

func newServiceHost(t *testing.T) *serviceHost {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("installing a service needs root")
	}
	for _, tool := range []string{"unshare", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	if fi, err := os.Stat("/etc/systemd/system"); err != nil || !fi.IsDir() {
		t.Skip("no /etc/systemd/system to mount over")
	}
	if out, err := exec.Command("unshare", "--mount", "true").CombinedOutput(); err != nil {
		t.Skipf("no mount namespaces here: %v: %s", err, out)
	}
	dir := t.TempDir()
	h := &serviceHost{t: t, units: filepath.Join(dir, "units"), calls: filepath.Join(dir, "calls"), bin: filepath.Join(dir, "bin")}
	for _, d := range []string{h.units, h.bin} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// is-active exits with the status in the file active, 0 without it.
	stub := "#!/bin/sh\necho \"$*\" >> " + h.calls + "\n" +
		"[ \"$1\" != is-active ] || exit \"$(cat " + filepath.Join(dir, "active") + " 2>/dev/null || echo 0)\"\n"
	if err := os.WriteFile(filepath.Join(h.bin, "systemctl"), []byte(stub), 0o755); err != nil {
		t.Fatal(err)
	}
	return h
}

func (h *serviceHost) tetherd(args ...string) (string, error) {
	h.t.Helper()
	script := `mount --bind "$1" /etc/systemd/system && shift && exec "$@"`
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", script, "sh", h.units, os.Args[0]}, args...)...)
	cmd.Env = append(os.Environ(), "TETHERD_TEST_MAIN=1", "PATH="+h.bin+":"+os.Getenv("PATH"))
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (h *serviceHost) systemctlCalls() string {
	b, _ := os.ReadFile(h.calls)
	os.Remove(h.calls)
	return string(b)
}

// TestInstallWritesTheShippedUnit: `tetherd install` under systemd writes
// the unit the packages ship, running this binary, enables it, and
// `tetherd uninstall` takes it away.
func TestInstallWritesTheShippedUnit(t *testing.T) {
	h := newServiceHost(t)
	out, err := h.tetherd("install", "--init", "systemd")
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	unitPath := filepath.Join(h.units, "tetherd.service")
	got, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatalf("no unit written: %v\n%s", err, out)
	}
	want := strings.Replace(systemd.Unit, "ExecStart="+systemd.Executable+" run\n", "ExecStart="+os.Args[0]+" run\n", 1)
	if string(got) != want {
		t.Errorf("installed unit:\n%s\nwant the shipped one running this binary:\n%s", got, want)
	}
	if calls := h.systemctlCalls(); calls != "daemon-reload\n" {
		t.Errorf("systemctl calls:\n%s", calls)
	}
	wants := filepath.Join(h.units, "multi-user.target.wants", "tetherd.service")
	if target, err := os.Readlink(wants); err != nil || target != "/etc/systemd/system/tetherd.service" {
		t.Errorf("not enabled: %s -> %q, %v", wants, target, err)
	}
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		if out, err := exec.Command("systemd-analyze", "verify", unitPath).CombinedOutput(); err != nil {
			t.Errorf("systemd-analyze verify rejects the installed unit: %v\n%s", err, out)
		}
	}

	// A second install does not overwrite the first.
	if out, err := h.tetherd("install", "--init", "systemd"); err == nil || !strings.Contains(out, "exists") {
		t.Errorf("second install: %v\n%s", err, out)
	}
	h.systemctlCalls()

	for _, action := range []string{"start", "stop", "restart"} {
		if out, err := h.tetherd(action, "--init", "systemd"); err != nil {
			t.Errorf("%s: %v\n%s", action, err, out)
		}
		if calls := h.systemctlCalls(); calls != action+" tetherd.service\n" {
			t.Errorf("%s: systemctl calls:\n%s", action, calls)
		}
	}

	for _, st := range []struct {
		active string // is-active's exit status
		out    string
		code   int
	}{{"0", "running (systemd)\n", 0}, {"3", "stopped (systemd)\n", 3}} {
		if err := os.WriteFile(filepath.Join(filepath.Dir(h.calls), "active"), []byte(st.active), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := h.tetherd("status", "--init", "systemd")
		if code := exitCode(err); code != st.code || out != st.out {
			t.Errorf("status with is-active exiting %s: exit %d, %q; want %d, %q", st.active, code, out, st.code, st.out)
		}
		if calls := h.systemctlCalls(); calls != "is-active tetherd.service\n" {
			t.Errorf("status: systemctl calls:\n%s", calls)
		}
	}

	if out, err := h.tetherd("uninstall", "--init", "systemd"); err != nil {
		t.Fatalf("uninstall: %v\n%s", err, out)
	}
	if _, err := os.Stat(unitPath); !os.IsNotExist(err) {
		t.Errorf("the unit is still there after uninstall: %v", err)
	}
	if _, err := os.Lstat(wants); !os.IsNotExist(err) {
		t.Errorf("still enabled after uninstall: %v", err)
	}
	if calls := h.systemctlCalls(); calls != "daemon-reload\n" {
		t.Errorf("uninstall: systemctl calls:\n%s", calls)
	}
	if out, err := h.tetherd("status", "--init", "systemd"); exitCode(err) != 4 || out != "not installed (systemd)\n" {
		t.Errorf("status after uninstall: %v, %q", err, out)
	}
}

// TestInstallCarriesFlags: flags given to install end up on the unit's
// command line, quoted for systemd.
func TestInstallCarriesFlags(t *testing.T) {
	h := newServiceHost(t)
	out, err := h.tetherd("install", "--server", "wss://push.example.com", "--init=systemd", "--data", "/srv/tether data", "--log-level", "debug")
	if err != nil {
		t.Fatalf("install: %v\n%s", err, out)
	}
	got, err := os.ReadFile(filepath.Join(h.units, "tetherd.service"))
	if err != nil {
		t.Fatal(err)
	}
	want := "\nExecStart=" + os.Args[0] + ` run --server=wss://push.example.com "--data=/srv/tether data" --log-level=debug` + "\n"
	if !strings.Contains(string(got), want) {
		t.Errorf("unit:\n%s\nwant the line %q", got, want)
	}
}

// TestInstallUnderRoot: `tetherd install --root` writes the shipped
// script into a directory, as a firmware build would, running
// /usr/bin/tetherd with the flags given, and needs neither root nor a
// service manager.
func TestInstallUnderRoot(t *testing.T) {
	tests := []struct {
		init, script, line string
		mode               os.FileMode
	}{
		{"systemd", "/etc/systemd/system/tetherd.service", "\nExecStart=/usr/bin/tetherd run --log-level=debug\n", 0o644},
		{"openrc", "/etc/init.d/tetherd", "\ncommand=/usr/bin/tetherd\ncommand_args='run --log-level=debug'\n", 0o755},
		{"sysv", "/etc/init.d/tetherd", "\nDAEMON=/usr/bin/tetherd\nDAEMON_ARGS='run --log-level=debug'\n", 0o755},
		{"procd", "/etc/init.d/tetherd", "\tprocd_set_param command /usr/bin/tetherd run --log-level=debug\n", 0o755},
	}
	for _, tt := range tests {
		t.Run(tt.init, func(t *testing.T) {
			root := t.TempDir()
			var stdout, stderr strings.Builder
			env := environ{stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }}
			if code := run(context.Background(), []string{"install", "--init", tt.init, "--root", root, "--log-level", "debug"}, env); code != 0 {
				t.Fatalf("install: exit %d\n%s", code, stderr.String())
			}
			fi, err := os.Stat(root + tt.script)
			if err != nil {
				t.Fatal(err)
			}
			if fi.Mode() != tt.mode {
				t.Errorf("mode %v, want %v", fi.Mode(), tt.mode)
			}
			got, _ := os.ReadFile(root + tt.script)
			if !strings.Contains(string(got), tt.line) {
				t.Errorf("%s:\n%s\nwant the line %q", tt.script, got, tt.line)
			}
			if code := run(context.Background(), []string{"uninstall", "--init", tt.init, "--root", root}, env); code != 0 {
				t.Fatalf("uninstall: exit %d\n%s", code, stderr.String())
			}
			if _, err := os.Stat(root + tt.script); !os.IsNotExist(err) {
				t.Errorf("%s left after uninstall: %v", tt.script, err)
			}
		})
	}

	var stdout, stderr strings.Builder
	env := environ{stdout: &stdout, stderr: &stderr, getenv: func(string) string { return "" }}
	if code := run(context.Background(), []string{"install", "--root", t.TempDir()}, env); code != 1 || !strings.Contains(stderr.String(), "choose one") {
		t.Errorf("install --root without --init: exit %d\n%s", code, stderr.String())
	}
}

// exitCode is a command's exit status: 0 for no error, -1 for one that
// is not an exit status.
func exitCode(err error) int {
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit):
		return exit.ExitCode()
	}
	return -1
}
