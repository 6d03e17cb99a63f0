package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"

	"tether/internal/dbustest"
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
	waitFor(a.t, "power mode "+mode, 30*time.Second, func() error {
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
