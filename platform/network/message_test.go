// SPDX-License-Identifier: Apache-2.0

package network

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// Builders for what the kernel sends.

func nlattr(typ uint16, data []byte) []byte {
	b := make([]byte, nlmsgAlign(unix.SizeofRtAttr+len(data)))
	binary.NativeEndian.PutUint16(b[0:2], uint16(unix.SizeofRtAttr+len(data)))
	binary.NativeEndian.PutUint16(b[2:4], typ)
	copy(b[unix.SizeofRtAttr:], data)
	return b
}

func u32(v uint32) []byte { return binary.NativeEndian.AppendUint32(nil, v) }

func rtmsg(family, dstLen, table, typ uint8, flags uint32, attrs ...[]byte) []byte {
	b := []byte{family, dstLen, 0, 0, table, unix.RTPROT_STATIC, unix.RT_SCOPE_UNIVERSE, typ}
	b = binary.NativeEndian.AppendUint32(b, flags)
	for _, a := range attrs {
		b = append(b, a...)
	}
	return b
}

func nexthop(flags uint8, ifindex uint32, attrs ...[]byte) []byte {
	var body []byte
	for _, a := range attrs {
		body = append(body, a...)
	}
	b := binary.NativeEndian.AppendUint16(nil, uint16(unix.SizeofRtNexthop+len(body)))
	b = append(b, flags, 0)
	b = binary.NativeEndian.AppendUint32(b, ifindex)
	return append(b, body...)
}

func nlmsg(typ, flags uint16, seq uint32, payload []byte) []byte {
	b := request(typ, flags, seq, nlmsgAlign(len(payload)), payload...)
	binary.NativeEndian.PutUint32(b[0:4], uint32(unix.SizeofNlMsghdr+len(payload)))
	return b
}

// errnoPayload is an NLMSG_ERROR payload for e.
func errnoPayload(e unix.Errno) []byte {
	n := -int32(e)
	return u32(uint32(n))
}

func gw(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func TestParseRoute(t *testing.T) {
	tests := []struct {
		name    string
		data    []byte
		want    route
		wantErr string
	}{
		{
			name: "IPv4 default via gateway",
			data: rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0,
				nlattr(unix.RTA_TABLE, u32(unix.RT_TABLE_MAIN)), nlattr(unix.RTA_PRIORITY, u32(100)),
				nlattr(unix.RTA_GATEWAY, gw("192.0.2.1")), nlattr(unix.RTA_OIF, u32(2))),
			want: route{family: unix.AF_INET, typ: unix.RTN_UNICAST, table: unix.RT_TABLE_MAIN, priority: 100, ifindex: 2, gateway: netip.MustParseAddr("192.0.2.1")},
		},
		{
			name: "IPv6 default, table from attribute",
			data: rtmsg(unix.AF_INET6, 0, unix.RT_TABLE_UNSPEC, unix.RTN_UNICAST, 0,
				nlattr(unix.RTA_TABLE, u32(1000)), nlattr(unix.RTA_GATEWAY, gw("fe80::1")), nlattr(unix.RTA_OIF, u32(3))),
			want: route{family: unix.AF_INET6, typ: unix.RTN_UNICAST, table: 1000, ifindex: 3, gateway: netip.MustParseAddr("fe80::1")},
		},
		{
			name: "point to point, link down",
			data: rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, unix.RTNH_F_LINKDOWN, nlattr(unix.RTA_OIF, u32(7))),
			want: route{family: unix.AF_INET, typ: unix.RTN_UNICAST, table: unix.RT_TABLE_MAIN, flags: unix.RTNH_F_LINKDOWN, ifindex: 7},
		},
		{
			name: "IPv4 via an IPv6 next hop",
			data: rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0,
				nlattr(unix.RTA_VIA, append([]byte{unix.AF_INET6, 0}, gw("fe80::2")...)), nlattr(unix.RTA_OIF, u32(2))),
			want: route{family: unix.AF_INET, typ: unix.RTN_UNICAST, table: unix.RT_TABLE_MAIN, ifindex: 2, gateway: netip.MustParseAddr("fe80::2")},
		},
		{
			name: "multipath: first live hop",
			data: rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0,
				nlattr(unix.RTA_MULTIPATH, append(
					nexthop(unix.RTNH_F_LINKDOWN, 4, nlattr(unix.RTA_GATEWAY, gw("198.51.100.1"))),
					nexthop(0, 5, nlattr(unix.RTA_GATEWAY, gw("203.0.113.1")))...))),
			want: route{family: unix.AF_INET, typ: unix.RTN_UNICAST, table: unix.RT_TABLE_MAIN, ifindex: 5, gateway: netip.MustParseAddr("203.0.113.1")},
		},
		{
			name: "multipath: every hop dead",
			data: rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0,
				nlattr(unix.RTA_MULTIPATH, nexthop(unix.RTNH_F_DEAD, 4, nlattr(unix.RTA_GATEWAY, gw("198.51.100.1"))))),
			want: route{family: unix.AF_INET, typ: unix.RTN_UNICAST, table: unix.RT_TABLE_MAIN, flags: unix.RTNH_F_DEAD},
		},
		{
			name: "nested flag in the attribute type",
			data: rtmsg(unix.AF_INET, 24, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0, nlattr(unix.RTA_OIF|unix.NLA_F_NET_BYTEORDER, u32(9))),
			want: route{family: unix.AF_INET, dstLen: 24, typ: unix.RTN_UNICAST, table: unix.RT_TABLE_MAIN, ifindex: 9},
		},
		{name: "short header", data: make([]byte, 11), wantErr: "too short"},
		{name: "attribute overruns", data: append(rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0), 0xff, 0, 5, 0), wantErr: "out of bounds"},
		{name: "attribute header cut", data: append(rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0), 8, 0), wantErr: "less than a header"},
		{name: "bad gateway", data: rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0, nlattr(unix.RTA_GATEWAY, []byte{1, 2, 3})), wantErr: "address of 3 bytes"},
		{name: "bad interface", data: rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0, nlattr(unix.RTA_OIF, []byte{1})), wantErr: "interface attribute of 1 bytes"},
		{name: "bad via", data: rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0, nlattr(unix.RTA_VIA, []byte{10})), wantErr: "too short"},
		{
			name:    "next hop overruns",
			data:    rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0, nlattr(unix.RTA_MULTIPATH, []byte{64, 0, 0, 0, 1, 0, 0, 0})),
			wantErr: "next hop: length 64 out of bounds",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseRoute(tt.data)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got  %+v\nwant %+v", got, tt.want)
			}
		})
	}
}

