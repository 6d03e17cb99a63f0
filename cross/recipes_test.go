// SPDX-License-Identifier: Apache-2.0

package cross

import (
	"bufio"
	"bytes"
	"crypto/md5"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// The firmware recipes are replayed here: each build system's own go
// command line, with the flags and environment its Go support
// (go.bbclass, pkg-golang.mk, golang-package.mk) sets and the recipe adds,
// read from the recipe files themselves. The modules come from the local
// module cache instead of the build systems' own fetchers.
const (
	yoctoDir     = "yocto/recipes-connectivity/tetherd"
	buildrootDir = "buildroot/package/tetherd"
	openwrtDir   = "openwrt/tetherd"
)

// replayTarget is one CPU a recipe is built for, as each build system
// describes it.
type replayTarget struct {
	name    string
	goarch  string
	env     []string // GOARM, GO386, GOMIPS as the build system sets them
	machine elf.Machine
	loader  string // the C library's loader, which go.bbclass passes with -I
}

var (
	armv7   = replayTarget{"armv7", "arm", []string{"GOARM=7"}, elf.EM_ARM, "/lib/ld-linux-armhf.so.3"}
	aarch64 = replayTarget{"aarch64", "arm64", nil, elf.EM_AARCH64, "/lib/ld-linux-aarch64.so.1"}
	x86     = replayTarget{"x86", "386", []string{"GO386=sse2"}, elf.EM_386, "/lib/ld-linux.so.2"}
	mipsel  = replayTarget{"mipsel_24kc", "mipsle", []string{"GOMIPS=softfloat"}, elf.EM_MIPS, ""}
	riscv64 = replayTarget{"riscv64", "riscv64", nil, elf.EM_RISCV, "/lib/ld-linux-riscv64-lp64d.so.1"}
)

// replayEnv is the environment every replay starts from: the local module
// cache, where each build system would have put the modules it fetched,
// and no network.
func replayEnv(t *testing.T) []string {
	t.Helper()
	cache, err := exec.Command("go", "env", "GOMODCACHE").Output()
	if err != nil {
		t.Fatalf("go env: %v", err)
	}
	env := []string{"GOFLAGS=-mod=mod", "GOPROXY=off", "GOTOOLCHAIN=local", "GOENV=off",
		"GOMODCACHE=" + strings.TrimSpace(string(cache))}
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "PATH", "HOME", "GOCACHE", "GOROOT", "TMPDIR":
			env = append(env, kv)
		}
	}
	return env
}

func repoVersion(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../VERSION")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// runReplay runs a shell command line as the build system would, in dir,
// with env, and reports its output when it fails.
func runReplay(dir string, env []string, line string) ([]byte, error) {
	cmd := exec.Command("sh", "-c", line)
	cmd.Dir = dir
	cmd.Env = env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("%s: %w\n%s", line, err, out)
	}
	return out, nil
}

