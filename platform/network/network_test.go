// SPDX-License-Identifier: Apache-2.0

package network

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"tether/internal/netnstest"
)

// running is a Watcher's Run in progress.
type running struct {
	networks chan Network
	done     chan struct{} // closed when Run has returned
	err      error         // what it returned
}

func watch(t *testing.T, w *Watcher) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{networks: make(chan Network, 16), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = w.Run(ctx, func(n Network) { r.networks <- n })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
			if r.err != nil {
				t.Errorf("Run: %v", r.err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run does not return after its context ends")
		}
	})
	return r
}

func (r *running) next(t *testing.T) Network {
	t.Helper()
	select {
	case n := <-r.networks:
		return n
	case <-r.done:
		t.Fatalf("Run returned: %v", r.err)
	case <-time.After(10 * time.Second):
		t.Fatal("no report")
	}
	panic("unreachable")
}

func network(iface, gateway string) Network {
	n := Network{DefaultRoute: true, Interface: iface, ID: iface}
	if gateway != "" {
		n.Gateway = netip.MustParseAddr(gateway)
		n.ID += "/" + gateway
	}
	return n
}

// Each change to the default route inside a namespace is reported once,
// with the network's identity.
func TestWatcherNamespace(t *testing.T) {
	ns := netnstest.New(t)
	w, err := New(Config{NetnsPath: ns.Path})
	if err != nil {
		t.Fatal(err)
	}
	r := watch(t, w)
	if n := r.next(t); n != (Network{}) {
		t.Fatalf("a new namespace has %v", n)
	}

	steps := []struct {
		name string
		ip   [][]string
		want Network
	}{
		{
			name: "route appears",
			ip: [][]string{
				{"link", "add", "v0", "type", "veth", "peer", "name", "v1"},
				{"link", "set", "v1", "up"},
				{"link", "set", "v0", "up"},
				{"addr", "add", "192.0.2.10/24", "dev", "v0"},
				{"route", "add", "default", "via", "192.0.2.1"},
			},
			want: network("v0", "192.0.2.1"),
		},
		{
			name: "gateway changes",
			ip:   [][]string{{"route", "replace", "default", "via", "192.0.2.254", "dev", "v0"}},
			want: network("v0", "192.0.2.254"),
		},
		{
			name: "carrier lost",
			ip:   [][]string{{"link", "set", "v1", "down"}},
			want: Network{},
		},
		{
			name: "carrier back",
			ip:   [][]string{{"link", "set", "v1", "up"}},
			want: network("v0", "192.0.2.254"),
		},
		{
			name: "route gone",
			ip:   [][]string{{"route", "del", "default"}},
			want: Network{},
		},
		{
			name: "IPv6 route",
			ip: [][]string{
				{"-6", "addr", "add", "2001:db8::10/64", "dev", "v0", "nodad"},
				{"-6", "route", "add", "default", "via", "2001:db8::1", "dev", "v0"},
			},
			want: network("v0", "2001:db8::1"),
		},
		{
			name: "IPv4 route without gateway is preferred",
			ip:   [][]string{{"route", "add", "default", "dev", "v0", "metric", "50"}},
			want: network("v0", ""),
		},
		{
			name: "second link with a lower metric",
			ip: [][]string{
				{"link", "add", "w0", "type", "veth", "peer", "name", "w1"},
				{"link", "set", "w1", "up"},
				{"link", "set", "w0", "up"},
				{"addr", "add", "198.51.100.10/24", "dev", "w0"},
				{"route", "add", "default", "via", "198.51.100.1", "metric", "10"},
			},
			want: network("w0", "198.51.100.1"),
		},
		{
			name: "second link goes",
			ip:   [][]string{{"link", "del", "w0"}},
			want: network("v0", ""),
		},
	}
	for _, step := range steps {
		for _, args := range step.ip {
			ns.IP(t, args...)
		}
		if got := r.next(t); got != step.want {
			t.Fatalf("%s: reported %v (%+v), want %v", step.name, got, got, step.want)
		}
	}

	// Deleting the link takes the IPv4 and IPv6 routes with it; the last
	// report says there is no route left, whatever came before it.
	ns.IP(t, "link", "del", "v0")
	for n := r.next(t); n.DefaultRoute; n = r.next(t) {
		if n.Interface != "v0" {
			t.Fatalf("link removal: reported %v", n)
		}
	}
}

func TestWatcherBadNamespace(t *testing.T) {
	w, err := New(Config{NetnsPath: t.TempDir() + "/missing"})
	if err != nil {
		t.Fatal(err)
	}
	err = w.Run(t.Context(), func(Network) { t.Error("report without a namespace") })
	if err == nil || !strings.Contains(err.Error(), "open network namespace") {
		t.Fatalf("Run = %v, want a failure to open the namespace", err)
	}
}

// TestWireless tells Wi-Fi interfaces from others by what a fake sysfs
// holds for them, as the kernel's does.
func TestWireless(t *testing.T) {
	sysfs := t.TempDir()
	for iface, entries := range map[string][]string{
		"wlan0":  {"phy80211"},
		"wlp2s0": {"wireless"},
		"eth0":   {"statistics"},
		"wwan0":  nil,
	} {
		dir := filepath.Join(sysfs, "class", "net", iface)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, e := range entries {
			if err := os.Mkdir(filepath.Join(dir, e), 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, tt := range []struct {
		iface string
		want  bool
	}{{"wlan0", true}, {"wlp2s0", true}, {"eth0", false}, {"wwan0", false}, {"missing0", false}} {
		if got := wireless(sysfs, tt.iface); got != tt.want {
			t.Errorf("wireless(%s) = %v, want %v", tt.iface, got, tt.want)
		}
	}
}
