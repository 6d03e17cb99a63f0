// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// sizes compares what goes on a device: tetherd, static, against
// mosquitto_sub and the shared libraries it loads.
type sizes struct {
	Tetherd int64 `json:"tetherd_bytes"` // as -bin has it, for this machine's CPU
	// TetherdARMv7 is tetherd for ARMv7 (stripped, static), and
	// ARMv7From where it came from; zero when there was none.
	TetherdARMv7 int64  `json:"tetherd_armv7_bytes,omitempty"`
	ARMv7From    string `json:"tetherd_armv7_from,omitempty"`
	MosquittoSub int64  `json:"mosquitto_sub_bytes"`
	// Libraries are the shared libraries mosquitto_sub loads besides the
	// C library and the dynamic loader, which every program has.
	Libraries []library `json:"libraries"`
	// WithLibraries is mosquitto_sub and its Libraries.
	WithLibraries int64 `json:"mosquitto_sub_with_libraries_bytes"`
}

type library struct {
	Name  string `json:"name"`
	Path  string `json:"path"` // symbolic links resolved
	Bytes int64  `json:"bytes"`
}

// systemLibrary tells the libraries every dynamically linked program
// loads, which are not mosquitto_sub's own cost.
func systemLibrary(name string) bool {
	for _, p := range []string{"linux-vdso", "linux-gate", "ld-linux", "libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

func measureSizes(ctx context.Context, c config, bins binaries, tools mosquittoTools, work string) (sizes, error) {
	var s sizes
	var err error
	if s.Tetherd, err = fileSize(bins.agent); err != nil {
		return s, err
	}
	cross := filepath.Join(bins.dir, "cross", "linux-armv7", "tetherd")
	switch {
	case exists(cross):
		s.ARMv7From = "make cross: " + cross
	case c.armBuild:
		if cross, err = buildARMv7(ctx, work); err != nil {
			return s, err
		}
		s.ARMv7From = "GOARCH=arm GOARM=7 CGO_ENABLED=0 go build -trimpath -ldflags '-s -w'"
	default:
		cross = ""
	}
	if cross != "" {
		if s.TetherdARMv7, err = fileSize(cross); err != nil {
			return s, err
		}
	}
	if s.MosquittoSub, err = fileSize(tools.sub); err != nil {
		return s, err
	}
	out, err := exec.CommandContext(ctx, "ldd", tools.sub).Output()
	if err != nil {
		return s, fmt.Errorf("ldd %s: %w", tools.sub, exitDetail(err))
	}
	if s.Libraries, err = parseLdd(out); err != nil {
		return s, err
	}
	s.WithLibraries = s.MosquittoSub
	for _, l := range s.Libraries {
		s.WithLibraries += l.Bytes
	}
	return s, nil
}

// parseLdd reads ldd's "name => path (address)" lines and sizes each
// library but the system's.
func parseLdd(out []byte) ([]library, error) {
	var libs []library
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		name, rest, ok := strings.Cut(strings.TrimSpace(sc.Text()), " => ")
		if !ok || systemLibrary(name) {
			continue
		}
		path, _, _ := strings.Cut(rest, " (")
		if path == "" || path == "not found" {
			return nil, fmt.Errorf("ldd: %s is not found", name)
		}
		real, err := filepath.EvalSymlinks(path)
		if err != nil {
			return nil, err
		}
		size, err := fileSize(real)
		if err != nil {
			return nil, err
		}
		libs = append(libs, library{Name: name, Path: real, Bytes: size})
	}
	return libs, nil
}

// buildARMv7 builds tetherd for ARMv7 as make cross does, into work.
func buildARMv7(ctx context.Context, work string) (string, error) {
	mod, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("find the Tether module to build tetherd for ARMv7: %w", exitDetail(err))
	}
	if !strings.HasSuffix(strings.TrimSpace(string(mod)), "go.mod") {
		return "", errors.New("building tetherd for ARMv7 needs the Tether module: run from its checkout, make cross first, or give -arm-build=false")
	}
	out := filepath.Join(work, "tetherd-armv7")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, "./cmd/tetherd")
	cmd.Dir = filepath.Dir(strings.TrimSpace(string(mod)))
	cmd.Env = append(os.Environ(), "GOOS=linux", "GOARCH=arm", "GOARM=7", "CGO_ENABLED=0")
	if msg, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("build tetherd for ARMv7: %w: %s", err, bytes.TrimSpace(msg))
	}
	return out, nil
}

func fileSize(path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	return st.Size(), nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
