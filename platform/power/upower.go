// SPDX-License-Identifier: Apache-2.0

package power

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"tether/internal/busclient"
)

// UPower's names on the system bus.
const (
	upowerName          = "org.freedesktop.UPower"
	upowerPath          = busclient.ObjectPath("/org/freedesktop/UPower")
	upowerDisplayDevice = busclient.ObjectPath("/org/freedesktop/UPower/devices/DisplayDevice")
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
	unsubscribe, err := bus.Subscribe(ctx,
		"type='signal',sender='"+upowerName+"',interface='"+propertiesIface+"',member='PropertiesChanged',path_namespace='"+string(upowerPath)+"'",
		"type='signal',sender='"+busName+"',interface='"+busName+"',member='NameOwnerChanged',arg0='"+upowerName+"'",
	)
	if err != nil {
		return fmt.Errorf("power: follow UPower: %w", err)
	}
	defer unsubscribe()

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
			sig, err := bus.NextSignal(ctx)
			if ctx.Err() != nil {
				return nil
			}
			if err != nil {
				return fmt.Errorf("power: follow UPower: %w", err)
			}
			if isUPowerSignal(sig) {
				break wait
			}
		}
	}
}

// isUPowerSignal tells whether sig, one of every signal the connection
// receives, is one runUPower subscribed to.
func isUPowerSignal(sig *busclient.Signal) bool {
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
	body, err := bus.Call(ctx, upowerName, upowerPath, propertiesIface, "Get", upowerName, "OnBattery")
	var onBattery, isBool bool
	if err == nil && len(body) == 1 {
		v, _ := body[0].(busclient.Variant)
		onBattery, isBool = v.Value.(bool)
	}
	if err == nil && !isBool {
		err = fmt.Errorf("UPower answered with %v, not a boolean", body)
	}
	if err != nil {
		var dbusErr *busclient.Error
		if errors.As(err, &dbusErr) && (dbusErr.Name == "org.freedesktop.DBus.Error.ServiceUnknown" || dbusErr.Name == "org.freedesktop.DBus.Error.NameHasNoOwner") {
			return State{}, fmt.Errorf("%w (%s)", errNoUPower, dbusErr.Name)
		}
		return State{}, fmt.Errorf("power: read UPower's OnBattery: %w", err)
	}
	s := State{OnBattery: onBattery, Capacity: UnknownCapacity, Source: SourceUPower}

	body, err = bus.Call(ctx, upowerName, upowerDisplayDevice, propertiesIface, "GetAll", upowerDeviceIface)
	var display map[string]any
	if err == nil && len(body) == 1 {
		display, _ = body[0].(map[string]any)
	}
	if err != nil {
		// Old UPower versions have no display device: the capacity is
		// unknown, the rest stands.
		w.log.Debug("read UPower's display device", "err", err)
		return s, nil
	}
	present, _ := variantValue(display["IsPresent"]).(bool)
	pct, ok := variantValue(display["Percentage"]).(float64)
	if present && ok && !math.IsNaN(pct) {
		s.Capacity = int(math.Round(min(max(pct, 0), 100)))
	}
	return s, nil
}

// variantValue is the value of v, a Variant from a reply, or nil.
func variantValue(v any) any {
	vv, _ := v.(busclient.Variant)
	return vv.Value
}
