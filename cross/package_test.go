// SPDX-License-Identifier: Apache-2.0

package cross

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// TestDebInstallRemove installs the .deb for this machine's CPU with dpkg,
// checks what it put in place, removes it and checks that only what Debian
// policy keeps stays (the conffile, the store and the user), then purges
// it.
func TestDebInstallRemove(t *testing.T) {
	deb := hostDeb(t, "tetherd")
	before := tetherPaths(t)

	run(t, "dpkg", "-i", deb)

	shipped, err := os.ReadFile("../packaging/systemd/tetherd.service")
	if err != nil {
		t.Fatal(err)
	}
	if got, err := os.ReadFile("/usr/lib/systemd/system/tetherd.service"); err != nil || string(got) != string(shipped) {
		t.Errorf("installed unit differs from packaging/systemd/tetherd.service (%v)", err)
	}
	for _, f := range []string{
		"/usr/bin/tetherd", "/usr/bin/tetherctl", "/etc/tether/agent.toml",
		"/usr/share/dbus-1/system.d/org.tether.Push.conf",
		"/usr/share/dbus-1/system-services/org.tether.Push.service",
		"/usr/share/dbus-1/interfaces/org.tether.Push1.xml",
		"/usr/share/doc/tetherd/copyright", "/usr/share/doc/tetherd/NOTICE",
		"/usr/share/lintian/overrides/tetherd",
		"/usr/lib/systemd/user/tether-up-distributor.service",
		"/usr/share/dbus-1/services/org.unifiedpush.Distributor.tether.service",
	} {
		if _, err := os.Stat(f); err != nil {
			t.Errorf("not installed: %v", err)
		}
	}
	if out := run(t, "getent", "passwd", "tether"); !strings.Contains(out, ":/var/lib/tether:") || !strings.Contains(out, "nologin") {
		t.Errorf("the tether user: %q", out)
	}
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		run(t, "systemd-analyze", "verify", "/usr/lib/systemd/system/tetherd.service")
	}
	if _, err := exec.LookPath("systemctl"); err == nil {
		if _, err := os.Lstat("/etc/systemd/system/multi-user.target.wants/tetherd.service"); err != nil {
			t.Errorf("the service is not enabled: %v", err)
		}
	}
	// The default config is valid once it has a server.
	if out := run(t, "/usr/bin/tetherd", "config", "check", "--server", "wss://push.example.com"); out != "/etc/tether/agent.toml: valid\n" {
		t.Errorf("config check of the installed file: %q", out)
	}

	removeThenPurge(t, "tetherd", "tether", tetherPaths, before, func(left []string) bool {
		return slices.Equal(slices.DeleteFunc(left, systemdState), []string{"/etc/tether", "/etc/tether/agent.toml", "/var/lib/tether"})
	})
}

// removeThenPurge removes the installed package pkg with dpkg -r and checks
// that what it leaves of paths() beyond before passes kept, that it keeps
// its configuration and its user, as Debian policy asks; then purges it and
// checks that it leaves nothing.
func removeThenPurge(t *testing.T, pkg, userName string, paths func(*testing.T) []string, before []string, kept func([]string) bool) {
	t.Helper()
	run(t, "dpkg", "-r", pkg)
	if left := added(before, paths(t)); !kept(left) {
		t.Errorf("after dpkg -r, left behind %q", left)
	}
	if out := run(t, "dpkg-query", "-W", "-f", "${Status}", pkg); out != "deinstall ok config-files" {
		t.Errorf("after dpkg -r, the package is %q", out)
	}
	if exec.Command("getent", "passwd", userName).Run() != nil {
		t.Errorf("dpkg -r removed the %s user; policy keeps it", userName)
	}

	run(t, "dpkg", "--purge", pkg)
	if left := added(before, paths(t)); len(left) > 0 {
		t.Errorf("after a purge, left behind %q", left)
	}
}

// TestDebLintian runs lintian on each .deb: no errors but those the
// package's own overrides file declares intended (docs/firmware.md).
func TestDebLintian(t *testing.T) {
	if _, err := exec.LookPath("lintian"); err != nil {
		t.Skip("no lintian (Debian: apt-get install lintian)")
	}
	for _, pkg := range []string{"tetherd", "tether-server"} {
		t.Run(pkg, func(t *testing.T) {
			deb := hostPackage(t, pkg+"_*.deb")
			// lintian fails for an error, which its lines name.
			out, err := exec.Command("lintian", deb).CombinedOutput()
			if err != nil && !strings.Contains(string(out), "E: ") {
				t.Fatalf("lintian: %v\n%s", err, out)
			}
			for _, l := range strings.Split(string(out), "\n") {
				if strings.HasPrefix(l, "E: ") {
					t.Errorf("lintian: %s", l)
				}
			}
		})
	}
}

// hostDeb is the .deb of pkg in $TETHER_PACKAGES for this machine's CPU.
// The test is skipped where dpkg cannot install it, and fails if pkg is
// installed here already.
func hostDeb(t *testing.T, pkg string) string {
	t.Helper()
	deb := hostPackage(t, pkg+"_*.deb")
	if os.Geteuid() != 0 {
		t.Skip("dpkg -i needs root")
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("no dpkg")
	}
	if exec.Command("dpkg", "-s", pkg).Run() == nil {
		t.Fatalf("a %s package is already installed here; remove it first", pkg)
	}
	t.Cleanup(func() { exec.Command("dpkg", "--purge", pkg).Run() })
	return deb
}

