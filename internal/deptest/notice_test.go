// SPDX-License-Identifier: Apache-2.0

package deptest

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestNoticeNamesEveryModule keeps NOTICE true: under each binary's
// heading it lists exactly the modules other than Tether's own that the
// binary links, so that whoever ships a binary in firmware knows whose
// licences come with it.
func TestNoticeNamesEveryModule(t *testing.T) {
	if testing.Short() {
		t.Skip("go list takes a few seconds; skipped in -short")
	}
	notice := readNotice(t, filepath.Join("..", "..", "NOTICE"))
	for _, bin := range []string{"tetherd", "tetherctl", "tether-server"} {
		t.Run(bin, func(t *testing.T) {
			cmd := exec.Command("go", "list", "-deps", "-f", "{{with .Module}}{{if not .Main}}{{.Path}}{{end}}{{end}}", "tether/cmd/"+bin)
			cmd.Env = append(os.Environ(), "GOOS=linux", "CGO_ENABLED=0")
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("go list -deps %s: %v", bin, err)
			}
			var linked []string
			for _, m := range strings.Fields(string(out)) {
				if !slices.Contains(linked, m) {
					linked = append(linked, m)
				}
			}
			slices.Sort(linked)
			listed := notice[bin]
			slices.Sort(listed)
			if !slices.Equal(linked, listed) {
				t.Errorf("NOTICE lists for %s:\n  %s\nbut it links:\n  %s", bin, strings.Join(listed, "\n  "), strings.Join(linked, "\n  "))
			}
		})
	}
}

// readNotice returns, by binary, the module paths NOTICE lists: a line
// at the margin names a binary, and each indented line under it starts
// with a module path (a line in brackets says there is none).
func readNotice(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("open NOTICE: %v", err)
	}
	defer f.Close()
	modules := map[string][]string{}
	var bin string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
			bin = ""
		case !strings.HasPrefix(line, " "):
			if name := strings.TrimSpace(line); strings.HasPrefix(name, "tether") && !strings.Contains(name, " ") {
				bin = name
				modules[bin] = nil
			}
		case bin != "":
			if f := strings.Fields(line); !strings.HasPrefix(f[0], "(") {
				modules[bin] = append(modules[bin], f[0])
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatalf("read NOTICE: %v", err)
	}
	return modules
}
