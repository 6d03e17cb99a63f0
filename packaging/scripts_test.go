// SPDX-License-Identifier: Apache-2.0

package packaging

import (
	"fmt"
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

// TestMaintainerScripts runs every format's scripts, rendered for each
// package, with the arguments and variables dpkg, rpm, apk and opkg give
// them, against stubs of systemctl, deb-systemd-helper,
// deb-systemd-invoke, rc-service, rc-update and /etc/init.d/tetherd that
// record their calls, on a machine with systemd running or without: what
// dh_installsystemd's and the %systemd_* macros' scripts and OpenWrt's
// default_postinst do on install, upgrade and removal, and Alpine's policy
// of enabling nothing. (cross/package_test.go installs the .debs with
// dpkg.)
func TestMaintainerScripts(t *testing.T) {
	bench := newScriptBench(t)
	const (
		dshUnmask   = "deb-systemd-helper unmask tetherd.service"
		dshWas      = "deb-systemd-helper --quiet was-enabled tetherd.service"
		dshEnable   = "deb-systemd-helper enable tetherd.service"
		reload      = "systemctl daemon-reload"
		debReload   = "systemctl --system daemon-reload"
		debTryRes   = "deb-systemd-invoke try-restart tetherd.service"
		debStop     = "deb-systemd-invoke stop tetherd.service"
		debSettled  = "deb-systemd-helper update-state tetherd.service"
		serverSends = "enroll create"
		mkState     = "install -d -o tether -g tether -m 0700 /var/lib/tether"
	)
	sd, sdOff, off := []string{"SYSTEMD=1"}, []string{"SYSTEMD=1", "DISABLED=1"}, []string{"DISABLED=1"}
	tests := []struct {
		pkg, script string
		args        []string
		env         []string // SYSTEMD=1: systemd runs; DISABLED=1: was-enabled says no
		calls       []string
		says        string // in the output; "" for no output
	}{
		// .deb: enabled on a first install, never started; an upgrade
		// keeps the admin's choice and restarts only what runs.
		{"tetherd", "deb/postinst", []string{"configure"}, nil, []string{mkState, dshUnmask, dshWas, dshEnable}, "set server in /etc/tether/agent.toml"},
		{"tetherd", "deb/postinst", []string{"configure"}, sd, []string{mkState, dshUnmask, dshWas, dshEnable, debReload}, "set server"},
		{"tetherd", "deb/postinst", []string{"configure", "0.1.0"}, sd, []string{mkState, dshUnmask, dshWas, dshEnable, debReload, debTryRes}, ""},
		{"tetherd", "deb/postinst", []string{"configure", "0.1.0"}, sdOff, []string{mkState, dshUnmask, dshWas, debSettled, debReload, debTryRes}, ""},
		{"tetherd", "deb/postinst", []string{"configure", "0.1.0"}, off, []string{mkState, dshUnmask, dshWas, debSettled}, ""},
		{"tether-server", "deb/postinst", []string{"configure"}, sd, []string{
			"install -d -o tether-server -g tether-server -m 0700 /var/lib/tether-server",
			"deb-systemd-helper unmask tether-server.service", "deb-systemd-helper --quiet was-enabled tether-server.service",
			"deb-systemd-helper enable tether-server.service", debReload,
		}, serverSends},
		{"tetherd", "deb/prerm", []string{"remove"}, sd, []string{debStop}, ""},
		{"tetherd", "deb/prerm", []string{"remove"}, nil, nil, ""},
		{"tetherd", "deb/prerm", []string{"upgrade", "0.2.0"}, sd, nil, ""},
		{"tetherd", "deb/postrm", []string{"remove"}, nil, []string{"deb-systemd-helper mask tetherd.service"}, ""},
		{"tetherd", "deb/postrm", []string{"purge"}, sd, []string{"deb-systemd-helper purge tetherd.service", dshUnmask, debReload}, ""},
		{"tetherd", "deb/postrm", []string{"upgrade", "0.2.0"}, sd, []string{debReload}, ""},

		// .rpm: the %systemd_* macros.
		{"tetherd", "rpm/post", []string{"1"}, sd, []string{mkState, "systemctl --no-reload preset tetherd.service"}, "set server in /etc/tether/agent.toml"},
		{"tether-server", "rpm/post", []string{"1"}, sd, []string{"install -d -o tether-server -g tether-server -m 0700 /var/lib/tether-server", "systemctl --no-reload preset tether-server.service"}, serverSends},
		{"tetherd", "rpm/post", []string{"2"}, sd, []string{mkState}, ""},
		{"tetherd", "rpm/preun", []string{"0"}, sd, []string{"systemctl --no-reload disable --now tetherd.service"}, ""},
		{"tether-server", "rpm/preun", []string{"0"}, sd, []string{"systemctl --no-reload disable --now tether-server.service"}, ""},
		{"tetherd", "rpm/preun", []string{"1"}, sd, nil, ""},
		{"tetherd", "rpm/postun", []string{"0"}, sd, []string{reload}, ""},
		{"tetherd", "rpm/postun", []string{"1"}, sd, []string{reload, "systemctl try-restart tetherd.service"}, ""},
		{"tetherd", "rpm/postun", []string{"1"}, nil, []string{"systemctl try-restart tetherd.service"}, ""},
		{"tether-server", "rpm/postun", []string{"1"}, sd, []string{reload, "systemctl try-restart tether-server.service"}, ""},

		// .apk: Alpine enables and starts nothing itself.
		{"tetherd", "apk/post-install", []string{"0.2.0"}, nil, []string{mkState}, "rc-update add tetherd default"},
		{"tetherd", "apk/post-install", []string{"0.2.1", "0.2.0"}, nil, []string{mkState}, ""},
		{"tetherd", "apk/pre-deinstall", []string{"0.2.0"}, nil, []string{
			"rc-service --exists tetherd", "rc-service --quiet tetherd status",
			"rc-service tetherd stop", "rc-update --quiet --all del tetherd",
		}, ""},

		// .ipk: OpenWrt's way, with PKG_UPGRADE=1 on an upgrade.
		{"tetherd", "ipk/postinst", nil, nil, []string{"/etc/init.d/tetherd enable"}, "set server in /etc/tether/agent.toml"},
		{"tetherd", "ipk/postinst", nil, []string{"PKG_UPGRADE=1"}, []string{"/etc/init.d/tetherd enabled", "/etc/init.d/tetherd restart"}, ""},
		{"tetherd", "ipk/postinst", nil, []string{"PKG_UPGRADE=1", "INITD_DISABLED=1"}, []string{"/etc/init.d/tetherd enabled"}, ""},
		{"tetherd", "ipk/postinst", nil, []string{"IPKG_INSTROOT=/tmp/image"}, nil, ""},
		{"tetherd", "ipk/prerm", nil, nil, []string{"/etc/init.d/tetherd stop", "/etc/init.d/tetherd disable"}, ""},
		{"tetherd", "ipk/prerm", nil, []string{"PKG_UPGRADE=1"}, nil, ""},
	}
	for _, tt := range tests {
		name := fmt.Sprintf("%s/%s/%s/%s", tt.pkg, tt.script, strings.Join(tt.args, ","), strings.Join(tt.env, ","))
		t.Run(name, func(t *testing.T) {
			out, calls := bench.run(t, tt.pkg, tt.script, tt.args, tt.env...)
			if (tt.says == "") != (out == "") || !strings.Contains(out, tt.says) {
				t.Errorf("output %q, want %q", out, tt.says)
			}
			if !slices.Equal(calls, tt.calls) {
				t.Errorf("calls %q, want %q", calls, tt.calls)
			}
		})
	}
}

// TestDebPolicyRC runs the .deb's scripts with the real deb-systemd-invoke
// under a running systemd, and an /usr/sbin/policy-rc.d that allows (0)
// or forbids (101) what they ask: nothing is restarted or stopped that
// policy-rc.d forbids.
func TestDebPolicyRC(t *testing.T) {
	bench := newScriptBench(t)
	if _, err := exec.LookPath("deb-systemd-invoke"); err != nil {
		t.Skip("no deb-systemd-invoke (init-system-helpers)")
	}
	tests := []struct {
		script string
		args   []string
		policy string
		want   []string // the calls of policy-rc.d and systemctl
	}{
		{"deb/postinst", []string{"configure", "0.1.0"}, "0", []string{"policy-rc.d tetherd.service try-restart", "systemctl try-restart tetherd.service"}},
		{"deb/postinst", []string{"configure", "0.1.0"}, "101", []string{"policy-rc.d tetherd.service try-restart"}},
		{"deb/prerm", []string{"remove"}, "101", []string{"policy-rc.d tetherd.service stop"}},
	}
	for _, tt := range tests {
		t.Run(tt.script+"/"+strings.Join(tt.args, ",")+"/policy="+tt.policy, func(t *testing.T) {
			_, calls := bench.run(t, "tetherd", tt.script, tt.args, "SYSTEMD=1", "POLICY="+tt.policy)
			calls = slices.DeleteFunc(calls, func(c string) bool {
				return !strings.HasPrefix(c, "policy-rc.d ") && !strings.HasPrefix(c, "systemctl ") || c == "systemctl --system daemon-reload"
			})
			if !slices.Equal(calls, tt.want) {
				t.Errorf("calls %q, want %q", calls, tt.want)
			}
		})
	}
}

// scriptBench runs the maintainer scripts, rendered for both packages,
// each in a mount namespace of its own, against stubs that record their
// calls in order.
type scriptBench struct {
	dir string
}

// inNamespace sets up the namespace, then runs the script: /run and
// /var/lib are fresh tmpfs, so that a purge deletes no store of this
// machine's and the state directory is always made, with
// /run/systemd/system when $SYSTEMD is set; an /etc/tether of this
// machine's is covered too, and /etc/init.d holds only a tetherd that
// records its calls ("enabled" fails with $INITD_DISABLED). With $POLICY, /usr/sbin holds only a
// policy-rc.d that records its call and exits $POLICY.
const inNamespace = `mount -t tmpfs run /run && mount -t tmpfs lib /var/lib &&
{ [ ! -d /etc/tether ] || mount -t tmpfs etc /etc/tether; } &&
mount -t tmpfs initd /etc/init.d &&
printf '#!/bin/sh\necho "/etc/init.d/tetherd $*" >>"$CALLS"\n[ "$1" != enabled ] || [ -z "$INITD_DISABLED" ]\n' >/etc/init.d/tetherd &&
chmod 0755 /etc/init.d/tetherd &&
{ [ -z "$SYSTEMD" ] || mkdir -p /run/systemd/system; } &&
{ [ -z "$POLICY" ] || { mount -t tmpfs sbin /usr/sbin &&
  printf '#!/bin/sh\necho "policy-rc.d $*" >>"$CALLS"\nexit %s\n' "$POLICY" >/usr/sbin/policy-rc.d &&
  chmod 0755 /usr/sbin/policy-rc.d; }; } &&
exec sh "$@"`

// newScriptBench renders the scripts and writes the stubs: in stubs/ every
// command the scripts call, in stubs-invoke/ all but deb-systemd-invoke,
// for the real one. deb-systemd-helper's was-enabled fails when $DISABLED
// is set. The test is skipped where it cannot make a mount namespace.
func newScriptBench(t *testing.T) *scriptBench {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root for a mount namespace with /run of its own")
	}
	if _, err := exec.LookPath("unshare"); err != nil {
		t.Skip("no unshare (util-linux)")
	}
	b := &scriptBench{dir: t.TempDir()}
	for _, stubs := range []string{"stubs", "stubs-invoke"} {
		if err := os.Mkdir(filepath.Join(b.dir, stubs), 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"systemctl", "deb-systemd-helper", "deb-systemd-invoke", "rc-service", "rc-update", "install"} {
			if stubs == "stubs-invoke" && name == "deb-systemd-invoke" {
				continue
			}
			stub := "#!/bin/sh\necho \"" + name + " $*\" >>\"$CALLS\"\ncase \"$*\" in *was-enabled*) [ -z \"$DISABLED\" ] ;; esac\n"
			if err := os.WriteFile(filepath.Join(b.dir, stubs, name), []byte(stub), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, pkg := range []string{"tetherd", "tether-server"} {
		if out, err := exec.Command("sh", "scripts/render.sh", pkg, filepath.Join(b.dir, pkg)).CombinedOutput(); err != nil {
			t.Fatalf("render.sh %s: %v\n%s", pkg, err, out)
		}
	}
	return b
}

// run runs pkg's script with args and env (SYSTEMD=1, DISABLED=1,
// POLICY=N, INITD_DISABLED=1, and the package managers' own variables) and returns its output and the stubs' calls.
func (b *scriptBench) run(t *testing.T, pkg, script string, args []string, env ...string) (out string, calls []string) {
	t.Helper()
	path := filepath.Join(b.dir, pkg, script)
	text, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(text), "@") {
		t.Errorf("a placeholder is left in %s", script)
	}
	stubs := filepath.Join(b.dir, "stubs")
	if slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "POLICY=") }) {
		stubs = filepath.Join(b.dir, "stubs-invoke")
	}
	record := filepath.Join(t.TempDir(), "calls")
	cmd := exec.Command("unshare", append([]string{"--mount", "--propagation", "private", "sh", "-c", inNamespace, "sh", path}, args...)...)
	cmd.Env = append(os.Environ(), "PATH="+stubs+":/usr/bin:/bin:/usr/sbin:/sbin", "CALLS="+record, "DPKG_ROOT=")
	cmd.Env = append(cmd.Env, env...)
	output, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", script, strings.Join(args, " "), err, output)
	}
	recorded, _ := os.ReadFile(record)
	if len(recorded) > 0 {
		calls = strings.Split(strings.TrimSuffix(string(recorded), "\n"), "\n")
	}
	return string(output), calls
}
