//go:build tether_nodbus

package main

import (
	"context"

	"tether/ipc"
)

// This build leaves D-Bus out (godbus, about 448 KiB on ARMv7) for
// firmware whose apps use the socket (docs/firmware.md): --dbus is
// refused.

func callBus(context.Context, string, func(string) string, ipc.Request) (ipc.Response, error) {
	return ipc.Response{}, errNoBus
}

func listenBus(context.Context, string, func(string) string, string) (listener, error) {
	return nil, errNoBus
}

var errNoBus = usagef("--dbus: this tetherctl was built without D-Bus (tag tether_nodbus); use the socket")
