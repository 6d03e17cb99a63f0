// SPDX-License-Identifier: Apache-2.0

package sleep

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"tether/internal/busclient"
)

// ErrUnavailable is returned by Run when systemd-logind is not on the bus.
var ErrUnavailable = errors.New("sleep: systemd-logind is not on the system bus")

// logind's names on the system bus.
const (
	logindName    = "org.freedesktop.login1"
	logindPath    = busclient.ObjectPath("/org/freedesktop/login1")
	managerIface  = "org.freedesktop.login1.Manager"
	busName       = "org.freedesktop.DBus"
	propertyIface = "org.freedesktop.DBus.Properties"
)

const (
	// busCallTimeout bounds each call to logind.
	busCallTimeout = 10 * time.Second
	// defaultDelay is logind's default InhibitDelayMaxSec, assumed when
	// its setting cannot be read.
	defaultDelay = 5 * time.Second
)

// Config configures a Watcher.
type Config struct {
	// Bus is a connection to the system bus of the Watcher's own: Run
	// reads every signal it receives. The Watcher does not close it.
	Bus *busclient.Conn
	// Who and Why describe the inhibitor lock, as `systemd-inhibit
	// --list` shows it.
	Who string
	Why string
	// Logger receives the watcher's logs; nil discards them.
	Logger *slog.Logger
}

// Hooks are what a Watcher calls, from Run's goroutine; a nil hook is
// skipped.
type Hooks struct {
	// Prepare runs when the system is about to sleep. Sleep waits for it
	// until ctx is done (logind's InhibitDelayMaxSec), not longer.
	Prepare func(ctx context.Context)
	// Resume runs once the system is awake again, or sleep failed.
	Resume func(ctx context.Context)
}

// Watcher delays sleep for Hooks.Prepare and reports resume.
type Watcher struct {
	cfg Config
	log *slog.Logger
}

