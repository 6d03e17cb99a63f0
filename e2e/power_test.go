// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"

	"tether/internal/dbustest"
	"tether/internal/testwait"
)

// fakeUPower is UPower's two objects the agent reads, on a test bus.
type fakeUPower struct {
	daemon, display *prop.Properties
}

func startFakeUPower(t *testing.T, bus *dbustest.Bus) *fakeUPower {
	t.Helper()
	conn := bus.Conn(t)
	daemon, err := prop.Export(conn, "/org/freedesktop/UPower", prop.Map{
		"org.freedesktop.UPower": {"OnBattery": {Value: false, Emit: prop.EmitTrue}},
	})
	if err != nil {
		t.Fatal(err)
	}
	display, err := prop.Export(conn, "/org/freedesktop/UPower/devices/DisplayDevice", prop.Map{
		"org.freedesktop.UPower.Device": {
			"IsPresent":  {Value: true, Emit: prop.EmitTrue},
			"Percentage": {Value: 80.0, Emit: prop.EmitTrue},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if reply, err := conn.RequestName("org.freedesktop.UPower", dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own org.freedesktop.UPower: %v, %v", reply, err)
	}
	return &fakeUPower{daemon: daemon, display: display}
}

// set changes what UPower says, with the PropertiesChanged signals it sends.
func (u *fakeUPower) set(t *testing.T, onBattery bool, percent float64) {
	t.Helper()
	u.display.SetMust("org.freedesktop.UPower.Device", "Percentage", percent)
	u.daemon.SetMust("org.freedesktop.UPower", "OnBattery", onBattery)
}

func (a *agent) waitPowerMode(mode string) {
	a.t.Helper()
	testwait.For(a.t, "power mode "+mode, 30*time.Second, func() error {
		st, err := a.status()
		if err != nil {
			return err
		}
		if st.PowerMode != mode {
			return fmt.Errorf("power mode %q", st.PowerMode)
		}
		return nil
	})
}

// TestPowerModeFollowsUPowerAndTheServerHolds runs the agent with a fake
// UPower on its system bus. The mode follows what UPower says, and the
// server follows the mode: on battery it holds normal-priority messages
// until a high-priority one goes; on low battery only high-priority ones go
// until the device is back on mains.
func TestPowerModeFollowsUPowerAndTheServerHolds(t *testing.T) {
	bus := dbustest.Start(t)
	upower := startFakeUPower(t, bus)
	f := &fleet{hook: startWebhook(t)}
	f.srv = startServer(t)
	f.sender, f.key = f.srv.addSender("thermo-backend", f.hook.url())
	f.agent = newAgent(t, f.srv.url(), "--dbus", "off", "--heartbeat", "4m", "--low-battery", "15")
	f.agent.env = []string{"DBUS_SYSTEM_BUS_ADDRESS=" + bus.Address}
	f.agent.start()
	f.token = f.agent.register(app, f.sender)
	f.agent.waitPowerMode("mains")
	msgs, _ := f.agent.listen(app)
	send := func(priority, n string) string {
		return f.srv.mustSend(f.key, map[string]any{"to": f.token, "priority": priority, "data": map[string]string{"n": n}})
	}

	upower.set(t, true, 60)
	f.agent.waitPowerMode("battery")
	// Had the normal one gone at once, it would come first.
	held := send("normal", "held on battery")
	urgent := send("high", "urgent")
	if got := next(t, msgs); got.MessageID != urgent {
		t.Fatalf("on battery the first message is %q (%v), want the high-priority one", got.MessageID, got.Data)
	}
	if got := next(t, msgs); got.MessageID != held {
		t.Fatalf("then %q (%v), want the held normal one", got.MessageID, got.Data)
	}

	upower.set(t, true, 10)
	f.agent.waitPowerMode("low")
	waiting := send("normal", "waits for mains")
	alarm := send("high", "alarm")
	if got := next(t, msgs); got.MessageID != alarm {
		t.Fatalf("on low battery the first message is %q (%v), want the high-priority one", got.MessageID, got.Data)
	}
	upower.set(t, false, 10)
	f.agent.waitPowerMode("mains")
	if got := next(t, msgs); got.MessageID != waiting {
		t.Fatalf("back on mains the next message is %q (%v), want the one that waited", got.MessageID, got.Data)
	}
}

// TestPowerModeFromSysfs runs the agent on a fake sysfs tree (no UPower):
// a battery discharging at 9 % with the adapter unplugged is low battery.
func TestPowerModeFromSysfs(t *testing.T) {
	root := t.TempDir()
	supplies := map[string]map[string]string{
		"AC":   {"type": "Mains", "online": "0"},
		"BAT0": {"type": "Battery", "present": "1", "status": "Discharging", "capacity": "9"},
	}
	for name, attrs := range supplies {
		dir := filepath.Join(root, "class", "power_supply", name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for attr, v := range attrs {
			if err := os.WriteFile(filepath.Join(dir, attr), []byte(v+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	srv := startServer(t)
	a := newAgent(t, srv.url(), "--dbus", "off", "--sysfs-root", root)
	a.env = []string{"DBUS_SYSTEM_BUS_ADDRESS=unix:path=" + filepath.Join(root, "no-bus")}
	a.start()
	a.waitPowerMode("low")
}

// fakeLogind is logind's Manager on a test bus: Inhibit hands out one end
// of a pipe, as logind hands out its lock.
type fakeLogind struct {
	conn  *dbus.Conn
	locks chan lockPipe
}

// lockPipe is one inhibitor lock, a pipe whose end given went to the
// agent.
type lockPipe struct{ held, given *os.File }

func (l lockPipe) close() {
	l.held.Close()
	l.given.Close()
}

// heldBy reports whether process pid has a descriptor of the lock's pipe.
func (l lockPipe) heldBy(pid int) bool {
	fi, err := l.given.Stat()
	if err != nil {
		return false
	}
	want := fmt.Sprintf("pipe:[%d]", fi.Sys().(*syscall.Stat_t).Ino)
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	for _, fd := range fds {
		if target, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); target == want {
			return true
		}
	}
	return false
}

func startFakeLogind(t *testing.T, bus *dbustest.Bus) *fakeLogind {
	t.Helper()
	l := &fakeLogind{conn: bus.Conn(t), locks: make(chan lockPipe, 4)}
	err := l.conn.ExportMethodTable(map[string]any{
		"Inhibit": func(what, who, why, mode string) (dbus.UnixFD, *dbus.Error) {
			r, w, err := os.Pipe()
			if err != nil {
				return -1, dbus.MakeFailedError(err)
			}
			fd := dbus.UnixFD(w.Fd())              // the bus sends a copy
			l.locks <- lockPipe{held: r, given: w} // the test closes them
			return fd, nil
		},
	}, "/org/freedesktop/login1", "org.freedesktop.login1.Manager")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prop.Export(l.conn, "/org/freedesktop/login1", prop.Map{
		"org.freedesktop.login1.Manager": {"InhibitDelayMaxUSec": {Value: uint64(5_000_000), Emit: prop.EmitConst}},
	}); err != nil {
		t.Fatal(err)
	}
	if reply, err := l.conn.RequestName("org.freedesktop.login1", dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own org.freedesktop.login1: %v, %v", reply, err)
	}
	return l
}

func (l *fakeLogind) prepareForSleep(t *testing.T, start bool) {
	t.Helper()
	if err := l.conn.Emit("/org/freedesktop/login1", "org.freedesktop.login1.Manager.PrepareForSleep", start); err != nil {
		t.Fatal(err)
	}
}

// TestSuspendAndResume: before the system sleeps the agent closes its
// connection cleanly and lets go of its inhibitor lock; on resume it
// reconnects at once.
func TestSuspendAndResume(t *testing.T) {
	bus := dbustest.Start(t)
	logind := startFakeLogind(t, bus)
	srv := startServer(t)
	a := newAgent(t, srv.url(), "--dbus", "off", "--heartbeat", "4m", "--min-backoff", "1m", "--max-backoff", "1m")
	a.env = []string{"DBUS_SYSTEM_BUS_ADDRESS=" + bus.Address}
	a.start()
	var lock lockPipe
	select {
	case lock = <-logind.locks:
	case <-time.After(30 * time.Second):
		t.Fatal("the agent took no inhibitor lock")
	}
	defer lock.close()
	pid := a.p.cmd.Process.Pid
	testwait.For(t, "the agent to hold the lock", 30*time.Second, func() error {
		if !lock.heldBy(pid) {
			return errors.New("not held")
		}
		return nil
	})

	logind.prepareForSleep(t, true)
	testwait.For(t, "the agent to let go of the lock", 30*time.Second, func() error {
		if lock.heldBy(pid) {
			return errors.New("still held")
		}
		return nil
	})
	// The lock went only after the connection was closed.
	if st, err := a.status(); err != nil || st.Connected || st.LastDisconnect != "suspend" {
		t.Fatalf("status once the lock was released: %+v, %v", st, err)
	}

	logind.prepareForSleep(t, false)
	a.waitConnected()
	if st, err := a.status(); err != nil || st.LastConnect != "resume" {
		t.Fatalf("status after resume: %+v, %v", st, err)
	}
	select {
	case next := <-logind.locks: // a new lock for the next sleep
		next.close()
	case <-time.After(30 * time.Second):
		t.Fatal("the agent took no new inhibitor lock after resume")
	}
}
