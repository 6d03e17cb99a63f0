// SPDX-License-Identifier: Apache-2.0

// Package netnstest makes throwaway network namespaces for tests that need
// real links, addresses and routes without touching the host's: each
// namespace is created with ip(8) and deleted when the test ends.
//
// It is for tests only and needs root; New skips the test otherwise.
package netnstest

import (
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// Namespace is a named network namespace, as `ip netns add` makes them.
type Namespace struct {
	// Name is the namespace's name for `ip -n`.
	Name string
	// Path is its bind mount, which setns(2) can be given after opening
	// it.
	Path string
}

// New creates a network namespace that is deleted when the test ends. It
// skips the test when not run as root or when ip(8) is missing.
func New(t testing.TB) *Namespace {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("network namespaces need root")
	}
	if _, err := exec.LookPath("ip"); err != nil {
		t.Skip("ip(8) is not installed: ", err)
	}
	var id [4]byte
	rand.Read(id[:])
	ns := &Namespace{Name: "tethertest-" + hex.EncodeToString(id[:])}
	if out, err := exec.Command("ip", "netns", "add", ns.Name).CombinedOutput(); err != nil {
		t.Skipf("cannot create a network namespace: ip netns add: %v: %s", err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("ip", "netns", "del", ns.Name).CombinedOutput(); err != nil {
			t.Errorf("ip netns del %s: %v: %s", ns.Name, err, strings.TrimSpace(string(out)))
		}
	})
	ns.Path = filepath.Join("/run/netns", ns.Name)
	return ns
}

// IP runs `ip -n <namespace> args...` and fails the test if it fails.
func (ns *Namespace) IP(t testing.TB, args ...string) {
	t.Helper()
	out, err := exec.Command("ip", append([]string{"-n", ns.Name}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("ip -n %s %s: %v: %s", ns.Name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
}