func TestParseMessages(t *testing.T) {
	route := rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0, nlattr(unix.RTA_OIF, u32(2)))
	odd := []byte{1, 2, 3, 4, 5} // not a multiple of 4: the next message is padded
	stream := append(append(nlmsg(unix.RTM_NEWROUTE, unix.NLM_F_MULTI, 7, route), nlmsg(unix.RTM_NEWROUTE, unix.NLM_F_MULTI|unix.NLM_F_DUMP_INTR, 7, odd)...),
		nlmsg(unix.NLMSG_DONE, unix.NLM_F_MULTI, 7, u32(0))...)
	msgs, err := parseMessages(stream)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 3 {
		t.Fatalf("%d messages, want 3", len(msgs))
	}
	if msgs[0].typ != unix.RTM_NEWROUTE || msgs[0].seq != 7 || string(msgs[0].data) != string(route) {
		t.Errorf("first message %+v", msgs[0])
	}
	if msgs[1].flags&unix.NLM_F_DUMP_INTR == 0 || string(msgs[1].data) != string(odd) {
		t.Errorf("second message %+v", msgs[1])
	}
	if msgs[2].typ != unix.NLMSG_DONE {
		t.Errorf("third message %+v", msgs[2])
	}

	for name, b := range map[string][]byte{
		"short header":     stream[:10],
		"length too big":   nlmsg(unix.RTM_NEWROUTE, 0, 1, route)[:20],
		"length too small": binary.NativeEndian.AppendUint32(nil, 4),
	} {
		if _, err := parseMessages(b); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
}

func TestParseError(t *testing.T) {
	if err := parseError(u32(0)); err != nil {
		t.Errorf("acknowledgement: %v", err)
	}
	if err := parseError(errnoPayload(unix.ENODEV)); !errors.Is(err, unix.ENODEV) {
		t.Errorf("ENODEV: %v", err)
	}
	if err := parseError([]byte{1}); err == nil {
		t.Error("short error message parsed")
	}
}

func TestParseLinkName(t *testing.T) {
	ifinfo := make([]byte, unix.SizeofIfInfomsg)
	tests := []struct {
		data    []byte
		want    string
		wantErr string
	}{
		{append(append([]byte(nil), ifinfo...), append(nlattr(unix.IFLA_MTU, u32(1500)), nlattr(unix.IFLA_IFNAME, []byte("wlan0\x00"))...)...), "wlan0", ""},
		{append(append([]byte(nil), ifinfo...), nlattr(unix.IFLA_IFNAME, []byte("eth1"))...), "eth1", ""},
		{append(append([]byte(nil), ifinfo...), nlattr(unix.IFLA_IFNAME, []byte("\x00"))...), "", "empty name"},
		{append(append([]byte(nil), ifinfo...), nlattr(unix.IFLA_MTU, u32(1500))...), "", "no name"},
		{ifinfo[:8], "", "too short"},
	}
	for _, tt := range tests {
		got, err := parseLinkName(tt.data)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("%x: err = %v, want %q", tt.data, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("%x: %q, %v; want %q", tt.data, got, err, tt.want)
		}
	}
}

