// SPDX-License-Identifier: Apache-2.0

package cross

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// hostPackage is the package named by glob in $TETHER_PACKAGES for this
// machine's CPU; the test is skipped without them.
func hostPackage(t *testing.T, glob string) string {
	t.Helper()
	pkgs := os.Getenv("TETHER_PACKAGES")
	if pkgs == "" {
		t.Skip("TETHER_PACKAGES is not set: run make test-cross")
	}
	target := map[string]string{"amd64": "linux-amd64", "arm64": "linux-arm64", "386": "linux-386"}[runtime.GOARCH]
	found, _ := filepath.Glob(filepath.Join(pkgs, target, glob))
	if len(found) != 1 {
		t.Fatalf("want one %s in %s/%s, found %v", glob, pkgs, target, found)
	}
	return found[0]
}

// TestServerDebInstallRun installs the tether-server .deb with dpkg, checks
// what it put in place, runs the server from the installed files as the
// unit's ExecStart would (same command line, same user) in a network
// namespace of its own, so on the packaged ports, asks it /healthz,
// removes the package, which keeps the conffile and the store, and
// purges it, which keeps only the user.
func TestServerDebInstallRun(t *testing.T) {
	deb := hostDeb(t, "tether-server")
	before := serverPaths(t)

	run(t, "dpkg", "-i", deb)

	shipped, err := os.ReadFile("../packaging/systemd/tether-server.service")
	if err != nil {
		t.Fatal(err)
	}
	unit := "/usr/lib/systemd/system/tether-server.service"
	if got, err := os.ReadFile(unit); err != nil || string(got) != string(shipped) {
		t.Errorf("installed unit differs from packaging/systemd/tether-server.service (%v)", err)
	}
	if out := run(t, "getent", "passwd", "tether-server"); !strings.Contains(out, ":/var/lib/tether-server:") || !strings.Contains(out, "nologin") {
		t.Errorf("the tether-server user: %q", out)
	}
	u, err := user.Lookup("tether-server")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		path         string
		mode         os.FileMode
		owner, group string
	}{
		{"/usr/bin/tether-server", 0o755, "0", "0"},
		{"/etc/tether/server.toml", 0o640, "0", u.Gid},
		{"/var/lib/tether-server", os.ModeDir | 0o700, u.Uid, u.Gid},
		{"/usr/share/doc/tether-server/deploy.md", 0o644, "0", "0"},
	} {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Errorf("not installed: %v", err)
			continue
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != f.mode || fmt.Sprint(st.Uid) != f.owner || fmt.Sprint(st.Gid) != f.group {
			t.Errorf("%s: mode %v owner %d:%d, want %v %s:%s", f.path, fi.Mode(), st.Uid, st.Gid, f.mode, f.owner, f.group)
		}
	}
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		run(t, "systemd-analyze", "verify", unit)
	}
	if _, err := exec.LookPath("systemctl"); err == nil {
		if _, err := os.Lstat("/etc/systemd/system/multi-user.target.wants/tether-server.service"); err != nil {
			t.Errorf("the service is not enabled: %v", err)
		}
	}

	// The first start, as the postinstall message and docs/deploy.md say:
	// an enrollment key, then the unit's command as its user.
	t.Run("serve", func(t *testing.T) {
		run(t, "runuser", "-u", "tether-server", "--", "tether-server", "enroll", "create", "--data", "/var/lib/tether-server")
		exec, userName := unitExec(t, unit)
		as := []string{"setpriv", "--reuid=" + userName, "--regid=" + userName, "--init-groups", "--"}
		args := serveArgs(t, serveHelp(t, slices.Concat(as, exec[:1])...), exec[1:], "/etc/tether/server.toml")
		ns := serverNetns(t)
		addr := startInNetns(t, ns, slices.Concat(as, exec[:1], args)...)
		if addr != "127.0.0.1:8080" {
			t.Errorf("the packaged config listens on %s, want loopback 127.0.0.1:8080", addr)
		}
		if out := run(t, "ip", "netns", "exec", ns.Name, "/usr/bin/tether-server", "healthcheck", "--url", "http://"+addr+"/healthz"); out != "ok\n" {
			t.Errorf("healthcheck of the installed server: %q", out)
		}
		if fi, err := os.Stat("/var/lib/tether-server/server.db"); err != nil || fmt.Sprint(fi.Sys().(*syscall.Stat_t).Uid) != u.Uid {
			t.Errorf("the store is not the tether-server user's: %v", err)
		}
	})

	// A removal keeps the conffile and the store; a purge neither.
	removeThenPurge(t, "tether-server", "tether-server", serverPaths, before, func(left []string) bool {
		return slices.Contains(left, "/etc/tether/server.toml") && slices.Contains(left, "/var/lib/tether-server/server.db") &&
			!slices.ContainsFunc(left, func(p string) bool {
				return p != "/etc/tether/server.toml" && !strings.HasPrefix(p, "/var/lib/tether-server") && !systemdState(p)
			})
	})
}

// unitExec is the unit's ExecStart, split at spaces, and its User.
func unitExec(t *testing.T, unit string) (argv []string, userName string) {
	t.Helper()
	f, err := os.Open(unit)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines := bufio.NewScanner(f)
	for lines.Scan() {
		if v, ok := strings.CutPrefix(lines.Text(), "ExecStart="); ok {
			argv = strings.Fields(v)
		}
		if v, ok := strings.CutPrefix(lines.Text(), "User="); ok {
			userName = v
		}
	}
	if len(argv) == 0 || userName == "" {
		t.Fatalf("%s has no ExecStart or User", unit)
	}
	return argv, userName
}

// serverPaths lists what in the system's directories has "tether-server"
// in its path, and the server's config file, dpkg's own records aside.
func serverPaths(t *testing.T) []string {
	t.Helper()
	return slices.DeleteFunc(tetherPaths(t), func(p string) bool {
		return !strings.Contains(p, "tether-server") && p != "/etc/tether/server.toml"
	})
}

// TestServerRPM reads the tether-server .rpm with rpm: the files the .deb
// installs, the config file marked as one, and the scripts that create
// the user.
func TestServerRPM(t *testing.T) {
	pkg := hostPackage(t, "tether-server-*.rpm")
	if _, err := exec.LookPath("rpm"); err != nil {
		t.Skip("no rpm")
	}
	files := run(t, "rpm", "-qlp", pkg)
	for _, f := range []string{
		"/usr/bin/tether-server", "/usr/lib/systemd/system/tether-server.service",
		"/etc/tether/server.toml", "/usr/share/doc/tether-server/deploy.md",
	} {
		if !slices.Contains(strings.Split(files, "\n"), f) {
			t.Errorf("the .rpm lacks %s:\n%s", f, files)
		}
	}
	if out := run(t, "rpm", "-qcp", pkg); out != "/etc/tether/server.toml\n" {
		t.Errorf("config files of the .rpm: %q", out)
	}
	if out := run(t, "rpm", "-qp", "--scripts", pkg); !strings.Contains(out, "useradd --system") || !strings.Contains(out, "systemctl --no-reload preset tether-server.service") {
		t.Errorf("the .rpm's scripts do not create the user and enable the service:\n%s", out)
	}
	if out := run(t, "rpm", "-qp", "--queryformat", "[%{FILEMODES:perms} %{FILEUSERNAME}:%{FILEGROUPNAME} %{FILENAMES}\n]", pkg); !strings.Contains(out, "-rw-r----- root:tether-server /etc/tether/server.toml\n") {
		t.Errorf("the .rpm's config file is not 0640 root:tether-server:\n%s", out)
	}
}
