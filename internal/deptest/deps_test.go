// SPDX-License-Identifier: Apache-2.0

package deptest

import (
	"errors"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// sizeCuts are what the device binaries left behind to fit the size
// budgets of docs/firmware.md.
var sizeCuts = map[string]string{
	"net/http":                            "the HTTP client, HTTP/2, MIME and IDNA tables: about 750 KiB on ARMv7; internal/websocket dials without it",
	"github.com/gorilla/websocket":        "links net/http; the agent dials with internal/websocket",
	"github.com/pelletier/go-toml/v2/...": "a complete TOML decoder, about 300 KiB on ARMv7; internal/conftoml reads the config file",
	"encoding/xml":                        "about 64 KiB on ARMv7 for one fixed document; ipc/dbusdoor writes its introspection data itself",
	"golang.org/x/net/idna":               "IDNA tables, about 220 KiB on ARMv7 with x/net's httpproxy; internal/proxyenv applies Go's proxy rules without them",
	"github.com/prometheus/...":           "tether-server's metrics client and its protobuf, 2.3 MiB; a device serves no metrics",
	"github.com/kardianos/service":        "a service installer of 448 KiB on ARMv7 with the regular expressions its detection compiles; platform/service's own is 192 KiB",
	"regexp":                              "nothing on a device needs regular expressions; kardianos/service brought them",
	"log/syslog":                          "tetherd logs to stderr, which the journal or the init script's logger takes",
	"github.com/godbus/dbus/v5/...":       "a complete D-Bus library, about 448 KiB on ARMv7; the D-Bus door, tetherctl and the watchers use internal/busclient",
}

// merge returns the union of maps.
func merge(ms ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range ms {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}

func TestTetherdDeps(t *testing.T) {
	DepChecker{
		Pkg: "tether/cmd/tetherd",
		BadDeps: merge(sizeCuts, map[string]string{
			"tether/server/...": "the connection server's code has no place on a device",
		}),
	}.Check(t)
}

func TestAgentDeps(t *testing.T) {
	DepChecker{
		Pkg: "tether/agent",
		BadDeps: map[string]string{
			"github.com/godbus/dbus/v5/...": "the agent serves D-Bus only through ipc/dbusdoor, which cmd/tetherd wires in",
			"tether/ipc/socketdoor":         "the doors are wired in by cmd/tetherd",
			"tether/ipc/dbusdoor":           "the doors are wired in by cmd/tetherd",
		},
	}.Check(t)
}

func TestIPCDeps(t *testing.T) {
	DepChecker{
		Pkg: "tether/ipc",
		BadDeps: map[string]string{
			"github.com/...": "ipc holds the types the doors and their clients share, with no third-party imports",
			"golang.org/...": "ipc holds the types the doors and their clients share, with no third-party imports",
			"go.etcd.io/...": "ipc holds the types the doors and their clients share, with no third-party imports",
		},
	}.Check(t)
}

func TestTetherctlDeps(t *testing.T) {
	DepChecker{
		Pkg: "tether/cmd/tetherctl",
		BadDeps: merge(sizeCuts, map[string]string{
			"tether/ipc/socketdoor": "tetherctl is a client of the doors, not a door",
			"tether/ipc/dbusdoor":   "tetherctl is a client of the doors, not a door",
			"tether/agent":          "tetherctl talks to the agent through a door",
			"go.etcd.io/bbolt":      "tetherctl talks to the agent through a door, not to its store",
			"crypto/tls":            "tetherctl talks only to the local agent",
			"net":                   "about 300 KiB on ARMv7 with its resolver; tetherctl dials Unix sockets with internal/unixconn",
		}),
	}.Check(t)
}

// noInstall is the smallest firmware's tag: it leaves the service
// installer out (docs/firmware.md).
const noInstall = "tether_noinstall"

func TestSmallestTetherdDeps(t *testing.T) {
	DepChecker{
		Pkg:  "tether/cmd/tetherd",
		Tags: noInstall,
		BadDeps: map[string]string{
			"tether/packaging/...": noInstall + " leaves the service installer, and the unit and init scripts it writes, out",
		},
	}.Check(t)
}

// TestSmallestBuildsRefuse builds tetherd with the smallest firmware's tag
// and runs what it leaves out: each is refused with exit status 2 and a
// sentence that names the tag.
func TestSmallestBuildsRefuse(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a binary; skipped in -short")
	}
	dir := t.TempDir()
	tests := []struct {
		pkg, tag string
		args     []string
	}{
		{"tether/cmd/tetherd", noInstall, []string{"install", "--init", "systemd"}},
		{"tether/cmd/tetherd", noInstall, []string{"status"}},
	}
	for _, tt := range tests {
		bin := filepath.Join(dir, filepath.Base(tt.pkg))
		if out, err := exec.Command("go", "build", "-tags", tt.tag, "-o", bin, tt.pkg).CombinedOutput(); err != nil {
			t.Fatalf("go build -tags %s %s: %v\n%s", tt.tag, tt.pkg, err, out)
		}
		out, err := exec.Command(bin, tt.args...).CombinedOutput()
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() != 2 || !strings.Contains(string(out), "tag "+tt.tag) {
			t.Errorf("%s %s: %v, want exit status 2 and a word of the tag:\n%s", bin, strings.Join(tt.args, " "), err, out)
		}
	}
}
