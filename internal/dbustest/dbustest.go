// SPDX-License-Identifier: Apache-2.0

// Package dbustest runs a private D-Bus message bus for tests: a real
// dbus-daemon, started from a generated configuration that lets every
// connection own any name, send anything and receive anything, listening on a
// Unix socket in a temporary directory. Unix file descriptors can be passed
// over it.
//
// It is for tests only. It does not imitate the system bus's security
// policy; a test that needs policy enforced must bring its own daemon.
package dbustest

import (
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// startTimeout bounds how long StartWith waits for the daemon to print its
// address.
const startTimeout = 10 * time.Second

// config is the daemon's configuration; %s is the socket's path.
const config = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>tether-test</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*" eavesdrop="true"/>
    <allow receive_sender="*"/>
    <allow eavesdrop="true"/>
  </policy>
</busconfig>
`

// Bus is a running private message bus.
type Bus struct {
	// Address is the bus address, as for dbus.Connect or
	// DBUS_SYSTEM_BUS_ADDRESS.
	Address string
}

// Start runs a dbus-daemon that allows everything until the test ends. It
// skips the test when no dbus-daemon is installed and fails it when the
// daemon does not start.
func Start(t testing.TB) *Bus {
	t.Helper()
	return &StartWith(t, Options{}).Bus
}

// Conn opens a new connection to the bus, authenticated and named, which
// is closed when the test ends.
func (b *Bus) Conn(t testing.TB) *dbus.Conn {
	t.Helper()
	conn, err := dbus.Connect(b.Address)
	if err != nil {
		t.Fatalf("connect to test bus %s: %v", b.Address, err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
