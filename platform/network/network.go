// SPDX-License-Identifier: Apache-2.0

package network

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// Network is where the default route leads.
type Network struct {
	// DefaultRoute is whether there is a usable default route: one in the
	// main table whose link is up and has a carrier.
	DefaultRoute bool
	// Interface is the default route's outgoing interface.
	Interface string
	// Gateway is its next hop; invalid for a point-to-point link (a
	// cellular modem, a VPN) where the route names only the interface.
	Gateway netip.Addr
	// WiFi is whether Interface is a Wi-Fi (802.11) interface.
	WiFi bool
	// ID names the network for keeping what was learned about it:
	// "eth0/192.0.2.1", or "wwan0" without a gateway; empty without a
	// default route. Two sites that use the same gateway address on the
	// same interface share an ID.
	ID string
}

func (n Network) String() string {
	if !n.DefaultRoute {
		return "no default route"
	}
	return "default route via " + n.ID
}

// LogValue logs a Network as a group.
func (n Network) LogValue() slog.Value {
	if !n.DefaultRoute {
		return slog.GroupValue(slog.Bool("default_route", false))
	}
	return slog.GroupValue(slog.Bool("default_route", true), slog.String("id", n.ID))
}

// Config configures a Watcher.
type Config struct {
	// NetnsPath is a network namespace to watch instead of the
	// process's own, such as /run/netns/NAME or /proc/PID/ns/net.
	NetnsPath string
	// Sysfs is where sysfs is mounted, which tells Wi-Fi interfaces from
	// others; empty means /sys.
	Sysfs  string
	Logger *slog.Logger
}

// Watcher reports the default route as it changes.
type Watcher struct {
	cfg Config
	log *slog.Logger
}

// New returns a Watcher; Run starts it.
func New(cfg Config) (*Watcher, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Sysfs == "" {
		cfg.Sysfs = "/sys"
	}
	return &Watcher{cfg: cfg, log: cfg.Logger}, nil
}

// dumpRetries is how many times an interrupted dump is read again before
// its result is taken as it is (the change that interrupted it is
// announced and causes another read).
const dumpRetries = 3

// Run reports the current network and then each change to it, calling
// report from Run's goroutine, until ctx is done; it returns nil then, or
// an error if it can no longer watch. It starts no goroutine that outlives
// it.
func (w *Watcher) Run(ctx context.Context, report func(Network)) error {
	events, requests, err := openSockets(w.cfg.NetnsPath)
	if err != nil {
		return fmt.Errorf("network: %w", err)
	}
	defer events.close()
	defer requests.close()

	var last Network
	for first := true; ; first = false {
		n, err := w.read(ctx, requests)
		if ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return fmt.Errorf("network: read routes: %w", err)
		}
		if first || n != last {
			last = n
			report(n)
		}
		if err := events.waitChange(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("network: wait for changes: %w", err)
		}
	}
}

// read dumps the routing table and names the network the best default
// route leads to.
func (w *Watcher) read(ctx context.Context, c *rtnl) (Network, error) {
	var routes []route
	collect := func(m message) error {
		if m.typ != unix.RTM_NEWROUTE {
			return nil
		}
		r, err := parseRoute(m.data)
		if err != nil {
			w.log.Warn("skipping a route the kernel sent", "err", err)
			return nil
		}
		if isDefault(r) {
			routes = append(routes, r)
		}
		return nil
	}
	var err error
	for range dumpRetries {
		routes = routes[:0]
		err = c.query(ctx, true, routeDumpRequest, collect)
		if !errors.Is(err, errInterrupted) {
			break
		}
	}
	if err != nil && !errors.Is(err, errInterrupted) {
		return Network{}, err
	}
	best, ok := bestDefault(routes)
	if !ok {
		return Network{}, nil
	}
	var name string
	err = c.query(ctx, false, func(seq uint32) []byte { return linkRequest(seq, best.ifindex) }, func(m message) error {
		if m.typ != unix.RTM_NEWLINK {
			return fmt.Errorf("answer of type %d to a link request", m.typ)
		}
		var parseErr error
		name, parseErr = parseLinkName(m.data)
		return parseErr
	})
	if errors.Is(err, unix.ENODEV) {
		// The link went between the two requests; its removal is
		// announced and causes another read.
		return Network{}, nil
	}
	if err != nil {
		return Network{}, fmt.Errorf("name interface %d: %w", best.ifindex, err)
	}
	n := identify(name, best.gateway)
	n.WiFi = wireless(w.cfg.Sysfs, name)
	return n, nil
}

// wireless reports whether sysfs shows iface as a Wi-Fi interface: the
// kernel gives those a phy80211 link (cfg80211 drivers) or a wireless
// directory (the older wireless extensions).
func wireless(sysfs, iface string) bool {
	for _, name := range []string{"phy80211", "wireless"} {
		if _, err := os.Stat(filepath.Join(sysfs, "class", "net", iface, name)); err == nil {
			return true
		}
	}
	return false
}

// isDefault tells whether r is a usable default route in the main table.
func isDefault(r route) bool {
	return r.dstLen == 0 &&
		r.typ == unix.RTN_UNICAST &&
		r.table == unix.RT_TABLE_MAIN &&
		r.ifindex > 0 &&
		r.flags&(unix.RTNH_F_DEAD|unix.RTNH_F_LINKDOWN) == 0
}

// bestDefault picks the default route the network is named after: IPv4
// first, then the lowest metric, then the lowest interface index.
func bestDefault(routes []route) (route, bool) {
	if len(routes) == 0 {
		return route{}, false
	}
	return slices.MinFunc(routes, func(a, b route) int {
		return cmp.Or(
			cmp.Compare(familyRank(a.family), familyRank(b.family)),
			cmp.Compare(a.priority, b.priority),
			cmp.Compare(a.ifindex, b.ifindex),
		)
	}), true
}

func familyRank(family uint8) int {
	if family == unix.AF_INET {
		return 0
	}
	return 1
}

// identify names the network behind a default route.
func identify(iface string, gateway netip.Addr) Network {
	n := Network{DefaultRoute: true, Interface: iface, Gateway: gateway, ID: iface}
	if gateway.IsValid() {
		n.ID = iface + "/" + gateway.Unmap().String()
		n.Gateway = gateway.Unmap()
	}
	return n
}