func TestBestDefault(t *testing.T) {
	v4 := func(ifindex int, metric uint32, gateway string, flags uint32) route {
		return route{family: unix.AF_INET, typ: unix.RTN_UNICAST, table: unix.RT_TABLE_MAIN, ifindex: ifindex, priority: metric, gateway: netip.MustParseAddr(gateway), flags: flags}
	}
	v6 := v4(3, 0, "fe80::1", 0)
	v6.family = unix.AF_INET6
	tests := []struct {
		name   string
		routes []route
		want   int // ifindex of the best; 0 for none
	}{
		{"none", nil, 0},
		{"lowest metric", []route{v4(2, 600, "192.0.2.1", 0), v4(4, 100, "198.51.100.1", 0)}, 4},
		{"IPv4 before IPv6", []route{v6, v4(5, 1000, "192.0.2.1", 0)}, 5},
		{"IPv6 alone", []route{v6}, 3},
		{"tie: lowest index", []route{v4(8, 0, "192.0.2.1", 0), v4(6, 0, "192.0.2.1", 0)}, 6},
	}
	for _, tt := range tests {
		var usable []route
		for _, r := range tt.routes {
			if isDefault(r) {
				usable = append(usable, r)
			}
		}
		best, ok := bestDefault(usable)
		if got := map[bool]int{true: best.ifindex}[ok]; got != tt.want {
			t.Errorf("%s: best is on interface %d, want %d", tt.name, got, tt.want)
		}
	}

	notDefault := []struct {
		name string
		r    route
	}{
		{"link down", v4(2, 0, "192.0.2.1", unix.RTNH_F_LINKDOWN)},
		{"dead", v4(2, 0, "192.0.2.1", unix.RTNH_F_DEAD)},
		{"not default", func() route { r := v4(2, 0, "192.0.2.1", 0); r.dstLen = 24; return r }()},
		{"other table", func() route { r := v4(2, 0, "192.0.2.1", 0); r.table = 100; return r }()},
		{"unreachable", func() route { r := v4(2, 0, "192.0.2.1", 0); r.typ = unix.RTN_UNREACHABLE; return r }()},
		{"no interface", func() route { r := v4(2, 0, "192.0.2.1", 0); r.ifindex = 0; return r }()},
	}
	for _, tt := range notDefault {
		if isDefault(tt.r) {
			t.Errorf("%s: taken as a default route", tt.name)
		}
	}
}

func TestIdentify(t *testing.T) {
	tests := []struct {
		iface, gateway string
		want           string
	}{
		{"eth0", "192.0.2.1", "eth0/192.0.2.1"},
		{"eth0", "::ffff:192.0.2.1", "eth0/192.0.2.1"},
		{"wlan0", "fe80::1", "wlan0/fe80::1"},
		{"wwan0", "", "wwan0"},
	}
	for _, tt := range tests {
		var gateway netip.Addr
		if tt.gateway != "" {
			gateway = netip.MustParseAddr(tt.gateway)
		}
		if got := identify(tt.iface, gateway).ID; got != tt.want {
			t.Errorf("identify(%s, %s) = %q, want %q", tt.iface, tt.gateway, got, tt.want)
		}
	}
}

func FuzzParseMessages(f *testing.F) {
	f.Add(nlmsg(unix.RTM_NEWROUTE, unix.NLM_F_MULTI, 1, rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0,
		nlattr(unix.RTA_GATEWAY, gw("192.0.2.1")), nlattr(unix.RTA_OIF, u32(2)))))
	f.Add(nlmsg(unix.RTM_NEWROUTE, 0, 1, rtmsg(unix.AF_INET6, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0,
		nlattr(unix.RTA_MULTIPATH, nexthop(0, 4, nlattr(unix.RTA_VIA, append([]byte{unix.AF_INET6, 0}, gw("fe80::1")...)))))))
	f.Add(nlmsg(unix.RTM_NEWLINK, 0, 1, append(make([]byte, unix.SizeofIfInfomsg), nlattr(unix.IFLA_IFNAME, []byte("eth0\x00"))...)))
	f.Add(nlmsg(unix.NLMSG_ERROR, 0, 1, errnoPayload(unix.ENODEV)))
	f.Fuzz(func(t *testing.T, b []byte) {
		msgs, err := parseMessages(b)
		if err != nil {
			return
		}
		total := 0
		for _, m := range msgs {
			total += unix.SizeofNlMsghdr + len(m.data)
			// Whatever a message claims to be, no parser may panic or
			// return a value with an error.
			if r, err := parseRoute(m.data); err != nil && r != (route{}) {
				t.Fatalf("parseRoute returned %+v with %v", r, err)
			}
			if name, err := parseLinkName(m.data); err != nil && name != "" {
				t.Fatalf("parseLinkName returned %q with %v", name, err)
			}
			parseError(m.data)
		}
		if total > len(b) {
			t.Fatalf("%d messages hold %d bytes of %d", len(msgs), total, len(b))
		}
	})
}
