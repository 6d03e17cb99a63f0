// SPDX-License-Identifier: Apache-2.0

package dbustest_test

import (
	"os"
	"testing"

	"github.com/godbus/dbus/v5"

	"tether/internal/dbustest"
)

// A service on one connection is reachable from another, signals are
// delivered, and file descriptors cross the bus.
func TestBus(t *testing.T) {
	bus := dbustest.Start(t)
	server, client := bus.Conn(t), bus.Conn(t)

	const name, path, iface = "org.example.Test", dbus.ObjectPath("/org/example/Test"), "org.example.Test"
	if reply, err := server.RequestName(name, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName = %v, %v", reply, err)
	}
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	wfd := dbus.UnixFD(w.Fd())
	err = server.ExportMethodTable(map[string]any{
		"Echo": func(s string) (string, *dbus.Error) { return s, nil },
		"Pipe": func() (dbus.UnixFD, *dbus.Error) { return wfd, nil },
	}, path, iface)
	if err != nil {
		t.Fatal(err)
	}

	var got string
	if err := client.Object(name, path).Call(iface+".Echo", 0, "hello").Store(&got); err != nil || got != "hello" {
		t.Fatalf("Echo = %q, %v", got, err)
	}

	if !client.SupportsUnixFDs() {
		t.Fatal("test bus does not pass file descriptors")
	}
	var fd dbus.UnixFD
	if err := client.Object(name, path).Call(iface+".Pipe", 0).Store(&fd); err != nil {
		t.Fatalf("Pipe: %v", err)
	}
	w.Close() // the client holds its own copy
	f := os.NewFile(uintptr(fd), "pipe")
	if _, err := f.Write([]byte("x")); err != nil {
		t.Fatalf("write to passed descriptor: %v", err)
	}
	f.Close()
	buf := make([]byte, 2)
	if n, err := r.Read(buf); err != nil || string(buf[:n]) != "x" {
		t.Fatalf("read from pipe = %q, %v", buf[:n], err)
	}

	if err := client.AddMatchSignal(dbus.WithMatchInterface(iface)); err != nil {
		t.Fatal(err)
	}
	signals := make(chan *dbus.Signal, 1)
	client.Signal(signals)
	if err := server.Emit(path, iface+".Ping", uint32(7)); err != nil {
		t.Fatal(err)
	}
	s := <-signals
	if s.Name != iface+".Ping" || len(s.Body) != 1 || s.Body[0] != uint32(7) {
		t.Fatalf("signal = %+v", s)
	}
}
