// SPDX-License-Identifier: Apache-2.0

package spdx

import (
	"bufio"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"testing"
)

// identifier is the line every source file carries in its first lines.
const identifier = "SPDX-License-Identifier: Apache-2.0"

// isSource reports whether a tracked file is source that must carry the
// identifier: code and build scripts, not documents, data, test inputs or
// the configuration files installed for administrators to edit.
func isSource(name string) bool {
	if strings.Contains(name, "/testdata/") || strings.Contains(name, "node_modules/") {
		return false
	}
	switch path.Ext(name) {
	case ".go", ".sh", ".py", ".js", ".c", ".h", ".bb", ".mk", ".init", ".initd":
		return true
	}
	switch path.Base(name) {
	case "Makefile", "Dockerfile", "run":
		return true
	}
	return false
}

func TestEverySourceFileNamesItsLicence(t *testing.T) {
	root := filepath.Join("..", "..")
	out, err := exec.Command("git", "-C", root, "ls-files").Output()
	if err != nil {
		t.Skipf("not a git clone, no list of the tracked files: %v", err)
	}
	checked := 0
	for _, name := range strings.Fields(string(out)) {
		if !isSource(name) {
			continue
		}
		checked++
		if !hasIdentifier(t, filepath.Join(root, name)) {
			t.Errorf("%s: no %q in its first three lines", name, identifier)
		}
	}
	if checked < 100 {
		t.Fatalf("only %d source files checked: is the list of tracked files complete?", checked)
	}
}

func hasIdentifier(t *testing.T, file string) bool {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		if os.IsNotExist(err) {
			return true // deleted in the work tree, not yet from the index
		}
		t.Fatalf("open %s: %v", file, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for i := 0; i < 3 && sc.Scan(); i++ {
		if strings.Contains(sc.Text(), identifier) {
			return true
		}
	}
	return false
}