// systemdState reports whether path is what deb-systemd-helper keeps of a
// unit between a removal and a purge: the enablement links, the mask and
// its own records of them.
func systemdState(path string) bool {
	return strings.HasPrefix(path, "/etc/systemd/system/") || strings.HasPrefix(path, "/var/lib/systemd/deb-systemd-helper-")
}

// TestDebAdminChoice takes each .deb through what an admin does: install
// (the service is enabled), upgrade (still enabled), disable it, upgrade
// again (it stays disabled), remove (masked, the store kept), install
// again (unmasked, still disabled), remove and purge (nothing left of the
// unit's state, nor the store).
func TestDebAdminChoice(t *testing.T) {
	for _, tt := range []struct{ pkg, user string }{
		{"tetherd", "tether"},
		{"tether-server", "tether-server"},
	} {
		t.Run(tt.pkg, func(t *testing.T) {
			deb := hostDeb(t, tt.pkg)
			if _, err := exec.LookPath("systemctl"); err != nil {
				t.Skip("no systemctl to disable the service with")
			}
			unit := tt.pkg + ".service"
			wants := "/etc/systemd/system/multi-user.target.wants/" + unit
			state := "/var/lib/" + tt.user
			enabled := func(step string, want bool) {
				t.Helper()
				if _, err := os.Lstat(wants); (err == nil) != want {
					t.Errorf("after %s: %s enabled is %v, want %v", step, unit, err == nil, want)
				}
			}
			install := func(step, version string) {
				t.Helper()
				run(t, "dpkg", "-i", withVersion(t, deb, version))
				if got := run(t, "dpkg-query", "-W", "-f", "${Version}", tt.pkg); got != version {
					t.Fatalf("after %s: version %q installed, want %s", step, got, version)
				}
			}

			install("the install", "90.0.0")
			enabled("the install", true)
			fi, err := os.Stat(state)
			if err != nil || fi.Mode() != os.ModeDir|0o700 {
				t.Errorf("the state directory: %v (%v), want a 0700 directory", fi.Mode(), err)
			} else if u, err := user.Lookup(tt.user); err != nil || fmt.Sprint(fi.Sys().(*syscall.Stat_t).Uid) != u.Uid {
				t.Errorf("%s is not the %s user's (%v)", state, tt.user, err)
			}
			install("an upgrade", "90.0.1")
			enabled("an upgrade", true)

			run(t, "systemctl", "disable", unit)
			enabled("systemctl disable", false)
			install("an upgrade of the disabled service", "90.0.2")
			enabled("an upgrade of the disabled service", false)

			run(t, "dpkg", "-r", tt.pkg)
			if dst, err := os.Readlink("/etc/systemd/system/" + unit); err != nil || dst != "/dev/null" {
				t.Errorf("after dpkg -r, the unit is not masked: %q, %v", dst, err)
			}
			if _, err := os.Stat(state); err != nil {
				t.Errorf("dpkg -r removed the store: %v", err)
			}
			// Installed again: unmasked, and still disabled.
			install("an install after the removal", "90.0.3")
			if _, err := os.Lstat("/etc/systemd/system/" + unit); err == nil {
				t.Error("the unit is still masked after an install")
			}
			enabled("an install after the removal", false)
			run(t, "dpkg", "-r", tt.pkg)
			run(t, "dpkg", "--purge", tt.pkg)
			for _, p := range []string{"/etc/systemd/system/" + unit, wants, state,
				"/var/lib/systemd/deb-systemd-helper-enabled/" + unit + ".dsh-also",
				"/var/lib/systemd/deb-systemd-helper-masked/" + unit} {
				if _, err := os.Lstat(p); err == nil {
					t.Errorf("after a purge, %s is left", p)
				}
			}
		})
	}
}

// withVersion is a copy of the .deb deb, its version set to version: the
// same files and scripts, as a later release would bring them.
func withVersion(t *testing.T, deb, version string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "root")
	run(t, "dpkg-deb", "-R", deb, dir)
	control := filepath.Join(dir, "DEBIAN", "control")
	b, err := os.ReadFile(control)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(b), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "Version: ") {
			lines[i] = "Version: " + version
		}
	}
	if err := os.WriteFile(control, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), version+".deb")
	run(t, "dpkg-deb", "-Znone", "-b", dir, out) // uncompressed: quick, and dpkg takes it the same
	return out
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// tetherPaths lists what in the system's directories has "tether" in its
// path, dpkg's own records aside.
func tetherPaths(t *testing.T) []string {
	t.Helper()
	var paths []string
	for _, root := range []string{"/etc", "/usr", "/var/lib", "/run"} {
		filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			switch {
			case err != nil:
				return nil
			case path == "/var/lib/dpkg" || path == "/usr/local/go" || path == "/usr/share/man":
				return fs.SkipDir
			case strings.Contains(path, "tether"):
				paths = append(paths, path)
			}
			return nil
		})
	}
	return paths
}

// added lists the paths in after and not in before, sorted.
func added(before, after []string) []string {
	var out []string
	for _, p := range after {
		if !slices.Contains(before, p) {
			out = append(out, p)
		}
	}
	slices.Sort(out)
	return out
}
