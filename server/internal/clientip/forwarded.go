// SPDX-License-Identifier: Apache-2.0

package clientip

import (
	"net/http"
	"net/netip"
	"strings"
)

// FromRequest returns the address of the client that made r. It is the
// address of r's peer (r.RemoteAddr, which is already the client's when a
// PROXY header named it), unless that peer is a trusted proxy: then
// X-Forwarded-For is read from its right end, where each proxy appends the
// address it received the request from, past every trusted address, and the
// first untrusted one is the client. The left part of the header is
// whatever the client chose to send and is never believed.
//
// If an entry it must read is not an address (a proxy that writes
// "unknown", say), it stops there and returns the last address it could
// trust to have been written by a proxy of ours: the nearest trusted hop.
// If every entry is trusted, the request came from inside the trusted
// networks and the left-most entry is returned. Several X-Forwarded-For
// fields are read as one list, in order. An entry may be an IPv4 or IPv6
// address, an IPv6 address in brackets, either with a port.
//
// It returns the zero netip.Addr only if r.RemoteAddr is not an address.
func FromRequest(r *http.Request, trusted []netip.Prefix) netip.Addr {
	return fromForwarded(remoteAddr(r.RemoteAddr), r.Header.Values("X-Forwarded-For"), trusted)
}

// remoteAddr parses an http.Request's RemoteAddr, "ip:port" as net/http
// sets it; a bare address is accepted too.
func remoteAddr(s string) netip.Addr {
	if ap, err := netip.ParseAddrPort(s); err == nil {
		return normalize(ap.Addr())
	}
	if ip, err := netip.ParseAddr(strings.Trim(s, "[]")); err == nil {
		return normalize(ip)
	}
	return netip.Addr{}
}

// fromForwarded walks the X-Forwarded-For values right to left from peer.
func fromForwarded(peer netip.Addr, values []string, trusted []netip.Prefix) netip.Addr {
	hop := peer
	for i := len(values) - 1; i >= 0; i-- {
		rest := values[i]
		for {
			if !isTrusted(trusted, hop) {
				return hop
			}
			var entry string
			if j := strings.LastIndexByte(rest, ','); j >= 0 {
				entry, rest = rest[j+1:], rest[:j]
			} else {
				entry, rest = rest, ""
			}
			if entry = strings.Trim(entry, " \t"); entry != "" {
				ip, ok := parseForwarded(entry)
				if !ok {
					return hop
				}
				hop = ip
			}
			if rest == "" {
				break
			}
		}
	}
	return hop
}

// parseForwarded parses one X-Forwarded-For entry: 192.0.2.1,
// 192.0.2.1:443, 2001:db8::1, [2001:db8::1] or [2001:db8::1]:443. Zones
// are refused: they mean nothing off the host.
func parseForwarded(s string) (netip.Addr, bool) {
	var ip netip.Addr
	var err error
	switch {
	case strings.HasPrefix(s, "[") && strings.HasSuffix(s, "]"):
		if ip, err = netip.ParseAddr(s[1 : len(s)-1]); err == nil && !ip.Is6() {
			return netip.Addr{}, false
		}
	case strings.HasPrefix(s, "["):
		var ap netip.AddrPort
		ap, err = netip.ParseAddrPort(s)
		ip = ap.Addr()
		if err == nil && !ip.Is6() {
			return netip.Addr{}, false
		}
	default:
		if ip, err = netip.ParseAddr(s); err != nil {
			// 192.0.2.1:443; an IPv6 address with a port has brackets.
			var ap netip.AddrPort
			if ap, err = netip.ParseAddrPort(s); err == nil && !ap.Addr().Is4() {
				return netip.Addr{}, false
			}
			ip = ap.Addr()
		}
	}
	if err != nil || !ip.IsValid() || ip.Zone() != "" {
		return netip.Addr{}, false
	}
	return normalize(ip), true
}
