// SPDX-License-Identifier: Apache-2.0

package ipc

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
)

// The door's place on the bus.
const (
	DBusName      = "org.tether.Push"
	DBusPath      = "/org/tether/Push"
	DBusInterface = "org.tether.Push1"
)

// Names of the D-Bus errors the door answers with. Anything not named here
// is org.freedesktop.DBus.Error.Failed; a call with the wrong argument
// types on one of the standard interfaces is
// org.freedesktop.DBus.Error.InvalidArgs.
const (
	// DBusErrorPermissionDenied: the app ID belongs to another Unix user.
	DBusErrorPermissionDenied = DBusInterface + ".Error.PermissionDenied"
	// DBusErrorInvalidArgument: an argument is missing, malformed or of
	// the wrong type; the message names it.
	DBusErrorInvalidArgument = DBusInterface + ".Error.InvalidArgument"
	// DBusErrorMessageTooBig: upstream data over 4096 bytes.
	DBusErrorMessageTooBig = DBusInterface + ".Error.MessageTooBig"
	// DBusErrorNotRegistered: the app was never registered on this device,
	// or has no registration with that sender; the message says which.
	DBusErrorNotRegistered = DBusInterface + ".Error.NotRegistered"
	// DBusErrorUnavailable: the agent cannot serve the call now: it is not
	// connected to the server and the call needs it, or its store failed.
	DBusErrorUnavailable = DBusInterface + ".Error.Unavailable"
	// DBusErrorTooManyMessages: the app already has the maximum of
	// upstream messages pending.
	DBusErrorTooManyMessages = DBusInterface + ".Error.TooManyMessages"
	// DBusErrorTooManyRegistrations: the caller's Unix user already has
	// the most registrations the device allows one user.
	DBusErrorTooManyRegistrations = DBusInterface + ".Error.TooManyRegistrations"
	// DBusErrorRefused: the connection server refused the request.
	DBusErrorRefused = DBusInterface + ".Error.Refused"
	// DBusErrorNotSupported: the agent or its server does not offer the
	// request.
	DBusErrorNotSupported = DBusInterface + ".Error.NotSupported"
)

// Reasons given by the SubscriptionEnded signal.
const (
	// DBusEndReplaced: another subscriber for the app took over, on the
	// bus or on the socket.
	DBusEndReplaced = "replaced"
	// DBusEndOverflow: more signals waited for the subscriber than the
	// door keeps.
	DBusEndOverflow = "overflow"
)

// DefaultSystemBusAddress is the system bus of the D-Bus specification,
// used when DBUS_SYSTEM_BUS_ADDRESS is not set.
const DefaultSystemBusAddress = "unix:path=/var/run/dbus/system_bus_socket"

// DBusAddress turns a bus setting into a bus address. "system" (or empty)
// is $DBUS_SYSTEM_BUS_ADDRESS, else DefaultSystemBusAddress; "session" is
// $DBUS_SESSION_BUS_ADDRESS, else the bus in $XDG_RUNTIME_DIR; anything else
// must be a D-Bus address such as "unix:path=/run/dbus/system_bus_socket".
// getenv is os.Getenv, or a stand-in for it.
func DBusAddress(bus string, getenv func(string) string) (string, error) {
	switch bus {
	case "", "system":
		if a := getenv("DBUS_SYSTEM_BUS_ADDRESS"); a != "" {
			return a, nil
		}
		return DefaultSystemBusAddress, nil
	case "session":
		if a := getenv("DBUS_SESSION_BUS_ADDRESS"); a != "" {
			return a, nil
		}
		if dir := getenv("XDG_RUNTIME_DIR"); dir != "" {
			return "unix:path=" + filepath.Join(dir, "bus"), nil
		}
		return "", errors.New("no session bus: neither DBUS_SESSION_BUS_ADDRESS nor XDG_RUNTIME_DIR is set")
	case "off":
		return "", errors.New(`the bus is "off"`)
	}
	if !strings.Contains(bus, ":") {
		return "", fmt.Errorf("bus %q is not system, session or a D-Bus address such as unix:path=/run/dbus/system_bus_socket", bus)
	}
	return bus, nil
}