// checkBinary wants a static ELF for the target's CPU with the version
// stamped in.
func checkBinary(t *testing.T, path string, tg replayTarget, version string) {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatalf("the recipe's build made no binary: %v", err)
	}
	defer f.Close()
	if f.Machine != tg.machine {
		t.Errorf("%s is for %v, want %v", path, f.Machine, tg.machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC {
			t.Errorf("%s is not static: it has %v", path, p.Type)
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte(version)) {
		t.Errorf("%s does not carry the version %s", path, version)
	}
}

// bitbake holds the variables of BitBake files, with the operators
// go.bbclass, go-mod.bbclass and the recipe use.
type bitbake struct {
	vals     map[string]string
	appends  map[string][]string
	removes  map[string][]string
	exported map[string]bool
}

var bbLine = regexp.MustCompile(`^(export\s+)?([A-Za-z0-9_]+)((?::[a-z-]+)*)\s*(\?\?=|\?=|\+=|=)\s*"(.*)"$`)

// parse reads assignments; other lines (inherit, functions, python) are
// the build system's business and are skipped.
func (bb *bitbake) parse(text string) {
	var lines []string
	var cont strings.Builder
	for _, l := range strings.Split(text, "\n") {
		if strings.HasSuffix(l, `\`) {
			cont.WriteString(strings.TrimSuffix(l, `\`))
			continue
		}
		cont.WriteString(l)
		lines = append(lines, cont.String())
		cont.Reset()
	}
	for _, l := range lines {
		m := bbLine.FindStringSubmatch(strings.TrimSpace(l))
		if m == nil {
			continue
		}
		name, ops, op, val := m[2], m[3], m[4], m[5]
		if m[1] != "" {
			bb.exported[name] = true
		}
		switch {
		case ops == ":append":
			bb.appends[name] = append(bb.appends[name], val)
		case ops == ":prepend:task-compile":
			bb.vals[name] = val + bb.vals[name]
		case ops == ":remove":
			bb.removes[name] = append(bb.removes[name], strings.Fields(val)...)
		case ops != "":
			// overrides for other machines or classes
		case op == "=":
			bb.vals[name] = val
		case op == "+=":
			bb.vals[name] += " " + val
		default: // ?= and ??=: only where unset
			if _, ok := bb.vals[name]; !ok {
				bb.vals[name] = val
			}
		}
	}
}

var bbRef = regexp.MustCompile(`\$\{([A-Za-z0-9_]+)\}`)

// get is the value as BitBake expands it: references, then :append, then
// :remove.
func (bb *bitbake) get(name string) string {
	v := bb.vals[name] + strings.Join(bb.appends[name], "")
	for range 10 {
		v = bbRef.ReplaceAllStringFunc(v, func(ref string) string {
			n := bbRef.FindStringSubmatch(ref)[1]
			if _, ok := bb.vals[n]; !ok {
				return ref
			}
			return bb.get(n)
		})
	}
	if rm := bb.removes[name]; len(rm) > 0 {
		var kept []string
		for _, w := range strings.Fields(v) {
			if !contains(rm, w) {
				kept = append(kept, w)
			}
		}
		v = strings.Join(kept, " ")
	}
	return v
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// goBbclass is what go.bbclass and go-mod.bbclass (OpenEmbedded-Core) set
// that reaches the go command line for a target recipe.
const goBbclass = `
GO_PARALLEL_BUILD ?= "-p 2"
GO_LINKSHARED ?= ""
GO_RPATH = ""
GO_RPATH_LINK = ""
GO_EXTLDFLAGS ?= "${HOST_CC_ARCH}${TOOLCHAIN_OPTIONS} ${GO_RPATH_LINK} ${LDFLAGS}"
GO_LINKMODE ?= ""
GO_EXTRA_LDFLAGS ?= ""
GO_LINUXLOADER ?= "-I ${LINUXLOADER}"
GO_LDFLAGS ?= "-ldflags="${GO_RPATH} ${GO_LINKMODE} ${GO_LINUXLOADER} ${GO_EXTRA_LDFLAGS} -extldflags '${GO_EXTLDFLAGS}'""
export GOBUILDFLAGS ?= "-v ${GO_LDFLAGS} -trimpath"
GOBUILDFLAGS:prepend:task-compile = "${GO_PARALLEL_BUILD} "
export GO = "go"
export CGO_ENABLED ?= "1"
export GOPROXY ??= "https://proxy.golang.org,direct"
GOBUILDFLAGS:append = " -modcacherw"
HOST_CC_ARCH = " -mthumb"
TOOLCHAIN_OPTIONS = " --sysroot=/nonexistent/recipe-sysroot"
LDFLAGS = "-Wl,-O1 -Wl,--hash-style=gnu -Wl,--as-needed"
`

// yoctoCommand is go_do_compile's go install line for the recipe text on
// target tg, and the environment go.bbclass exports.
func yoctoCommand(recipe, pv string, tg replayTarget) (string, []string) {
	bb := &bitbake{vals: map[string]string{}, appends: map[string][]string{}, removes: map[string][]string{}, exported: map[string]bool{}}
	bb.parse(goBbclass)
	bb.vals["PV"] = pv
	bb.vals["LINUXLOADER"] = tg.loader
	bb.parse(recipe)
	// go.bbclass's anonymous python: PIE everywhere but MIPS and riscv32,
	// appended to the value before :append and :remove apply.
	if !strings.HasPrefix(tg.goarch, "mips") {
		bb.vals["GOBUILDFLAGS"] += " -buildmode=pie"
	}
	env := append([]string{"GOOS=linux", "GOARCH=" + tg.goarch}, tg.env...)
	var names []string
	for n := range bb.exported {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		if n != "GOBUILDFLAGS" && n != "GO" {
			env = append(env, n+"="+bb.get(n))
		}
	}
	line := strings.Join([]string{bb.get("GO"), "install", bb.get("GO_LINKSHARED"), bb.get("GOBUILDFLAGS"), bb.get("GO_INSTALL")}, " ")
	return line, env
}

// TestYoctoRecipe replays go.bbclass's build of the Yocto recipe, and
// checks its version, licence checksum and source.
func TestYoctoRecipe(t *testing.T) {
	version := repoVersion(t)
	path := filepath.Join(yoctoDir, "tetherd_"+version+".bb")
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the Yocto recipe is named after VERSION: %v", err)
	}
	recipe := string(b)
	for _, want := range []string{"tag=v${PV}", "LICENSE = \"Apache-2.0\"", "md5=" + md5File(t, "../LICENSE")} {
		if !strings.Contains(recipe, want) {
			t.Errorf("%s lacks %q", path, want)
		}
	}
	if strings.Contains(recipe, "AUTOREV") || strings.Contains(recipe, "network] = \"1\"") {
		t.Errorf("%s builds a moving or fetched source: no AUTOREV, no network in do_compile", path)
	}
	tests := []struct {
		name    string
		recipe  string
		target  replayTarget
		wantErr string // a replay that must fail, and what says so
	}{
		{name: "armv7", recipe: recipe, target: armv7},
		{name: "aarch64", recipe: recipe, target: aarch64},
		{name: "x86", recipe: recipe, target: x86},
		{name: "mipsel", recipe: recipe, target: mipsel},
		{
			// The check catches what go.bbclass does to a recipe that
			// does not opt out of PIE.
			name:    "armv7 with go.bbclass's PIE",
			recipe:  strings.ReplaceAll(recipe, `GOBUILDFLAGS:remove = "-buildmode=pie"`, ""),
			target:  armv7,
			wantErr: "-buildmode=pie requires external (cgo) linking",
		},
	}
	cache := yoctoModCache(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			line, env := yoctoCommand(tt.recipe, version, tt.target)
			gopath := t.TempDir()
			env = append(replayEnv(t), append(env, "GOPATH="+gopath, "GOMODCACHE="+cache)...)
			_, err := runReplay("..", env, line)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("replay: got %v, want a failure naming %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, bin := range []string{"tetherd", "tetherctl"} {
				checkBinary(t, installedBinary(t, gopath, bin), tt.target, version)
			}
		})
	}
}

var gomodURI = regexp.MustCompile(`gomod://([^;]+);version=([^;]+)(;mod=1)?;sha256sum=([0-9a-f]+)`)

// yoctoModCache is a module cache holding what tetherd-go-mods.inc's
// gomod:// entries fetch and nothing else, as the gomod fetcher leaves it
// for do_compile: each entry's file from the local cache, checked against
// its sha256sum, served to go as a proxy once.
func yoctoModCache(t *testing.T) string {
	t.Helper()
	inc, err := os.ReadFile(filepath.Join(yoctoDir, "tetherd-go-mods.inc"))
	if err != nil {
		t.Fatal(err)
	}
	env := replayEnv(t)
	local := filepath.Join(strings.TrimPrefix(env[4], "GOMODCACHE="), "cache", "download")
	proxy := t.TempDir()
	for _, m := range gomodURI.FindAllStringSubmatch(string(inc), -1) {
		dir := filepath.Join(escapeModule(m[1]), "@v")
		// An entry is the module's zip, or with mod=1 only its go.mod;
		// its sha256sum is that file's.
		exts, summed := []string{".mod", ".info", ".zip"}, ".zip"
		if m[3] != "" {
			exts, summed = exts[:2], ".mod"
		}
		for _, ext := range exts {
			b, err := os.ReadFile(filepath.Join(local, dir, m[2]+ext))
			if err != nil {
				t.Fatalf("%s@%s is not in the local module cache (go mod download): %v", m[1], m[2], err)
			}
			if ext == summed {
				if sum := sha256.Sum256(b); hex.EncodeToString(sum[:]) != m[4] {
					t.Errorf("tetherd-go-mods.inc: the sha256sum of %s@%s%s is not %s", m[1], m[2], ext, m[4])
				}
			}
			if err := os.MkdirAll(filepath.Join(proxy, dir), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(proxy, dir, m[2]+ext), b, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	cache := t.TempDir()
	cmd := exec.Command("go", "list", "-deps", "./cmd/tetherd", "./cmd/tetherctl")
	cmd.Dir = ".."
	cmd.Env = append(env, "GOMODCACHE="+cache, "GOFLAGS=-mod=mod -modcacherw", "GOPROXY=file://"+proxy, "GOSUMDB=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the modules of tetherd-go-mods.inc do not build tetherd and tetherctl: %v\n%s", err, out)
	}
	return cache
}

// installedBinary finds what go install wrote into GOPATH/bin, or into
// GOPATH/bin/GOOS_GOARCH for a cross build.
func installedBinary(t *testing.T, gopath, name string) string {
	t.Helper()
	m, _ := filepath.Glob(filepath.Join(gopath, "bin", "*", name))
	if len(m) == 1 {
		return m[0]
	}
	return filepath.Join(gopath, "bin", name)
}

// fileSum is the hex digest of a file: md5 for BitBake's LIC_FILES_CHKSUM,
// sha256 for SRC_URI and Buildroot's hash files.
func fileSum(t *testing.T, h hash.Hash, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	h.Write(b)
	return hex.EncodeToString(h.Sum(nil))
}

func md5File(t *testing.T, path string) string { return fileSum(t, md5.New(), path) }

func sha256File(t *testing.T, path string) string { return fileSum(t, sha256.New(), path) }

// TestYoctoModules checks that tetherd-go-mods.inc and
// tetherd-licenses.inc name exactly the modules, checksums and licence
// files the build needs, in go-mod-update-modules.bbclass's form. With
// TETHER_UPDATE_RECIPES=1 it writes them again instead.
func TestYoctoModules(t *testing.T) {
	cache := t.TempDir()
	cmd := exec.Command("go", "list", "-deps", "-f", "{{with .Module}}{{if not .Main}}{{.Path}}@{{.Version}}{{end}}{{end}}", "./cmd/tetherd", "./cmd/tetherctl")
	cmd.Dir = ".."
	// The local cache serves as the proxy, so that the new cache holds what
	// a build fetches and nothing else.
	env := replayEnv(t)
	local := strings.TrimPrefix(env[4], "GOMODCACHE=")
	cmd.Env = append(env, "GOMODCACHE="+cache, "GOFLAGS=-mod=mod -modcacherw",
		"GOPROXY=file://"+filepath.Join(local, "cache", "download"), "GOSUMDB=off")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	var uris []string
	download := filepath.Join(cache, "cache", "download")
	err = filepath.WalkDir(download, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || filepath.Base(filepath.Dir(path)) != "@v" {
			return err
		}
		mod, _ := filepath.Rel(download, filepath.Dir(filepath.Dir(path)))
		ver, ext := strings.TrimSuffix(d.Name(), filepath.Ext(d.Name())), filepath.Ext(d.Name())
		zip := filepath.Join(filepath.Dir(path), ver+".zip")
		switch {
		case ext == ".zip":
			uris = append(uris, fmt.Sprintf("gomod://%s;version=%s;sha256sum=%s", unescapeModule(mod), ver, sha256File(t, path)))
		case ext == ".mod" && !exists(zip):
			uris = append(uris, fmt.Sprintf("gomod://%s;version=%s;mod=1;sha256sum=%s", unescapeModule(mod), ver, sha256File(t, path)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	fold := func(s string) string { return strings.NewReplacer(";", " ", "/", "!").Replace(s) }
	sort.Slice(uris, func(i, j int) bool { return fold(uris[i]) < fold(uris[j]) })
	var mods strings.Builder
	mods.WriteString(incNotice + "SRC_URI += \"\\\n")
	for _, u := range uris {
		mods.WriteString("    " + u + " \\\n")
	}
	mods.WriteString("\"\n")

	var lics []string
	spdx := map[string]bool{}
	for _, m := range strings.Fields(string(out)) {
		if contains(lics, m) {
			continue
		}
		lics = append(lics, m)
	}
	sort.Strings(lics)
	var licBody strings.Builder
	for _, m := range lics {
		file := filepath.Join(cache, escapeModule(m), "LICENSE")
		id := licenseID(t, file)
		spdx[id] = true
		licBody.WriteString(fmt.Sprintf("    file://pkg/mod/%s/LICENSE;md5=%s;spdx=%s \\\n", escapeModule(m), md5File(t, file), id))
	}
	var ids []string
	for id := range spdx {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	licenses := incNotice + "LICENSE += \"& " + strings.Join(ids, " & ") + "\"\n\nLIC_FILES_CHKSUM += \"\\\n" + licBody.String() + "\"\n"

	for name, want := range map[string]string{"tetherd-go-mods.inc": mods.String(), "tetherd-licenses.inc": licenses} {
		path := filepath.Join(yoctoDir, name)
		if os.Getenv("TETHER_UPDATE_RECIPES") == "1" {
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil || string(got) != want {
			t.Errorf("%s does not match go.mod and go.sum; run TETHER_UPDATE_RECIPES=1 go test -run TestYoctoModules ./cross/ (or bitbake -c update_modules tetherd). Want:\n%s", path, want)
		}
	}
}

const incNotice = "# The modules tetherd and tetherctl are built from, in the form\n" +
	"# go-mod-update-modules.bbclass writes. go test ./cross/ checks it against\n" +
	"# go.sum: TETHER_UPDATE_RECIPES=1 go test -run TestYoctoModules ./cross/\n" +
	"# writes it again.\n\n"

// licenseID names the licence of a module's LICENSE file by its text.
func licenseID(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("a module the device binaries link has no LICENSE file: %v", err)
	}
	text := string(b)
	switch {
	case strings.Contains(text, "Apache License") && strings.Contains(text, "Version 2.0"):
		return "Apache-2.0"
	case strings.Contains(text, "Permission is hereby granted, free of charge"):
		return "MIT"
	case strings.Contains(text, "Neither the name") || strings.Contains(text, "names of its"):
		return "BSD-3-Clause"
	case strings.Contains(text, "Redistribution and use in source and binary forms"):
		return "BSD-2-Clause"
	}
	t.Fatalf("%s: a licence this check does not know; name it in tetherd-licenses.inc and here", path)
	return ""
}

// escapeModule and unescapeModule convert a module path to and from the
// module cache's form, where an upper-case letter is ! and its lower case.
func escapeModule(m string) string {
	var b strings.Builder
	for _, r := range m {
		if r >= 'A' && r <= 'Z' {
			b.WriteByte('!')
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}

func unescapeModule(m string) string {
	return regexp.MustCompile(`!([a-z])`).ReplaceAllStringFunc(m, func(s string) string { return strings.ToUpper(s[1:]) })
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// makeRecipe is the release's version and a file of a recipe that make
// replays, or skips the test where there is no make.
func makeRecipe(t *testing.T, path string) (string, []byte) {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("no make")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return repoVersion(t), b
}

// buildrootHarness stands in for Buildroot around package/tetherd: the
// package's Config.in default, host-go's target environment (package/go)
// and pkg-golang.mk's build step, so that make itself expands tetherd.mk.
const buildrootHarness = `
BR2_PACKAGE_TETHERD_VERSION = $(BR_VERSION)
BR2_PACKAGE_TETHERD_GIT_URL = "https://example.org/tether.git"
BR2_PACKAGE_HOST_GO_TARGET_ARCH_SUPPORTS = y
qstrip = $(strip $(subst ",,$(1)))
pkgname = tetherd
PARALLEL_JOBS = 2
GO_BIN = go
INSTALL = install
TARGET_DIR = /nonexistent/target
HOST_GO_TARGET_ENV = GO111MODULE=on GOFLAGS=-mod=mod GOPROXY=off GOBIN= \
	CGO_ENABLED=1 GOARCH=$(GO_GOARCH) $(if $(GO_GOARM),GOARM=$(GO_GOARM)) \
	CC=/nonexistent/bin/target-gcc

define golang-package
ifneq ($$(TETHERD_INSTALL_BINS),)
$$(error Package tetherd sets TETHERD_INSTALL_BINS, which is no longer supported)
endif
ifneq ($$(words $$(TETHERD_BUILD_TARGETS)),1)
ifneq ($$(TETHERD_BIN_NAME),)
$$(error tetherd sets TETHERD_BIN_NAME while there are multiple targets in TETHERD_BUILD_TARGETS)
endif
endif
TETHERD_BUILD_OPTS += -ldflags "$$(TETHERD_LDFLAGS)" -modcacherw -tags "$$(TETHERD_TAGS)" -trimpath -p $$(PARALLEL_JOBS) -buildvcs=false
endef

include tetherd.mk

define TETHERD_BUILD_CMDS
	$(foreach d,$(TETHERD_BUILD_TARGETS),\
		cd $(REPO); \
		$(HOST_GO_TARGET_ENV) \
			$(TETHERD_GO_ENV) \
			$(GO_BIN) build -v $(TETHERD_BUILD_OPTS) \
			-o $(OUT)/bin/$(or $(TETHERD_BIN_NAME),$(notdir $(d))) \
			$(TETHERD_GOMOD)/$(d)
	)
endef

replay:
	$(TETHERD_BUILD_CMDS)
`

// TestBuildrootPackage replays pkg-golang's build of package/tetherd with
// make, for the architectures Buildroot's Go builds for.
func TestBuildrootPackage(t *testing.T) {
	version, cfg := makeRecipe(t, filepath.Join(buildrootDir, "Config.in"))
	def := regexp.MustCompile(`(?m)config BR2_PACKAGE_TETHERD_VERSION\n(?:\t.*\n)*?\tdefault (".*")`).FindSubmatch(cfg)
	if def == nil || string(def[1]) != `"v`+version+`"` {
		t.Fatalf("Config.in: the default version is not the release tag v%s", version)
	}
	hash, err := os.ReadFile(filepath.Join(buildrootDir, "tetherd.hash"))
	if err != nil || !strings.Contains(string(hash), sha256File(t, "../LICENSE")+"  LICENSE") {
		t.Errorf("tetherd.hash lacks LICENSE's sha256 (%v)", err)
	}
	harness := filepath.Join(t.TempDir(), "Makefile")
	if err := os.WriteFile(harness, []byte(buildrootHarness), 0o644); err != nil {
		t.Fatal(err)
	}
	repo, _ := filepath.Abs("..")
	for _, tg := range []struct {
		target        replayTarget
		goarch, goarm string
	}{
		{armv7, "arm", "7"},
		{aarch64, "arm64", ""},
		{riscv64, "riscv64", ""},
	} {
		t.Run(tg.target.name, func(t *testing.T) {
			out := t.TempDir()
			line := fmt.Sprintf("make -s -f %s -C %s replay BR_VERSION='%s' GO_GOARCH=%s GO_GOARM=%s REPO=%s OUT=%s",
				harness, buildrootDir, string(def[1]), tg.goarch, tg.goarm, repo, out)
			if _, err := runReplay(".", replayEnv(t), line); err != nil {
				t.Fatal(err)
			}
			for _, bin := range []string{"tetherd", "tetherctl"} {
				checkBinary(t, filepath.Join(out, "bin", bin), tg.target, version)
			}
		})
	}
}

// openwrtStubs stand in for the OpenWrt tree the package's Makefile
// includes: rules.mk and package.mk as far as a Go package uses them, and
// golang-package.mk's build variables (packages feed, lang/golang), with
// PIE asked for every package (CONFIG_PKG_ASLR_PIE_ALL).
var openwrtStubs = map[string]string{
	"rules.mk": `
TARGET_CC = /nonexistent/bin/target-gcc
TARGET_LDFLAGS = -znow -zrelro
INCLUDE_DIR = $(TOPDIR)/include
CONFIG_PKG_ASLR_PIE_ALL = y
`,
	"include/package.mk": `
PKG_ASLR_PIE ?= 1
define BuildPackage
endef
`,
	"feeds/packages/lang/golang/golang-package.mk": `
GO_PKG_BUILD_PKG ?= $(GO_PKG)/...
ifdef CONFIG_PKG_ASLR_PIE_ALL
ifeq ($(strip $(PKG_ASLR_PIE)),1)
GO_PKG_ENABLE_PIE := 1
endif
endif
GO_PKG_TARGET_VARS = GOOS=linux GOARCH="$(GO_ARCH)" GOARM="$(GO_ARM)" GOMIPS="$(GO_MIPS)" \
	CGO_ENABLED=1 CC="$(TARGET_CC)" CGO_LDFLAGS="$(TARGET_LDFLAGS)"
GO_PKG_BUILD_VARS = GOPATH="$(OUT)" GOMODCACHE="$(GOMODCACHE)" GOENV=off GOTOOLCHAIN=local
GO_PKG_VARS = $(GO_PKG_TARGET_VARS) $(GO_PKG_BUILD_VARS)
GO_PKG_DEFAULT_LDFLAGS = -buildid '0' -linkmode external -extldflags '$(patsubst -z%,-Wl$(comma)-z$(comma)%,$(TARGET_LDFLAGS))'
GO_PKG_CUSTOM_LDFLAGS = $(GO_PKG_LDFLAGS) $(patsubst %,-X %,$(GO_PKG_LDFLAGS_X))
GO_PKG_INSTALL_ARGS = -v -buildvcs=false -trimpath -ldflags "all=$(GO_PKG_DEFAULT_LDFLAGS)" \
	$(if $(GO_PKG_ENABLE_PIE),-buildmode pie) \
	$(if $(filter $(GO_ARCH),arm),-installsuffix "v$(GO_ARM)") \
	$(if $(filter $(GO_ARCH),mips mipsle),-installsuffix "$(GO_MIPS)") \
	$(if $(strip $(GO_PKG_CUSTOM_LDFLAGS)),-ldflags "$(GO_PKG_CUSTOM_LDFLAGS) $(GO_PKG_DEFAULT_LDFLAGS)") \
	$(if $(strip $(GO_PKG_TAGS)),-tags "$(GO_PKG_TAGS)")
comma := ,
define GoBinPackage
endef
replay:
	cd $(REPO) && $(GO_PKG_VARS) go install -modcacherw $(GO_PKG_INSTALL_ARGS) $(GO_PKG_BUILD_PKG)
`,
}

// TestOpenWrtPackage replays golang-package.mk's go install of the
// OpenWrt package with make, for a MIPS router and an ARM one, and checks
// what keeps the store across sysupgrade.
func TestOpenWrtPackage(t *testing.T) {
	version, mk := makeRecipe(t, filepath.Join(openwrtDir, "Makefile"))
	for _, want := range []string{"PKG_VERSION:=" + version + "\n", "/lib/upgrade/keep.d/tether", "/etc/config/tether"} {
		if !bytes.Contains(mk, []byte(want)) {
			t.Errorf("the OpenWrt Makefile lacks %q", want)
		}
	}
	keep, err := os.ReadFile("../packaging/openwrt/tether.upgrade")
	if err != nil || !hasLine(keep, "/etc/tether/data/") {
		t.Errorf("packaging/openwrt/tether.upgrade does not keep /etc/tether/data/ (%v)", err)
	}
	top := t.TempDir()
	for name, text := range openwrtStubs {
		path := filepath.Join(top, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	repo, _ := filepath.Abs("..")
	for _, tg := range []struct {
		target                replayTarget
		goarch, goarm, gomips string
	}{
		{mipsel, "mipsle", "", "softfloat"},
		{armv7, "arm", "7", ""},
	} {
		t.Run(tg.target.name, func(t *testing.T) {
			out := t.TempDir()
			line := fmt.Sprintf("make -s -C %s replay TOPDIR=%s GO_ARCH=%s GO_ARM=%s GO_MIPS=%s REPO=%s OUT=%s",
				openwrtDir, top, tg.goarch, tg.goarm, tg.gomips, repo, out)
			if _, err := runReplay(".", replayEnv(t), line); err != nil {
				t.Fatal(err)
			}
			for _, bin := range []string{"tetherd", "tetherctl"} {
				checkBinary(t, installedBinary(t, out, bin), tg.target, version)
			}
		})
	}
}

func hasLine(b []byte, line string) bool {
	s := bufio.NewScanner(bytes.NewReader(b))
	for s.Scan() {
		if strings.TrimSpace(s.Text()) == line {
			return true
		}
	}
	return false
}
