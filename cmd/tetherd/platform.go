// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"tether/agent"
	"tether/internal/busclient"
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
func openDBusDoor(o options, systemBus *systemBus, backend ipc.Backend, log *slog.Logger) (*dbusdoor.Server, error) {
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

// systemBusTimeout bounds connecting to the system bus, which a busy
// dbus-daemon may be slow to answer.
const systemBusTimeout = 10 * time.Second

// systemBus is the watchers' connections to the system bus: UPower and
// logind live there whatever bus the apps' door uses. Each watcher reads
// every signal its connection receives, so each has its own.
type systemBus struct{ power, sleep *busclient.Conn }

// connectSystemBus returns nil where there is no system bus. The caller
// closes it once the watchers have stopped.
func connectSystemBus(ctx context.Context, log *slog.Logger) *systemBus {
	addr, err := ipc.DBusAddress("system", os.Getenv)
	if err != nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, systemBusTimeout)
	defer cancel()
	// Only logind passes a descriptor, the sleep watcher's lock.
	dials := [...]func(context.Context, string) (*busclient.Conn, error){busclient.Dial, busclient.DialWithFDs}
	var conns [len(dials)]*busclient.Conn
	for i, dial := range dials {
		c, err := dial(ctx, addr)
		if err != nil {
			for _, c := range conns[:i] {
				c.Close()
			}
			log.Info("no system bus: power from sysfs only, no sleep handling", "err", err)
			return nil
		}
		conns[i] = c
	}
	return &systemBus{power: conns[0], sleep: conns[1]}
}

// Close closes the watchers' connections.
func (b *systemBus) Close() {
	b.power.Close()
	b.sleep.Close()
}

// watchPlatform runs the power, network and sleep watchers until ctx ends,
// telling the agent what they see. A watcher that cannot run here (no
// netlink, no logind) is logged and left out: the agent works without it,
// only less thriftily.
func watchPlatform(ctx context.Context, wg *sync.WaitGroup, bus *systemBus, a *agent.Agent, o options, log *slog.Logger) {
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
	var powerBus *busclient.Conn
	if bus != nil {
		powerBus = bus.power
	}
	pw, err := power.New(power.Config{SysfsRoot: o.sysfsRoot, Bus: powerBus, LowBattery: low, Logger: log.With("part", "power")})
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
		sw, err := sleep.New(sleep.Config{Bus: bus.sleep, Who: "tetherd", Why: "close the push connection cleanly", Logger: log.With("part", "sleep")})
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