// New checks cfg and returns a Watcher; Run starts it.
func New(cfg Config) (*Watcher, error) {
	if cfg.Bus == nil {
		return nil, errors.New("sleep: no system bus")
	}
	if cfg.Who == "" {
		cfg.Who = "tetherd"
	}
	if cfg.Why == "" {
		cfg.Why = "Close the push connection cleanly"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Watcher{cfg: cfg, log: cfg.Logger}, nil
}

// Run holds a delay lock and calls the hooks around each sleep until ctx
// is done; it returns nil then, ErrUnavailable without logind, or an
// error if the bus connection fails. The lock is released when it
// returns.
func (w *Watcher) Run(ctx context.Context, hooks Hooks) error {
	if hooks.Prepare == nil {
		hooks.Prepare = func(context.Context) {}
	}
	if hooks.Resume == nil {
		hooks.Resume = func(context.Context) {}
	}
	bus := w.cfg.Bus
	unsubscribe, err := bus.Subscribe(ctx,
		"type='signal',sender='"+logindName+"',path='"+string(logindPath)+"',interface='"+managerIface+"',member='PrepareForSleep'",
		"type='signal',sender='"+busName+"',interface='"+busName+"',member='NameOwnerChanged',arg0='"+logindName+"'",
	)
	if err != nil {
		return fmt.Errorf("sleep: follow logind: %w", err)
	}
	defer unsubscribe()

	// Taking the lock starts logind if the bus can activate it; only
	// then is its owner known.
	lock, err := w.inhibit(ctx)
	if isNoService(err) {
		return ErrUnavailable
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		// Without a lock the hooks still run, only sleep does not wait.
		w.log.Warn("no delay lock: sleep will not wait for the connection to close", "err", err)
	}
	defer func() { lock.release() }()
	// PrepareForSleep counts only from logind's unique name: anyone can
	// send a signal. A logind that left since is announced by
	// NameOwnerChanged, and so is its successor.
	var owner string
	body, err := bus.Call(ctx, busName, "/org/freedesktop/DBus", busName, "GetNameOwner", logindName)
	if err == nil && len(body) == 1 {
		owner, _ = body[0].(string)
	}
	if err != nil && !isNoService(err) {
		if ctx.Err() != nil {
			return nil
		}
		return fmt.Errorf("sleep: find logind on the bus: %w", err)
	}
	delay := w.delay(ctx)

	for {
		sig, err := bus.NextSignal(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("sleep: follow logind: %w", err)
		}
		switch {
		case sig.Name == busName+".NameOwnerChanged" && sig.Sender == busName && len(sig.Body) == 3 && sig.Body[0] == logindName:
			owner, _ = sig.Body[2].(string)
			w.log.Info("logind changed on the bus", "owner", owner)
			if owner != "" {
				delay = w.delay(ctx)
				if lock == nil {
					lock = w.relock(ctx)
				}
			}
		case sig.Name == managerIface+".PrepareForSleep" && sig.Path == logindPath && sig.Sender == owner && owner != "":
			start, ok := firstBool(sig.Body)
			if !ok {
				w.log.Warn("PrepareForSleep without its argument", "body", sig.Body)
				continue
			}
			if start {
				w.log.Info("system going to sleep")
				prepareCtx, cancel := context.WithTimeout(ctx, delay)
				hooks.Prepare(prepareCtx)
				cancel()
				lock.release()
				lock = nil
			} else {
				w.log.Info("system awake")
				if lock == nil {
					lock = w.relock(ctx)
				}
				hooks.Resume(ctx)
			}
		}
	}
}

func firstBool(body []any) (bool, bool) {
	if len(body) != 1 {
		return false, false
	}
	b, ok := body[0].(bool)
	return b, ok
}

// inhibitor is a held delay lock; logind counts it held while the
// descriptor is open.
type inhibitor struct{ f *os.File }

// release lets sleep proceed; it may be called on a nil lock.
func (l *inhibitor) release() {
	if l != nil {
		l.f.Close()
	}
}

// inhibit takes a delay lock on sleep.
func (w *Watcher) inhibit(ctx context.Context) (*inhibitor, error) {
	ctx, cancel := context.WithTimeout(ctx, busCallTimeout)
	defer cancel()
	body, err := w.cfg.Bus.Call(ctx, logindName, logindPath, managerIface, "Inhibit", "sleep", w.cfg.Who, w.cfg.Why, "delay")
	if err != nil {
		return nil, err
	}
	if len(body) == 1 {
		if f, ok := body[0].(*os.File); ok {
			return &inhibitor{f: f}, nil
		}
	}
	return nil, fmt.Errorf("logind answered Inhibit with %v, not a descriptor", body)
}

// relock takes a new lock, or logs why it cannot.
func (w *Watcher) relock(ctx context.Context) *inhibitor {
	lock, err := w.inhibit(ctx)
	if err != nil && ctx.Err() == nil {
		w.log.Warn("no delay lock: the next sleep will not wait for the connection to close", "err", err)
	}
	return lock
}

// delay is how long logind waits for delay locks before sleeping anyway.
func (w *Watcher) delay(ctx context.Context) time.Duration {
	ctx, cancel := context.WithTimeout(ctx, busCallTimeout)
	defer cancel()
	var usec uint64
	body, err := w.cfg.Bus.Call(ctx, logindName, logindPath, propertyIface, "Get", managerIface, "InhibitDelayMaxUSec")
	if err == nil && len(body) == 1 {
		v, _ := body[0].(busclient.Variant)
		usec, _ = v.Value.(uint64)
	}
	if err != nil || usec == 0 || usec > uint64(time.Hour/time.Microsecond) {
		w.log.Debug("read logind's InhibitDelayMaxUSec; assuming the default", "err", err, "usec", usec, "default", defaultDelay)
		return defaultDelay
	}
	return time.Duration(usec) * time.Microsecond
}

// isNoService tells whether err says the bus knows no such name.
func isNoService(err error) bool {
	var e *busclient.Error
	return errors.As(err, &e) &&
		(e.Name == "org.freedesktop.DBus.Error.ServiceUnknown" || e.Name == "org.freedesktop.DBus.Error.NameHasNoOwner")
}
