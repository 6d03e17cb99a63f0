// SPDX-License-Identifier: Apache-2.0

package clientip

import (
	"fmt"
	"net"
	"net/netip"
	"strings"
)

// Addr returns the IP address of a, without port or zone and with an
// IPv4-mapped IPv6 address turned into IPv4, so that maps keyed by client
// address see one client as one key. It returns the zero netip.Addr for a
// nil address or one that is not IP (a Unix socket's).
func Addr(a net.Addr) netip.Addr {
	var ip netip.Addr
	switch a := a.(type) {
	case nil:
		return netip.Addr{}
	case *net.TCPAddr:
		if a == nil {
			return netip.Addr{}
		}
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.UDPAddr:
		if a == nil {
			return netip.Addr{}
		}
		ip, _ = netip.AddrFromSlice(a.IP)
	case *net.IPAddr:
		if a == nil {
			return netip.Addr{}
		}
		ip, _ = netip.AddrFromSlice(a.IP)
	default:
		s := a.String()
		if ap, err := netip.ParseAddrPort(s); err == nil {
			ip = ap.Addr()
		} else {
			ip, _ = netip.ParseAddr(s)
		}
	}
	return normalize(ip)
}

// normalize drops the zone and the IPv4-mapped form.
func normalize(ip netip.Addr) netip.Addr {
	return ip.Unmap().WithZone("")
}

// Key is what a per-client limit counts ip under: ip's /32 for IPv4 (and
// IPv4-mapped IPv6), its /64 for IPv6, since an IPv6 host can take any
// address of its /64. The zero netip.Addr has the zero Prefix as its key.
func Key(ip netip.Addr) netip.Prefix {
	ip = normalize(ip)
	switch {
	case ip.Is4():
		return netip.PrefixFrom(ip, 32)
	case ip.Is6():
		p, _ := ip.Prefix(64)
		return p
	}
	return netip.Prefix{}
}

// ParseTrusted parses the values of --trusted-proxy: CIDR prefixes such as
// "10.0.0.0/8" or "2001:db8::/32", or single addresses, which mean just
// that address. An IPv4-mapped IPv6 prefix is turned into the IPv4 prefix it
// covers, as client addresses are compared in IPv4 form.
func ParseTrusted(cidrs []string) ([]netip.Prefix, error) {
	out := make([]netip.Prefix, 0, len(cidrs))
	for _, s := range cidrs {
		s = strings.TrimSpace(s)
		var p netip.Prefix
		if strings.Contains(s, "/") {
			var err error
			if p, err = netip.ParsePrefix(s); err != nil {
				return nil, fmt.Errorf("trusted proxy %q: %w", s, err)
			}
		} else {
			ip, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("trusted proxy %q: not an address or CIDR prefix: %w", s, err)
			}
			if ip.Zone() != "" {
				return nil, fmt.Errorf("trusted proxy %q: an address with a zone", s)
			}
			p = netip.PrefixFrom(ip, ip.BitLen())
		}
		if p.Addr().Is4In6() {
			if p.Bits() < 96 {
				return nil, fmt.Errorf("trusted proxy %q: an IPv4-mapped prefix shorter than /96", s)
			}
			p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// isTrusted reports whether ip is inside one of the prefixes. An IPv4
// address also matches an IPv4-mapped IPv6 prefix.
func isTrusted(trusted []netip.Prefix, ip netip.Addr) bool {
	if !ip.IsValid() {
		return false
	}
	ip = normalize(ip)
	for _, p := range trusted {
		if p.Contains(ip) {
			return true
		}
		if ip.Is4() && p.Addr().Is4In6() && p.Contains(netip.AddrFrom16(ip.As16())) {
			return true
		}
	}
	return false
}
