package openrc

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestInitScript checks the script with sh -n, and, where OpenRC is
// installed, has openrc-run read its dependencies and description.
func TestInitScript(t *testing.T) {
	if out, err := exec.Command("sh", "-n", "tetherd.initd").CombinedOutput(); err != nil {
		t.Fatalf("sh -n: %v\n%s", err, out)
	}
	for _, want := range []string{
		"command=/usr/bin/tetherd\n",
		"command_args=\"run\"\n",
		`command_user="tether:tether"` + "\n",
		"output_logger=\"logger ",
		"error_logger=\"logger ",
	} {
		if !strings.Contains(InitScript, want) {
			t.Errorf("the script lacks %q", want)
		}
	}
	if strings.Contains(InitScript, "/var/log") {
		t.Error("the script logs to /var/log itself; tetherd's output goes to syslog")
	}

	if _, err := exec.LookPath("openrc-run"); err != nil {
		t.Skip("no openrc-run")
	}
	// openrc-run wants the script as a file it may run, by the name of
	// the service.
	script := filepath.Join(t.TempDir(), "tetherd")
	if err := os.WriteFile(script, []byte(InitScript), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct{ command, want string }{
		{"depend", "need net\nuse dns logger\nafter firewall\n"},
		{"describe", "Tether push-messaging agent"},
	}
	for _, tt := range tests {
		// openrc-run exits 0 even when the shell rejects the script:
		// what it prints is the check.
		out, err := exec.Command("openrc-run", script, tt.command).CombinedOutput()
		if err != nil || !strings.Contains(string(out), tt.want) || strings.Contains(string(out), "rror") {
			t.Errorf("openrc-run tetherd %s: %v\n%s\nwant %q", tt.command, err, out, tt.want)
		}
	}
}
