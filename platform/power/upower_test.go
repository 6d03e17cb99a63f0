// SPDX-License-Identifier: Apache-2.0

package power

import (
	"testing"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"

	"tether/internal/busclient/busclienttest"
	"tether/internal/dbustest"
)

// fakeUPower serves UPower's OnBattery and display device on its own
// connection to the bus, and emits PropertiesChanged as UPower does.
type fakeUPower struct {
	conn    *dbus.Conn
	manager *prop.Properties
	display *prop.Properties
}

func startUPower(t *testing.T, bus *dbustest.Bus, onBattery bool, percentage float64) *fakeUPower {
	t.Helper()
	conn := bus.Conn(t)
	manager, err := prop.Export(conn, dbus.ObjectPath(upowerPath), prop.Map{
		upowerName: {"OnBattery": {Value: onBattery, Emit: prop.EmitTrue}},
	})
	if err != nil {
		t.Fatal(err)
	}
	display, err := prop.Export(conn, dbus.ObjectPath(upowerDisplayDevice), prop.Map{
		upowerDeviceIface: {
			"Type":       {Value: uint32(2), Emit: prop.EmitTrue}, // battery
			"IsPresent":  {Value: true, Emit: prop.EmitTrue},
			"Percentage": {Value: percentage, Emit: prop.EmitTrue},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	if reply, err := conn.RequestName(upowerName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own %s: %v, %v", upowerName, reply, err)
	}
	return &fakeUPower{conn: conn, manager: manager, display: display}
}

// UPower is preferred to sysfs while it is on the bus, and its signals
// are followed; when it leaves, sysfs takes over.
func TestWatcherUPower(t *testing.T) {
	bus := dbustest.Start(t)
	upower := startUPower(t, bus, false, 80)

	root := t.TempDir()
	writeTree(t, root, map[string]string{batDir + "type": "Battery", batDir + "status": "Discharging", batDir + "capacity": "33"})
	w, err := New(Config{SysfsRoot: root, Bus: busclienttest.Dial(t, bus.Address), LowBattery: 10, Uevents: make(fakeUevents)})
	if err != nil {
		t.Fatal(err)
	}
	states := watch(t, w).states
	expect(t, states, State{Capacity: 80, Source: SourceUPower, Mode: ModeMains})

	steps := []struct {
		name  string
		props *prop.Properties
		iface string
		prop  string
		value any
		want  State
	}{
		{"unplugged", upower.manager, upowerName, "OnBattery", true, State{OnBattery: true, Capacity: 80, Source: SourceUPower, Mode: ModeBattery}},
		{"drained", upower.display, upowerDeviceIface, "Percentage", 9.6, State{OnBattery: true, Capacity: 10, Source: SourceUPower, Mode: ModeLow}},
		{"battery gone", upower.display, upowerDeviceIface, "IsPresent", false, State{OnBattery: true, Capacity: UnknownCapacity, Source: SourceUPower, Mode: ModeBattery}},
		{"battery back", upower.display, upowerDeviceIface, "IsPresent", true, State{OnBattery: true, Capacity: 10, Source: SourceUPower, Mode: ModeLow}},
		{"plugged in", upower.manager, upowerName, "OnBattery", false, State{Capacity: 10, Source: SourceUPower, Mode: ModeMains}},
	}
	for _, step := range steps {
		step.props.SetMust(step.iface, step.prop, step.value)
		expect(t, states, step.want)
	}

	upower.conn.Close()
	expect(t, states, State{OnBattery: true, Capacity: 33, Source: SourceSysfs, Mode: ModeBattery})
}

// With a bus but no UPower on it, sysfs is read.
func TestWatcherBusWithoutUPower(t *testing.T) {
	bus := dbustest.Start(t)
	root := t.TempDir()
	writeTree(t, root, map[string]string{acDir + "type": "Mains", acDir + "online": "0", batDir + "type": "Battery", batDir + "capacity": "7"})
	w, err := New(Config{SysfsRoot: root, Bus: busclienttest.Dial(t, bus.Address), Uevents: make(fakeUevents)})
	if err != nil {
		t.Fatal(err)
	}
	expect(t, watch(t, w).states, State{OnBattery: true, Capacity: 7, Source: SourceSysfs, Mode: ModeLow})
}

// UPower without a display device (before 0.99) still tells mains from
// battery.
func TestWatcherUPowerWithoutDisplayDevice(t *testing.T) {
	bus := dbustest.Start(t)
	conn := bus.Conn(t)
	if _, err := prop.Export(conn, dbus.ObjectPath(upowerPath), prop.Map{upowerName: {"OnBattery": {Value: true, Emit: prop.EmitTrue}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.RequestName(upowerName, dbus.NameFlagDoNotQueue); err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{SysfsRoot: t.TempDir(), Bus: busclienttest.Dial(t, bus.Address), Uevents: make(fakeUevents)})
	if err != nil {
		t.Fatal(err)
	}
	expect(t, watch(t, w).states, State{OnBattery: true, Capacity: UnknownCapacity, Source: SourceUPower, Mode: ModeBattery})
}
