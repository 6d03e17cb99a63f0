// SPDX-License-Identifier: Apache-2.0

package sysv

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInitScriptUninstalled runs what the script can do without being
// installed: a status of a service that is not running, and a word it
// does not know.
func TestInitScriptUninstalled(t *testing.T) {
	type run struct {
		arg  string
		code int
		out  string
	}
	tests := []run{{"frobnicate", 2, "usage:"}}
	if _, err := exec.LookPath("start-stop-daemon"); err == nil {
		// No user tether here: start-stop-daemon finds no process of it.
		tests = append(tests, run{"status", 3, "tetherd is not running"})
	}
	for _, tt := range tests {
		out, err := exec.Command("sh", "tetherd.init", tt.arg).CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != tt.code || !strings.Contains(string(out), tt.out) {
			t.Errorf("tetherd.init %s: %v\n%s\nwant exit status %d and %q", tt.arg, err, out, tt.code, tt.out)
		}
	}
}

// TestInitScriptRunsTheDaemon starts, restarts and stops a daemon with the
// script, as root, in mount and PID namespaces of its own: a tether user is
// added to a copy of /etc/passwd mounted over it, and /run and /var/lib
// are empty tmpfs there, so that this machine's are untouched. The daemon
// is sleep, with the script's command line set as tetherd install sets it.
func TestInitScriptRunsTheDaemon(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("starting a service as another user needs root")
	}
	for _, tool := range []string{"unshare", "mount", "start-stop-daemon", "logger", "ps"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	if out, err := exec.Command("unshare", "--mount", "--pid", "--fork", "--mount-proc", "true").CombinedOutput(); err != nil {
		t.Skipf("no mount and PID namespaces here: %v: %s", err, out)
	}
	dir := t.TempDir()
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep")
	}
	script := strings.Replace(InitScript, "\nDAEMON=/usr/bin/tetherd\n", "\nDAEMON="+sleep+"\n", 1)
	script = strings.Replace(script, "\nDAEMON_ARGS=\"run\"\n", "\nDAEMON_ARGS='1000'\n", 1)
	if err := os.WriteFile(filepath.Join(dir, "tetherd"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	// Each step prints its name and exit status; ps shows what runs as
	// tether.
	steps := `
{ cat /etc/passwd; echo tether:x:373:373::/nonexistent:/usr/sbin/nologin; } >"$1/passwd" &&
{ cat /etc/group; echo tether:x:373:; } >"$1/group" &&
mount -t tmpfs tmpfs /run && mount -t tmpfs tmpfs /var/lib &&
mount --bind "$1/passwd" /etc/passwd && mount --bind "$1/group" /etc/group || exit 1
step() { sh "$1/tetherd" "$2" >/dev/null 2>&1; echo "$2 $?"; }
running() { echo "ps $(ps -o args= -u tether | grep -c '^'"$2"' 1000$')"; }
# start-stop-daemon -b returns before the daemon runs, and stop may
# return before it is gone: wait for the status asked, or give up.
await() {
	n=0
	while [ $n -lt 600 ]; do
		sh "$1/tetherd" status >/dev/null 2>&1
		[ $? = "$2" ] && return
		sleep 0.1
		n=$((n + 1))
	done
}
step "$1" status
step "$1" start; await "$1" 0; running "$1" "$2"
step "$1" status
stat -c 'dir %U %a' /var/lib/tether
step "$1" restart; await "$1" 0; running "$1" "$2"
step "$1" stop; await "$1" 3
step "$1" status; running "$1" "$2"
`
	// In a PID namespace of its own, whatever the script fails to stop
	// ends with it.
	out, err := exec.Command("unshare", "--mount", "--propagation", "private", "--pid", "--fork", "--mount-proc",
		"sh", "-c", steps, "sh", dir, sleep).CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	want := `status 3
start 0
ps 1
status 0
dir tether 700
restart 0
ps 1
stop 0
status 3
ps 0
`
	if string(out) != want {
		t.Errorf("got:\n%s\nwant:\n%s", out, want)
	}
}
