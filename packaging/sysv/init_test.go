package sysv

import (
	"errors"
	"os/exec"
	"strings"
	"testing"
)

// TestInitScript checks the script with sh -n and runs what it can
// without installing it: a status of a service that is not running, and a
// word it does not know.
func TestInitScript(t *testing.T) {
	if out, err := exec.Command("sh", "-n", "tetherd.init").CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v\n%s", err, out)
	}
	for _, want := range []string{
		"DAEMON=/usr/bin/tetherd\n",
		"DAEMON_ARGS=\"run\"\n",
		"RUN_AS=tether\n",
		"| logger -t tetherd",
		"# Default-Start:     2 3 4 5\n",
		"# Default-Stop:      0 1 6\n",
	} {
		if !strings.Contains(InitScript, want) {
			t.Errorf("the script lacks %q", want)
		}
	}
	if strings.Contains(InitScript, "/var/log") {
		t.Error("the script logs to /var/log itself; tetherd's output goes to syslog")
	}

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
