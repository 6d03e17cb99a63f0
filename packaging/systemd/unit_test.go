package systemd

import (
	"os/exec"
	"strconv"
	"strings"
	"testing"
)

func TestUnitRunsTheShippedBinary(t *testing.T) {
	if !strings.Contains(Unit, "\nExecStart="+Executable+" run\n") {
		t.Errorf("the unit does not run %s run:\n%s", Executable, Unit)
	}
	for _, want := range []string{"Type=notify", "User=tether", "StateDirectory=tether", "RuntimeDirectory=tether", "CapabilityBoundingSet=\n"} {
		if !strings.Contains(Unit, want) {
			t.Errorf("the unit lacks %q", want)
		}
	}
}

// TestUnitSecurity keeps the exposure score systemd-analyze gives the unit
// at the figure docs/firmware.md reports, or lower.
func TestUnitSecurity(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("no systemd-analyze")
	}
	out, err := exec.Command("systemd-analyze", "security", "--offline=true", "--threshold=15", "tetherd.service").CombinedOutput()
	if err != nil {
		if strings.Contains(string(out), "offline") && strings.Contains(string(out), "unrecognized") {
			t.Skip("systemd-analyze has no --offline")
		}
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	i := strings.Index(string(out), "Overall exposure level for tetherd.service: ")
	if i < 0 {
		t.Fatalf("no overall exposure level in:\n%s", out)
	}
	field := strings.Fields(string(out)[i+len("Overall exposure level for tetherd.service: "):])[0]
	score, err := strconv.ParseFloat(field, 64)
	if err != nil {
		t.Fatalf("exposure level %q: %v", field, err)
	}
	if score > 1.3 {
		t.Errorf("exposure level %.1f, above the 1.3 docs/firmware.md reports:\n%s", score, out)
	}
}
