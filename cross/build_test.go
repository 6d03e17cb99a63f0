// SPDX-License-Identifier: Apache-2.0

package cross

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
)

// TestReproducibleBuild builds one target again, elsewhere, and wants the
// same bytes: paths are trimmed, the build ID is fixed and the version
// comes from VERSION alone.
func TestReproducibleBuild(t *testing.T) {
	dir := crossDir(t)
	version := os.Getenv("TETHER_BUILD_VERSION")
	if version == "" {
		t.Skip("TETHER_BUILD_VERSION is not set: run make test-cross")
	}
	out := t.TempDir()
	cmd := exec.Command("../cross/build.sh", out, "linux-arm64")
	cmd.Env = append(os.Environ(), "VERSION="+version)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cross/build.sh: %v\n%s", err, b)
	}
	for _, bin := range []string{"tetherd", "tetherctl", "tether-server"} {
		first, err := os.ReadFile(filepath.Join(dir, "linux-arm64", bin))
		if err != nil {
			t.Fatal(err)
		}
		again, err := os.ReadFile(filepath.Join(out, "linux-arm64", bin))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(first, again) {
			t.Errorf("%s built twice differs (%d and %d bytes)", bin, len(first), len(again))
		}
	}
}
