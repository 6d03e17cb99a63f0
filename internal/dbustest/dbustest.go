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
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// startTimeout bounds how long Start waits for the daemon to print its
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

// Start runs a dbus-daemon until the test ends. It skips the test when no
// dbus-daemon is installed and fails it when the daemon does not start.
func Start(t testing.TB) *Bus {
	t.Helper()
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("dbus-daemon is not installed: ", err)
	}
	// A Unix socket path is limited to 108 bytes; t.TempDir's names grow
	// with the test's name, so the socket goes in a short directory.
	dir, err := os.MkdirTemp("", "dbustest")
	if err != nil {
		t.Fatalf("make bus directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	confPath := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(confPath, fmt.Appendf(nil, config, filepath.Join(dir, "bus")), 0o600); err != nil {
		t.Fatalf("write bus configuration: %v", err)
	}

	cmd := exec.Command(daemon, "--config-file="+confPath, "--print-address", "--nofork", "--nopidfile", "--nosyslog")
	// Should the test binary die without cleaning up (a -timeout panic),
	// the daemon goes with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("start dbus-daemon: %v", err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start dbus-daemon: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})

	addr := make(chan string, 1)
	go func() {
		// The daemon prints its address and nothing else on stdout; the
		// pipe is closed when it exits.
		line, _ := bufio.NewReader(stdout).ReadString('\n')
		addr <- strings.TrimSpace(line)
	}()
	timeout := time.NewTimer(startTimeout)
	defer timeout.Stop()
	select {
	case a := <-addr:
		if a == "" {
			<-exited
			t.Fatalf("dbus-daemon printed no address: %s", strings.TrimSpace(stderr.String()))
		}
		return &Bus{Address: a}
	case <-timeout.C:
		t.Fatalf("dbus-daemon printed no address within %v", startTimeout)
		return nil
	}
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
