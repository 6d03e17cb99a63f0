// SPDX-License-Identifier: Apache-2.0

package dbustest

import (
	"bufio"
	"fmt"
	"html"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// systemConfig is a daemon configuration with the default policy of the
// system bus (/usr/share/dbus-1/system.conf): every user may connect, but
// nobody may own a name or call a method on another connection unless a
// policy file says so, and nobody is granted eavesdropping. %s is the
// socket's path, %s the <include> elements.
const systemConfig = `<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>tether-test-system</type>
  <listen>unix:path=%s</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <deny own="*"/>
    <deny send_type="method_call"/>
    <allow send_type="signal"/>
    <allow send_requested_reply="true" send_type="method_return"/>
    <allow send_requested_reply="true" send_type="error"/>
    <allow receive_type="method_call"/>
    <allow receive_type="method_return"/>
    <allow receive_type="error"/>
    <allow receive_type="signal"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Introspectable"/>
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Properties"/>
    <deny send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus" send_member="UpdateActivationEnvironment"/>
  </policy>
  <policy user="root">
    <allow send_destination="org.freedesktop.DBus" send_interface="org.freedesktop.DBus.Monitoring"/>
  </policy>
%s</busconfig>
`

// Options says how StartWith configures the daemon.
type Options struct {
	// SystemPolicy gives the bus the system bus's default policy instead
	// of allowing everything: no connection may own a name or call methods
	// of another connection unless an included file allows it, and none
	// may eavesdrop. Root may still monitor the bus, as on the system bus.
	SystemPolicy bool
	// Include lists policy files (absolute paths) that the daemon reads
	// after its own policy, as the system bus reads the files in
	// /usr/share/dbus-1/system.d.
	Include []string
	// ServiceDirs lists directories of D-Bus service files (absolute
	// paths): a call to a name that nobody owns starts the service whose
	// file names it, as a session bus does with
	// /usr/share/dbus-1/services. The bus gives the services it starts
	// its address in DBUS_STARTER_ADDRESS.
	ServiceDirs []string
}

// Daemon is a bus started by StartWith, with its process.
type Daemon struct {
	Bus
	// Process is the running dbus-daemon. A test may stop it (SIGSTOP) to
	// see what a stalled bus does, and must continue it before the test
	// ends.
	Process *os.Process
}

// StartSystemLike runs a dbus-daemon with the system bus's default policy
// and the given policy files until the test ends; see Options.
func StartSystemLike(t testing.TB, policyFiles ...string) *Daemon {
	t.Helper()
	return StartWith(t, Options{SystemPolicy: true, Include: policyFiles})
}

// StartWith runs a dbus-daemon configured by opts until the test ends. Its
// socket's directory is open to every user (0755), so that a test may
// connect as another user and meet the bus's policy rather than file
// permissions. It skips the test when no dbus-daemon is installed and fails
// it when the daemon does not start.
func StartWith(t testing.TB, opts Options) *Daemon {
	t.Helper()
	daemon, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("dbus-daemon is not installed: ", err)
	}
	dir, err := os.MkdirTemp("", "dbustest")
	if err != nil {
		t.Fatalf("make bus directory: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatalf("open bus directory to every user: %v", err)
	}

	var includes strings.Builder
	for _, f := range opts.Include {
		if !filepath.IsAbs(f) {
			t.Fatalf("policy file %q: the path must be absolute", f)
		}
		if _, err := os.Stat(f); err != nil {
			t.Fatalf("policy file: %v", err)
		}
		fmt.Fprintf(&includes, "  <include>%s</include>\n", html.EscapeString(f))
	}
	for _, d := range opts.ServiceDirs {
		if !filepath.IsAbs(d) {
			t.Fatalf("service directory %q: the path must be absolute", d)
		}
		fmt.Fprintf(&includes, "  <servicedir>%s</servicedir>\n", html.EscapeString(d))
	}
	socket := filepath.Join(dir, "bus")
	var conf string
	if opts.SystemPolicy {
		conf = fmt.Sprintf(systemConfig, socket, includes.String())
	} else {
		conf = strings.Replace(fmt.Sprintf(config, socket), "</busconfig>", includes.String()+"</busconfig>", 1)
	}
	confPath := filepath.Join(dir, "bus.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
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
		return &Daemon{Bus: Bus{Address: a}, Process: cmd.Process}
	case <-timeout.C:
		t.Fatalf("dbus-daemon printed no address within %v", startTimeout)
		return nil
	}
}
