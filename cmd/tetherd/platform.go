// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/godbus/dbus/v5"

	"tether/agent"
	"tether/ipc"
	"tether/ipc/dbusdoor"
	"tether/platform/network"
	"tether/platform/power"
	"tether/platform/sleep"
)

// openDBusDoor opens the apps' D-Bus door on the bus o.dbus names, or
// returns nil for "off". Many devices have no D-Bus at all: when the
// system bus, the default, is not there (systemBus is nil) the agent goes
// on with the socket alone; a bus asked for by name or address must work.
func openDBusDoor(o options, systemBus *dbus.Conn, backend ipc.Backend, log *slog.Logger) (*dbusdoor.Server, error) {
	switch {
	case o.dbus == "off":
		return nil, nil
	case o.dbus == "system" && systemBus == nil:
		log.Info("no system bus: serving apps on the socket only")
		return nil, nil
	}
	door, err := dbusdoor.New(dbusdoor.Config{Bus: o.dbus, Backend: backend, Logger: log})
	if err != nil {
		return nil, fmt.Errorf("D-Bus door: %w", err)
	}
	return door, nil
}

// connectSystemBus is the watchers' connection: UPower and logind live on
// the system bus whatever bus the apps' door uses. It is nil where there
// is none. The caller closes it once the watchers have stopped.
func connectSystemBus(log *slog.Logger) *dbus.Conn {
	addr, err := ipc.DBusAddress("system", os.Getenv)
	if err != nil {
		return nil
	}
	conn, err := dbus.Connect(addr)
	if err != nil {
		log.Info("no system bus: power from sysfs only, no sleep handling", "err", err)
		return nil
	}
	return conn
}

// watchPlatform runs the power, network and sleep watchers until ctx ends,
// telling the agent what they see. A watcher that cannot run here (no
// netlink, no logind) is logged and left out: the agent works without it,
// only less thriftily.
func watchPlatform(ctx context.Context, wg *sync.WaitGroup, bus *dbus.Conn, a *agent.Agent, o options, log *slog.Logger) {
	run := func(name string, f func() error) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := f(); err != nil && ctx.Err() == nil {
				log.Warn("watcher stopped", "watcher", name, "err", err)
			}
		}()
	}

	low := o.lowBattery
	if low == 0 {
		low = -1 // the watcher's "never low"; its zero is its default
	}
	pw, err := power.New(power.Config{SysfsRoot: o.sysfsRoot, Bus: bus, LowBattery: low, Logger: log.With("part", "power")})
	if err != nil {
		log.Warn("no power watcher", "err", err)
	} else {
		run("power", func() error {
			return pw.Run(ctx, func(s power.State) {
				if err := a.SetPowerMode(string(s.Mode)); err != nil {
					log.Warn("power state", "state", s, "err", err)
				}
			})
		})
	}

	nw, err := network.New(network.Config{Logger: log.With("part", "network")})
	if err != nil {
		log.Warn("no network watcher", "err", err)
	} else {
		run("network", func() error {
			return nw.Run(ctx, func(n network.Network) {
				a.SetWiFi(n.WiFi)
				a.NetworkChanged(n.DefaultRoute, n.ID)
			})
		})
	}

	if bus != nil {
		sw, err := sleep.New(sleep.Config{Bus: bus, Who: "tetherd", Why: "close the push connection cleanly", Logger: log.With("part", "sleep")})
		if err != nil {
			log.Warn("no sleep watcher", "err", err)
		} else {
			run("sleep", func() error {
				err := sw.Run(ctx, sleep.Hooks{
					Prepare: func(ctx context.Context) {
						if err := a.PrepareForSleep(ctx); err != nil {
							log.Warn("prepare for sleep", "err", err)
						}
					},
					Resume: func(context.Context) { a.Resume() },
				})
				if errors.Is(err, sleep.ErrUnavailable) {
					log.Info("no logind: sleep is not watched")
					return nil
				}
				return err
			})
		}
	}
}
