// SPDX-License-Identifier: Apache-2.0

package dbustest_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/godbus/dbus/v5"

	"tether/internal/dbustest"
)

// A bus with the system's policy refuses what no policy file grants, takes
// what an included file grants, and keeps its socket reachable by all.
func TestStartSystemLike(t *testing.T) {
	policy := filepath.Join(t.TempDir(), "org.example.Test.conf")
	err := os.WriteFile(policy, []byte(`<busconfig>
  <policy context="default">
    <allow own="org.example.Granted"/>
    <allow send_destination="org.example.Granted"/>
  </policy>
</busconfig>
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}
	bus := dbustest.StartSystemLike(t, policy)

	path, _ := strings.CutPrefix(strings.Split(bus.Address, ",")[0], "unix:path=")
	if fi, err := os.Stat(filepath.Dir(path)); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("socket directory: %v, %v; want mode 0755", fi.Mode(), err)
	}

	server, client := bus.Conn(t), bus.Conn(t)
	if _, err := server.RequestName("org.example.Denied", dbus.NameFlagDoNotQueue); err == nil || !strings.Contains(err.Error(), "not allowed to own") {
		t.Errorf("RequestName(org.example.Denied) = %v, want the policy's refusal", err)
	}
	if reply, err := server.RequestName("org.example.Granted", dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName(org.example.Granted) = %v, %v", reply, err)
	}
	// Peer is answered by the connection itself, so a refusal comes from
	// the bus's policy.
	if err := client.Object("org.example.Granted", "/").Call("org.freedesktop.DBus.Peer.Ping", 0).Err; err != nil {
		t.Errorf("call to the granted name: %v", err)
	}
	if err := client.Object(server.Names()[0], "/").Call("org.freedesktop.DBus.Peer.Ping", 0).Err; err != nil {
		t.Errorf("call to the granted name's unique name: %v", err)
	}
	other := bus.Conn(t)
	if err := client.Object(other.Names()[0], "/").Call("org.freedesktop.DBus.Peer.Ping", 0).Err; err == nil || !strings.Contains(err.Error(), "AccessDenied") && !strings.Contains(err.Error(), "Rejected") {
		t.Errorf("call to a connection no policy opens = %v, want it rejected", err)
	}
}

// The process is there to be stopped and continued.
func TestStartWithProcess(t *testing.T) {
	d := dbustest.StartWith(t, dbustest.Options{})
	if d.Process == nil || d.Process.Pid <= 0 {
		t.Fatalf("no process: %+v", d.Process)
	}
	d.Conn(t) // the permissive bus answers
}
