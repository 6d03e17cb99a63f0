// SPDX-License-Identifier: Apache-2.0

// Package deptest checks what a package links, in the manner of
// tailscale's tstest/deptest: a test lists the packages a binary must not
// depend on (because they were cut for size, or belong to another binary)
// and fails, naming the way in, when one comes back.
package deptest

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// DepChecker lists what a package must not link on one platform.
type DepChecker struct {
	// Pkg is the package checked, as go list takes it ("tether/cmd/tetherd").
	Pkg string
	// GOOS, GOARCH and Tags are the build's; empty means linux, arm and
	// no tags (the smallest device build that Tether ships).
	GOOS, GOARCH, Tags string
	// BadDeps maps a package path to why it must not be linked. A path
	// ending in "/..." stands for every package under it.
	BadDeps map[string]string
}

type listed struct {
	ImportPath string
	Imports    []string
	Standard   bool
}

// Check runs go list -deps on c.Pkg and fails t for every bad package it
// finds, with a package that imports it.
func (c DepChecker) Check(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("go list takes a few seconds; skipped in -short")
	}
	goos, goarch := c.GOOS, c.GOARCH
	if goos == "" {
		goos = "linux"
	}
	if goarch == "" {
		goarch = "arm"
	}
	cmd := exec.Command("go", "list", "-deps", "-json=ImportPath,Imports,Standard", "-tags="+c.Tags, c.Pkg)
	cmd.Env = append(os.Environ(), "GOOS="+goos, "GOARCH="+goarch, "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps %s: %v", c.Pkg, err)
	}
	importer := map[string]string{}
	var pkgs []string
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p listed
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("decode go list output: %v", err)
		}
		pkgs = append(pkgs, p.ImportPath)
		for _, imp := range p.Imports {
			if _, ok := importer[imp]; !ok {
				importer[imp] = p.ImportPath
			}
		}
	}
	if len(pkgs) == 0 {
		t.Fatalf("go list -deps %s listed nothing", c.Pkg)
	}
	for _, p := range pkgs {
		if why, ok := c.bad(p); ok {
			t.Errorf("%s (%s/%s) links %s, imported by %s: %s", c.Pkg, goos, goarch, p, importer[p], why)
		}
	}
}

func (c DepChecker) bad(pkg string) (string, bool) {
	for dep, why := range c.BadDeps {
		if prefix, ok := strings.CutSuffix(dep, "/..."); ok {
			if pkg == prefix || strings.HasPrefix(pkg, prefix+"/") {
				return why, true
			}
		} else if pkg == dep {
			return why, true
		}
	}
	return "", false
}
