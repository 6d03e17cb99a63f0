// SPDX-License-Identifier: Apache-2.0

package network

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"

	"golang.org/x/sys/unix"
)

// message is one netlink message: its header and payload.
type message struct {
	typ   uint16
	flags uint16
	seq   uint32
	data  []byte
}

// nlmsgAlign rounds n up to netlink's 4-byte alignment.
func nlmsgAlign(n int) int { return (n + 3) &^ 3 }

// parseMessages splits a netlink datagram into its messages.
func parseMessages(b []byte) ([]message, error) {
	var msgs []message
	for len(b) > 0 {
		if len(b) < unix.SizeofNlMsghdr {
			return nil, fmt.Errorf("netlink message: %d bytes left, less than a header", len(b))
		}
		length := int(binary.NativeEndian.Uint32(b[0:4]))
		if length < unix.SizeofNlMsghdr || length > len(b) {
			return nil, fmt.Errorf("netlink message: length %d out of bounds (%d bytes left)", length, len(b))
		}
		msgs = append(msgs, message{
			typ:   binary.NativeEndian.Uint16(b[4:6]),
			flags: binary.NativeEndian.Uint16(b[6:8]),
			seq:   binary.NativeEndian.Uint32(b[8:12]),
			data:  b[unix.SizeofNlMsghdr:length],
		})
		b = b[min(nlmsgAlign(length), len(b)):]
	}
	return msgs, nil
}

// parseError reads an NLMSG_ERROR payload: nil for an acknowledgement,
// the errno otherwise.
func parseError(data []byte) error {
	if len(data) < 4 {
		return fmt.Errorf("netlink error message: %d bytes, want at least 4", len(data))
	}
	if errno := -int32(binary.NativeEndian.Uint32(data[:4])); errno != 0 {
		return unix.Errno(errno)
	}
	return nil
}

// attr is one route attribute (struct rtattr, also used for links).
type attr struct {
	typ  uint16
	data []byte
}

// parseAttrs splits attributes, as they follow a route or link header.
func parseAttrs(b []byte) ([]attr, error) {
	var attrs []attr
	for len(b) > 0 {
		if len(b) < unix.SizeofRtAttr {
			return nil, fmt.Errorf("attribute: %d bytes left, less than a header", len(b))
		}
		length := int(binary.NativeEndian.Uint16(b[0:2]))
		if length < unix.SizeofRtAttr || length > len(b) {
			return nil, fmt.Errorf("attribute: length %d out of bounds (%d bytes left)", length, len(b))
		}
		// The type's top bits are flags (nested, byte order).
		attrs = append(attrs, attr{typ: binary.NativeEndian.Uint16(b[2:4]) &^ (unix.NLA_F_NESTED | unix.NLA_F_NET_BYTEORDER), data: b[unix.SizeofRtAttr:length]})
		b = b[min(nlmsgAlign(length), len(b)):]
	}
	return attrs, nil
}

// route is what matters of one RTM_NEWROUTE message.
type route struct {
	family   uint8
	dstLen   uint8
	typ      uint8 // RTN_*
	table    uint32
	priority uint32 // the metric; lower wins
	flags    uint32 // RTNH_F_*, of the route or of its chosen next hop
	ifindex  int
	gateway  netip.Addr // invalid when the route has none (point to point)
}

var errShort = errors.New("message too short")

// parseRoute decodes an RTM_NEWROUTE payload. Of a multipath route it
// keeps the first next hop that is alive.
func parseRoute(data []byte) (route, error) {
	if len(data) < unix.SizeofRtMsg {
		return route{}, fmt.Errorf("route: %w (%d bytes)", errShort, len(data))
	}
	r := route{
		family: data[0],
		dstLen: data[1],
		table:  uint32(data[4]),
		typ:    data[7],
		flags:  binary.NativeEndian.Uint32(data[8:12]),
	}
	attrs, err := parseAttrs(data[unix.SizeofRtMsg:])
	if err != nil {
		return route{}, fmt.Errorf("route: %w", err)
	}
	for _, a := range attrs {
		switch a.typ {
		case unix.RTA_TABLE:
			if len(a.data) != 4 {
				return route{}, fmt.Errorf("route: table attribute of %d bytes", len(a.data))
			}
			r.table = binary.NativeEndian.Uint32(a.data)
		case unix.RTA_PRIORITY:
			if len(a.data) != 4 {
				return route{}, fmt.Errorf("route: priority attribute of %d bytes", len(a.data))
			}
			r.priority = binary.NativeEndian.Uint32(a.data)
		case unix.RTA_OIF:
			if len(a.data) != 4 {
				return route{}, fmt.Errorf("route: interface attribute of %d bytes", len(a.data))
			}
			r.ifindex = int(int32(binary.NativeEndian.Uint32(a.data)))
		case unix.RTA_GATEWAY:
			if r.gateway, err = parseAddr(a.data); err != nil {
				return route{}, fmt.Errorf("route: gateway: %w", err)
			}
		case unix.RTA_VIA: // a gateway of another family: struct rtvia
			if r.gateway, err = parseVia(a.data); err != nil {
				return route{}, fmt.Errorf("route: via: %w", err)
			}
		case unix.RTA_MULTIPATH:
			if err := r.firstHop(a.data); err != nil {
				return route{}, fmt.Errorf("route: %w", err)
			}
		}
	}
	return r, nil
}

