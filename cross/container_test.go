// SPDX-License-Identifier: Apache-2.0

package cross

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
)

// dockerfile is what the test takes from the Dockerfile: the build
// argument UID and the final stage's settings.
type dockerfile struct {
	uid, user, volume    string
	healthcheck, command []string
}

// readDockerfile reads ../Dockerfile, whose instructions this test runs.
func readDockerfile(t *testing.T) dockerfile {
	t.Helper()
	text, err := os.ReadFile("../Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	var d dockerfile
	var entrypoint, cmd []string
	argv := func(line, instr string) []string {
		var v []string
		if err := json.Unmarshal([]byte(strings.TrimSpace(line)), &v); err != nil {
			t.Fatalf("Dockerfile %s %q: want the JSON form: %v", instr, line, err)
		}
		return v
	}
	// Continuation lines joined; the last of each instruction wins, as
	// the final stage's do.
	for _, line := range strings.Split(strings.ReplaceAll(string(text), "\\\n", " "), "\n") {
		instr, rest, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch instr {
		case "ARG":
			if v, ok := strings.CutPrefix(rest, "UID="); ok {
				d.uid = v
			}
		case "USER":
			d.user = rest
		case "VOLUME":
			d.volume = rest
		case "HEALTHCHECK":
			_, c, ok := strings.Cut(rest, " CMD ")
			if !ok {
				t.Fatalf("Dockerfile HEALTHCHECK %q has no CMD", rest)
			}
			d.healthcheck = argv(c, instr)
		case "ENTRYPOINT":
			entrypoint = argv(rest, instr)
		case "CMD":
			cmd = argv(rest, instr)
		}
	}
	d.command = append(entrypoint, cmd...)
	if d.uid == "" || d.user == "" || d.volume == "" || d.healthcheck == nil || len(d.command) < 2 {
		t.Fatalf("Dockerfile lacks ARG UID=, USER, VOLUME, HEALTHCHECK or ENTRYPOINT and CMD: %+v", d)
	}
	return d
}

// TestContainerRootFilesystem builds the container image's files with
// packaging/container/rootfs.sh, as the Dockerfile does, into a directory,
// and runs the Dockerfile's ENTRYPOINT and CMD there with chroot as the
// image's user, in a network namespace of its own: the server serves
// from the volume's directory, and the HEALTHCHECK command passes.
func TestContainerRootFilesystem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chroot and chown need root")
	}
	if _, err := exec.LookPath("chroot"); err != nil {
		t.Skip("no chroot")
	}
	d := readDockerfile(t)
	if want := "${UID}:${UID}"; d.user != want {
		t.Errorf("Dockerfile USER %s, want %s (numeric, from ARG UID)", d.user, want)
	}

	bin := filepath.Join(t.TempDir(), "tether-server")
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "../cmd/tether-server")
	build.Env = append(os.Environ(), "CGO_ENABLED=0") // nothing to link in the image
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	root := filepath.Join(t.TempDir(), "root")
	if out, err := exec.Command("../packaging/container/rootfs.sh", bin, root, d.uid).CombinedOutput(); err != nil {
		t.Fatalf("rootfs.sh: %v\n%s", err, out)
	}

	passwd, err := os.ReadFile(filepath.Join(root, "etc/passwd"))
	if err != nil {
		t.Fatal(err)
	}
	wantUser := fmt.Sprintf("\ntether-server:x:%s:%s:", d.uid, d.uid)
	if !strings.Contains(string(passwd), wantUser) || !strings.Contains(string(passwd), ":"+d.volume+":") {
		t.Errorf("/etc/passwd has no tether-server user %s with home %s:\n%s", d.uid, d.volume, passwd)
	}
	for _, f := range []struct {
		path     string
		mode     os.FileMode
		owner    string
		contains string
	}{
		{"/usr/bin/tether-server", 0o755, "0", ""},
		{"/etc/tether/server.toml", 0o644, "0", `data = "` + d.volume + `"`},
		{"/etc/ssl/certs/ca-certificates.crt", 0o644, "0", "BEGIN CERTIFICATE"},
		{"/etc/group", 0o644, "0", "tether-server:x:" + d.uid + ":"},
		{d.volume, os.ModeDir | 0o700, d.uid, ""},
	} {
		fi, err := os.Stat(filepath.Join(root, f.path))
		if err != nil {
			t.Errorf("not in the image: %v", err)
			continue
		}
		if uid := fmt.Sprint(fi.Sys().(*syscall.Stat_t).Uid); fi.Mode() != f.mode || uid != f.owner {
			t.Errorf("%s: mode %v owner %s, want %v owner %s", f.path, fi.Mode(), uid, f.mode, f.owner)
		}
		if f.contains != "" {
			if b, _ := os.ReadFile(filepath.Join(root, f.path)); !strings.Contains(string(b), f.contains) {
				t.Errorf("%s lacks %q", f.path, f.contains)
			}
		}
	}

	// What a container of the image runs: docker run --user UID:UID
	// IMAGE ARGS is chroot --userspec=UID:UID ROOT ENTRYPOINT ARGS.
	in := []string{"chroot", "--userspec=" + d.uid + ":" + d.uid, root}
	// The first start needs a way for devices to enroll, as
	// docs/deploy.md says: an enrollment key on the volume.
	if out, err := exec.Command("chroot", append(in[1:], d.command[0], "enroll", "create", "--data", d.volume)...).CombinedOutput(); err != nil {
		t.Fatalf("enroll create in the image: %v\n%s", err, out)
	}
	args := serveArgs(t, serveHelp(t, append(in, d.command[0])...), d.command[1:], filepath.Join(root, "etc/tether/server.toml"))
	ns := serverNetns(t)
	if addr := startInNetns(t, ns, slices.Concat(in, d.command[:1], args)...); !regexp.MustCompile(`:8080$`).MatchString(addr) {
		t.Errorf("the image's server listens on %s, want port 8080 as EXPOSE says", addr)
	}
	out, err := exec.Command("ip", slices.Concat([]string{"netns", "exec", ns.Name}, in, d.healthcheck)...).CombinedOutput()
	if err != nil || string(out) != "ok\n" {
		t.Errorf("HEALTHCHECK %q: %v %q", d.healthcheck, err, out)
	}
	if fi, err := os.Stat(filepath.Join(root, d.volume, "server.db")); err != nil {
		t.Errorf("no store on the volume: %v", err)
	} else if uid := fmt.Sprint(fi.Sys().(*syscall.Stat_t).Uid); uid != d.uid {
		t.Errorf("the store belongs to uid %s, not the image's user %s", uid, d.uid)
	}
}
