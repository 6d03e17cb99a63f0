// SPDX-License-Identifier: Apache-2.0

package cross

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestReproducibleRelease runs make release for one target twice, in two
// places, and wants the same SHA256SUMS, with every artefact it names
// matching it: binaries' tarball, packages and source.
func TestReproducibleRelease(t *testing.T) {
	nfpm := os.Getenv("TETHER_NFPM")
	if nfpm == "" {
		t.Skip("TETHER_NFPM is not set: run make test-cross")
	}
	var sums [2][]byte
	for i := range sums {
		bin := t.TempDir()
		cmd := exec.Command("make", "-s", "-C", "..", "release", "RELEASE_TARGETS=linux-arm64", "BIN="+bin, "NFPM="+nfpm)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("make release: %v\n%s", err, out)
		}
		dirs, _ := filepath.Glob(filepath.Join(bin, "release", "*"))
		if len(dirs) != 1 {
			t.Fatalf("make release made %q, want one version's directory", dirs)
		}
		check := exec.Command("sha256sum", "--check", "--strict", "SHA256SUMS")
		check.Dir = dirs[0]
		if out, err := check.CombinedOutput(); err != nil {
			t.Fatalf("sha256sum --check: %v\n%s", err, out)
		}
		var err error
		if sums[i], err = os.ReadFile(filepath.Join(dirs[0], "SHA256SUMS")); err != nil {
			t.Fatal(err)
		}
	}
	for _, kind := range []string{"linux-arm64.tar.gz", "-src.tar.gz", ".deb", ".rpm", ".apk", "aarch64_cortex-a53.ipk"} {
		if !strings.Contains(string(sums[0]), kind+"\n") {
			t.Errorf("the release has no %s:\n%s", kind, sums[0])
		}
	}
	if !bytes.Equal(sums[0], sums[1]) {
		t.Errorf("the release built twice differs:\n%s\nand\n%s", sums[0], sums[1])
	}
}
