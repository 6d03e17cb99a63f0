// SPDX-License-Identifier: Apache-2.0

package power

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"tether/internal/busclient"
)

// Defaults for Config's zero values.
const (
	DefaultSysfsRoot        = "/sys"
	DefaultLowBattery       = 15
	DefaultCapacityInterval = 5 * time.Minute
)

// UnknownCapacity is State.Capacity when no battery reports one.
const UnknownCapacity = -1

// Mode is what the agent adapts to.
type Mode string

const (
	// ModeMains: powered from outside; the device has no battery, or it
	// is charging or full.
	ModeMains Mode = "mains"
	// ModeBattery: running on battery above the low threshold, or of
	// unknown capacity.
	ModeBattery Mode = "battery"
	// ModeLow: running on battery at or below the low threshold.
	ModeLow Mode = "low"
)

// Source says where a State was read.
type Source string

const (
	// SourceNone: the system reports no power supply at all, which is
	// taken as mains.
	SourceNone   Source = "none"
	SourceSysfs  Source = "sysfs"
	SourceUPower Source = "upower"
)

// State is the device's power state.
type State struct {
	OnBattery bool
	// Capacity is the battery's charge in percent, 0 to 100, or
	// UnknownCapacity.
	Capacity int
	Source   Source
	// Mode follows from OnBattery, Capacity and Config.LowBattery.
	Mode Mode
}

func (s State) String() string {
	if s.Capacity == UnknownCapacity {
		return fmt.Sprintf("%s (capacity unknown, from %s)", s.Mode, s.Source)
	}
	return fmt.Sprintf("%s (%d%%, from %s)", s.Mode, s.Capacity, s.Source)
}

// LogValue logs a State as a group.
func (s State) LogValue() slog.Value {
	return slog.GroupValue(
		slog.String("mode", string(s.Mode)),
		slog.Int("capacity", s.Capacity),
		slog.String("source", string(s.Source)),
	)
}

// Config configures a Watcher.
type Config struct {
	// SysfsRoot is where sysfs is mounted; empty means DefaultSysfsRoot.
	SysfsRoot string
	// Bus is a connection to the system bus of the Watcher's own, where
	// UPower is asked for first: Run reads every signal it receives. Nil
	// reads sysfs only. The Watcher does not close it.
	Bus *busclient.Conn
	// LowBattery is the capacity in percent at or below which a battery
	// is low; zero means DefaultLowBattery and a negative value never
	// reports ModeLow.
	LowBattery int
	// CapacityInterval is how often sysfs is read again while on battery
	// in case the driver sends no event for capacity changes; zero means
	// DefaultCapacityInterval, negative never. There is no timer on mains
	// or with UPower, which does its own.
	CapacityInterval time.Duration
	// Uevents is the source of kernel uevents when reading sysfs; nil
	// means the kernel's netlink socket (ListenUevents).
	Uevents UeventSource
	Logger  *slog.Logger
}

// Watcher reports the power state as it changes.
type Watcher struct {
	cfg Config
	log *slog.Logger
}

// New checks cfg and returns a Watcher; Run starts it.
func New(cfg Config) (*Watcher, error) {
	if cfg.SysfsRoot == "" {
		cfg.SysfsRoot = DefaultSysfsRoot
	}
	if cfg.LowBattery == 0 {
		cfg.LowBattery = DefaultLowBattery
	}
	if cfg.LowBattery > 100 {
		return nil, fmt.Errorf("power: low battery threshold %d%% is above 100%%", cfg.LowBattery)
	}
	if cfg.CapacityInterval == 0 {
		cfg.CapacityInterval = DefaultCapacityInterval
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Watcher{cfg: cfg, log: cfg.Logger}, nil
}

// Run reports the current state and then every change, calling report
// from Run's goroutine, until ctx is done; it returns nil then, or an
// error if it can no longer watch. It asks UPower when Config.Bus is set
// and UPower answers, and otherwise (or once UPower leaves the bus or
// fails to answer) reads sysfs. Every goroutine it starts has stopped when it returns.
func (w *Watcher) Run(ctx context.Context, report func(State)) error {
	r := &reporter{report: report, mode: w.mode}
	if w.cfg.Bus != nil {
		// runUPower returns only when ctx is done or UPower cannot be
		// followed; sysfs is always there.
		err := w.runUPower(ctx, r)
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, errNoUPower) {
			w.log.Info("reading power state from sysfs", "reason", err)
		} else {
			w.log.Warn("reading power state from sysfs", "reason", err)
		}
	}
	return w.runSysfs(ctx, r)
}

// mode completes s with its Mode.
func (w *Watcher) mode(s State) State {
	switch {
	case !s.OnBattery:
		s.Mode = ModeMains
	case s.Capacity != UnknownCapacity && s.Capacity <= w.cfg.LowBattery:
		s.Mode = ModeLow
	default:
		s.Mode = ModeBattery
	}
	return s
}

// recheckAfter is how long to wait before reading sysfs again without an
// event; zero means not at all.
func (w *Watcher) recheckAfter(s State) time.Duration {
	if !s.OnBattery || s.Source != SourceSysfs || w.cfg.CapacityInterval < 0 {
		return 0
	}
	return w.cfg.CapacityInterval
}

// reporter calls report with each state that differs from the last one.
type reporter struct {
	report func(State)
	mode   func(State) State
	last   State
	sent   bool
}

func (r *reporter) update(s State) {
	s = r.mode(s)
	if r.sent && s == r.last {
		return
	}
	r.last, r.sent = s, true
	r.report(s)
}

// runSysfs reads sysfs at start, on each power_supply uevent, and, while
// on battery, every CapacityInterval.
func (w *Watcher) runSysfs(ctx context.Context, r *reporter) error {
	src := w.cfg.Uevents
	if src == nil {
		sock, err := ListenUevents()
		if err != nil {
			return err
		}
		defer sock.Close()
		src = sock
	}

	ctx, cancel := context.WithCancel(ctx)
	changed := make(chan struct{}, 1)
	failed := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		defer close(done)
		failed <- w.receiveUevents(ctx, src, changed)
	}()
	defer func() {
		cancel()
		<-done
	}()

	var recheck *time.Timer
	var recheckC <-chan time.Time
	defer func() {
		if recheck != nil {
			recheck.Stop()
		}
	}()
	for {
		s := readSysfs(w.cfg.SysfsRoot, w.log)
		r.update(s)
		if d := w.recheckAfter(s); d > 0 {
			if recheck == nil {
				recheck = time.NewTimer(d)
			} else {
				recheck.Reset(d)
			}
			recheckC = recheck.C
		} else if recheck != nil {
			recheck.Stop()
			recheck, recheckC = nil, nil
		}

		select {
		case <-ctx.Done():
			return nil
		case err := <-failed:
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("power: watch uevents: %w", err)
		case <-changed:
		case <-recheckC:
		}
	}
}

// receiveUevents signals changed (without blocking: one pending signal
// stands for any number of events) for each power_supply uevent, and for
// lost ones, until ctx is done or src fails.
func (w *Watcher) receiveUevents(ctx context.Context, src UeventSource, changed chan<- struct{}) error {
	for {
		ev, err := src.Receive(ctx)
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case errors.Is(err, ErrUeventsLost):
			w.log.Debug("uevents lost; reading sysfs again")
		case err != nil:
			return err
		case ev.Subsystem != powerSupplySubsystem:
			continue
		default:
			w.log.Debug("power supply uevent", "action", ev.Action, "devpath", ev.DevPath)
		}
		select {
		case changed <- struct{}{}:
		default:
		}
	}
}
