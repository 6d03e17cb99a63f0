// SPDX-License-Identifier: Apache-2.0

package dbusdoor

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"tether/ipc"
)

var updateInterfaceFile = flag.Bool("update", false, "rewrite packaging/dbus/org.tether.Push1.xml from the door's tables")

// TestInterfaceFile checks that the interface description the packages
// install in /usr/share/dbus-1/interfaces/ is the door's own: its
// org.tether.Push1 interface as Introspect gives it, from the same tables.
func TestInterfaceFile(t *testing.T) {
	var b strings.Builder
	b.WriteString(introspectDeclaration + "<node>\n")
	pushInterface.writeXML(&b)
	b.WriteString("</node>\n")
	want := b.String()
	if !strings.Contains(introspectXML(ipc.DBusPath), want[strings.Index(want, "  <interface"):strings.LastIndex(want, "</node>")]) {
		t.Fatal("the door's introspection data lacks its interface as written here")
	}

	path := filepath.Join("..", "..", "packaging", "dbus", ipc.DBusInterface+".xml")
	if *updateInterfaceFile {
		if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != want {
		t.Errorf("%s differs from the door's interface; rewrite it with go test ./ipc/dbusdoor -run TestInterfaceFile -update\nwant:\n%s", path, want)
	}
}