// firstHop takes the route's interface, gateway and flags from the first
// live next hop in an RTA_MULTIPATH list of struct rtnexthop.
func (r *route) firstHop(b []byte) error {
	for len(b) > 0 {
		if len(b) < unix.SizeofRtNexthop {
			return fmt.Errorf("next hop: %w (%d bytes)", errShort, len(b))
		}
		length := int(binary.NativeEndian.Uint16(b[0:2]))
		if length < unix.SizeofRtNexthop || length > len(b) {
			return fmt.Errorf("next hop: length %d out of bounds (%d bytes left)", length, len(b))
		}
		flags := uint32(b[2])
		ifindex := int(int32(binary.NativeEndian.Uint32(b[4:8])))
		attrs, err := parseAttrs(b[unix.SizeofRtNexthop:length])
		if err != nil {
			return fmt.Errorf("next hop: %w", err)
		}
		b = b[min(nlmsgAlign(length), len(b)):]
		if flags&(unix.RTNH_F_DEAD|unix.RTNH_F_LINKDOWN) != 0 {
			continue
		}
		var gateway netip.Addr
		for _, a := range attrs {
			switch a.typ {
			case unix.RTA_GATEWAY:
				gateway, err = parseAddr(a.data)
			case unix.RTA_VIA:
				gateway, err = parseVia(a.data)
			}
			if err != nil {
				return fmt.Errorf("next hop gateway: %w", err)
			}
		}
		r.ifindex, r.gateway, r.flags = ifindex, gateway, r.flags|flags
		return nil
	}
	// Every next hop is dead: so is the route.
	r.flags |= unix.RTNH_F_DEAD
	return nil
}

func parseAddr(b []byte) (netip.Addr, error) {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return netip.Addr{}, fmt.Errorf("address of %d bytes", len(b))
	}
	return a, nil
}

// parseVia reads struct rtvia: a 16-bit address family and the address.
func parseVia(b []byte) (netip.Addr, error) {
	if len(b) < 2 {
		return netip.Addr{}, fmt.Errorf("%w (%d bytes)", errShort, len(b))
	}
	return parseAddr(b[2:])
}

// parseLinkName reads the name from an RTM_NEWLINK payload.
func parseLinkName(data []byte) (string, error) {
	if len(data) < unix.SizeofIfInfomsg {
		return "", fmt.Errorf("link: %w (%d bytes)", errShort, len(data))
	}
	attrs, err := parseAttrs(data[unix.SizeofIfInfomsg:])
	if err != nil {
		return "", fmt.Errorf("link: %w", err)
	}
	for _, a := range attrs {
		if a.typ == unix.IFLA_IFNAME {
			name, _, _ := bytes.Cut(a.data, []byte{0})
			if len(name) == 0 {
				return "", errors.New("link: empty name")
			}
			return string(name), nil
		}
	}
	return "", errors.New("link: no name")
}

// request encodes a netlink request: a header and a fixed-size payload
// whose first bytes are given.
func request(typ, flags uint16, seq uint32, payloadSize int, payload ...byte) []byte {
	b := make([]byte, unix.SizeofNlMsghdr+payloadSize)
	binary.NativeEndian.PutUint32(b[0:4], uint32(len(b)))
	binary.NativeEndian.PutUint16(b[4:6], typ)
	binary.NativeEndian.PutUint16(b[6:8], flags)
	binary.NativeEndian.PutUint32(b[8:12], seq)
	copy(b[unix.SizeofNlMsghdr:], payload)
	return b
}

// routeDumpRequest asks for every route of every family.
func routeDumpRequest(seq uint32) []byte {
	return request(unix.RTM_GETROUTE, unix.NLM_F_REQUEST|unix.NLM_F_DUMP, seq, unix.SizeofRtMsg, unix.AF_UNSPEC)
}

// linkRequest asks for one link by index.
func linkRequest(seq uint32, index int) []byte {
	b := request(unix.RTM_GETLINK, unix.NLM_F_REQUEST, seq, unix.SizeofIfInfomsg, unix.AF_UNSPEC)
	binary.NativeEndian.PutUint32(b[unix.SizeofNlMsghdr+4:], uint32(int32(index)))
	return b
}
