// SPDX-License-Identifier: Apache-2.0

package service

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"
)

// Notifier tells systemd about the daemon's state over the socket that a
// Type=notify unit gives in $NOTIFY_SOCKET (sd_notify(3)). A nil Notifier,
// as NewNotifier returns outside such a unit, does nothing, so callers need
// not check.
type Notifier struct {
	addr *net.UnixAddr
	// watchdog is the unit's WatchdogSec, zero when it sets none.
	watchdog time.Duration
}

// NewNotifier reads $NOTIFY_SOCKET, $WATCHDOG_USEC and $WATCHDOG_PID through
// getenv. It returns nil when no notify socket is set. pid is the caller's
// process ID: a watchdog meant for another process is ignored.
func NewNotifier(getenv func(string) string, pid int) (*Notifier, error) {
	sock := getenv("NOTIFY_SOCKET")
	if sock == "" {
		return nil, nil
	}
	if !strings.HasPrefix(sock, "/") && !strings.HasPrefix(sock, "@") {
		return nil, fmt.Errorf("NOTIFY_SOCKET %q is neither a path nor an abstract socket", sock)
	}
	n := &Notifier{addr: &net.UnixAddr{Name: sock, Net: "unixgram"}}
	usec := getenv("WATCHDOG_USEC")
	if usec == "" {
		return n, nil
	}
	if p := getenv("WATCHDOG_PID"); p != "" && p != strconv.Itoa(pid) {
		return n, nil
	}
	us, err := strconv.ParseUint(usec, 10, 63)
	if err != nil || us == 0 {
		return nil, fmt.Errorf("WATCHDOG_USEC %q is not a positive number of microseconds", usec)
	}
	n.watchdog = time.Duration(us) * time.Microsecond
	return n, nil
}

// Ready reports that the daemon has started: systemd then considers the
// unit active. status is a line for systemctl status; empty for none.
func (n *Notifier) Ready(status string) error {
	if status == "" {
		return n.notify("READY=1")
	}
	return n.notify("READY=1\nSTATUS=" + status)
}

// Stopping reports that the daemon is shutting down.
func (n *Notifier) Stopping() error { return n.notify("STOPPING=1") }

// WatchdogInterval is the unit's watchdog timeout, zero when it sets none.
func (n *Notifier) WatchdogInterval() time.Duration {
	if n == nil {
		return 0
	}
	return n.watchdog
}

// Watchdog pings systemd's watchdog at half the unit's timeout until ctx is
// done, each time only if healthy returns nil, so that systemd restarts a
// daemon that hangs (healthy blocking) or has lost its footing. It returns
// at once when the unit sets no watchdog. A failed ping or check goes to
// report, which may be nil.
func (n *Notifier) Watchdog(ctx context.Context, healthy func(context.Context) error, report func(error)) {
	every := n.WatchdogInterval() / 2
	if every <= 0 {
		return
	}
	if report == nil {
		report = func(error) {}
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		check, cancel := context.WithTimeout(ctx, every)
		err := healthy(check)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				report(fmt.Errorf("watchdog: not pinging: %w", err))
			}
			continue
		}
		if err := n.notify("WATCHDOG=1"); err != nil {
			report(err)
		}
	}
}

// notify sends one datagram of newline-separated assignments.
func (n *Notifier) notify(state string) error {
	if n == nil {
		return nil
	}
	conn, err := net.DialUnix("unixgram", nil, n.addr)
	if err != nil {
		return fmt.Errorf("notify systemd: %w", err)
	}
	defer conn.Close()
	if err := conn.SetWriteDeadline(time.Now().Add(time.Second)); err != nil {
		return fmt.Errorf("notify systemd: %w", err)
	}
	if _, err := conn.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify systemd: %w", err)
	}
	return nil
}
