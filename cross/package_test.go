package cross

import (
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
)

// TestDebInstallRemove installs the .deb for this machine's CPU with dpkg,
// checks what it put in place, removes it and checks that only what Debian
// policy keeps stays (the conffile and the user), then purges it.
func TestDebInstallRemove(t *testing.T) {
	pkgs := os.Getenv("TETHER_PACKAGES")
	if pkgs == "" {
		t.Skip("TETHER_PACKAGES is not set: run make test-cross")
	}
	if os.Geteuid() != 0 {
		t.Skip("dpkg -i needs root")
	}
	if _, err := exec.LookPath("dpkg"); err != nil {
		t.Skip("no dpkg")
	}
	target := map[string]string{"amd64": "linux-amd64", "arm64": "linux-arm64", "386": "linux-386"}[runtime.GOARCH]
	debs, _ := filepath.Glob(filepath.Join(pkgs, target, "tetherd_*.deb"))
	if len(debs) != 1 {
		t.Fatalf("want one .deb in %s/%s, found %v", pkgs, target, debs)
	}
	if exec.Command("dpkg", "-s", "tetherd").Run() == nil {
		t.Fatal("a tetherd package is already installed here; remove it first")
	}
	before := tetherPaths(t)
	t.Cleanup(func() { exec.Command("dpkg", "--purge", "tetherd").Run() })

	run(t, "dpkg", "-i", debs[0])

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
		return slices.Equal(left, []string{"/etc/tether", "/etc/tether/agent.toml"})
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
