// SPDX-License-Identifier: Apache-2.0

package power

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/godbus/dbus/v5"
)

// UPower's names on the system bus.
const (
	upowerName          = "org.freedesktop.UPower"
	upowerPath          = dbus.ObjectPath("/org/freedesktop/UPower")
	upowerDisplayDevice = dbus.ObjectPath("/org/freedesktop/UPower/devices/DisplayDevice")
	upowerDeviceIface   = "org.freedesktop.UPower.Device"
	propertiesIface     = "org.freedesktop.DBus.Properties"
	busName             = "org.freedesktop.DBus"
)

// busCallTimeout bounds each call to UPower.
const busCallTimeout = 10 * time.Second

// errNoUPower: UPower is not on the bus (or has left it).
var errNoUPower = errors.New("UPower is not on the system bus")

// runUPower reports UPower's view at start and on each PropertiesChanged
// signal from it. Signals only prompt a fresh read: their content is not
// trusted, since anyone on the bus can send one. It returns when ctx is
// done, with errNoUPower if UPower is not there or leaves, or with
// another error if the bus fails.
func (w *Watcher) runUPower(ctx context.Context, r *reporter) error {
	bus := w.cfg.Bus
	signals := make(chan *dbus.Signal, 16)
	bus.Signal(signals)
	defer bus.RemoveSignal(signals)
	matches := [][]dbus.MatchOption{
		{
			dbus.WithMatchSender(upowerName),
			dbus.WithMatchInterface(propertiesIface),
			dbus.WithMatchMember("PropertiesChanged"),
			dbus.WithMatchPathNamespace(upowerPath),
		},
		{
			dbus.WithMatchSender(busName),
			dbus.WithMatchInterface(busName),
			dbus.WithMatchMember("NameOwnerChanged"),
			dbus.WithMatchArg(0, upowerName),
		},
	}
	for _, m := range matches {
		if err := bus.AddMatchSignalContext(ctx, m...); err != nil {
			return fmt.Errorf("power: subscribe to UPower: %w", err)
		}
		defer bus.RemoveMatchSignal(m...)
	}

	for {
		s, err := w.readUPower(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		r.update(s)
	wait:
		for {
			select {
			case <-ctx.Done():
				return nil
			case sig, ok := <-signals:
				if !ok {
					return errors.New("power: system bus connection closed")
				}
				if isUPowerSignal(sig) {
					break wait
				}
			}
		}
	}
}

// isUPowerSignal tells whether sig, one of every signal the shared bus
// connection receives, is one runUPower subscribed to.
func isUPowerSignal(sig *dbus.Signal) bool {
	switch sig.Name {
	case propertiesIface + ".PropertiesChanged":
		return sig.Path == upowerPath || sig.Path == upowerDisplayDevice
	case busName + ".NameOwnerChanged":
		return len(sig.Body) > 0 && sig.Body[0] == upowerName
	}
	return false
}

// readUPower asks UPower whether the system runs on battery and how full
// its display device (UPower's summary of the system's batteries) is.
func (w *Watcher) readUPower(ctx context.Context) (State, error) {
	ctx, cancel := context.WithTimeout(ctx, busCallTimeout)
	defer cancel()
	bus := w.cfg.Bus
	var onBattery bool
	err := bus.Object(upowerName, upowerPath).CallWithContext(ctx, propertiesIface+".Get", 0, upowerName, "OnBattery").Store(&onBattery)
	if err != nil {
		var dbusErr dbus.Error
		if errors.As(err, &dbusErr) && (dbusErr.Name == "org.freedesktop.DBus.Error.ServiceUnknown" || dbusErr.Name == "org.freedesktop.DBus.Error.NameHasNoOwner") {
			return State{}, fmt.Errorf("%w (%s)", errNoUPower, dbusErr.Name)
		}
		return State{}, fmt.Errorf("power: read UPower's OnBattery: %w", err)
	}
	s := State{OnBattery: onBattery, Capacity: UnknownCapacity, Source: SourceUPower}

	var display map[string]dbus.Variant
	err = bus.Object(upowerName, upowerDisplayDevice).CallWithContext(ctx, propertiesIface+".GetAll", 0, upowerDeviceIface).Store(&display)
	if err != nil {
		// Old UPower versions have no display device: the capacity is
		// unknown, the rest stands.
		w.log.Debug("read UPower's display device", "err", err)
		return s, nil
	}
	present, _ := display["IsPresent"].Value().(bool)
	pct, ok := display["Percentage"].Value().(float64)
	if present && ok && !math.IsNaN(pct) {
		s.Capacity = int(math.Round(min(max(pct, 0), 100)))
	}
	return s, nil
}
