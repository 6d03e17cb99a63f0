// SPDX-License-Identifier: Apache-2.0

package clientip

import (
	"net"
	"net/netip"
	"slices"
	"testing"
)

func TestAddr(t *testing.T) {
	tests := []struct {
		in   net.Addr
		want string
	}{
		{nil, "invalid IP"},
		{(*net.TCPAddr)(nil), "invalid IP"},
		{&net.TCPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 80}, "192.0.2.1"},
		{&net.TCPAddr{IP: net.ParseIP("192.0.2.1").To4(), Port: 80}, "192.0.2.1"},
		{&net.TCPAddr{IP: net.ParseIP("2001:db8::1"), Port: 80}, "2001:db8::1"},
		{&net.TCPAddr{IP: net.ParseIP("fe80::1"), Zone: "eth0"}, "fe80::1"},
		{&net.UDPAddr{IP: net.IPv4(192, 0, 2, 1), Port: 53}, "192.0.2.1"},
		{&net.IPAddr{IP: net.ParseIP("2001:db8::1")}, "2001:db8::1"},
		{&net.UnixAddr{Name: "/run/tether/admin.sock", Net: "unix"}, "invalid IP"},
		{net.TCPAddrFromAddrPort(netip.MustParseAddrPort("[::ffff:192.0.2.1]:80")), "192.0.2.1"},
		{stringAddr("[2001:db8::1%eth0]:443"), "2001:db8::1"},
		{stringAddr("192.0.2.1"), "192.0.2.1"},
		{stringAddr("nonsense"), "invalid IP"},
	}
	for _, tt := range tests {
		if got := Addr(tt.in); got.String() != tt.want {
			t.Errorf("Addr(%#v) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

type stringAddr string

func (s stringAddr) Network() string { return "test" }
func (s stringAddr) String() string  { return string(s) }

func TestKey(t *testing.T) {
	tests := []struct{ in, want string }{
		{"192.0.2.1", "192.0.2.1/32"},
		{"::ffff:192.0.2.1", "192.0.2.1/32"},
		{"2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"},
		{"2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"},
		{"fe80::1%eth0", "fe80::/64"},
		{"::1", "::/64"},
	}
	for _, tt := range tests {
		if got := Key(netip.MustParseAddr(tt.in)); got.String() != tt.want {
			t.Errorf("Key(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
	if got := Key(netip.Addr{}); got.IsValid() {
		t.Errorf("Key of no address = %s, want the zero prefix", got)
	}
}

func TestParseTrusted(t *testing.T) {
	got, err := ParseTrusted([]string{"10.0.0.0/8", "10.1.2.3/8", " 192.0.2.1 ", "2001:db8::/32", "2001:db8::1", "::ffff:203.0.113.0/120"})
	if err != nil {
		t.Fatal(err)
	}
	want := []netip.Prefix{
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("10.0.0.0/8"),
		netip.MustParsePrefix("192.0.2.1/32"),
		netip.MustParsePrefix("2001:db8::/32"),
		netip.MustParsePrefix("2001:db8::1/128"),
		netip.MustParsePrefix("203.0.113.0/24"),
	}
	if !slices.Equal(got, want) {
		t.Errorf("ParseTrusted = %v, want %v", got, want)
	}
	for _, bad := range []string{"", "10.0.0.0/33", "proxy.example", "fe80::1%eth0", "::ffff:0:0/64", "10.0.0.0/8/8"} {
		if _, err := ParseTrusted([]string{bad}); err == nil {
			t.Errorf("ParseTrusted(%q) did not fail", bad)
		}
	}
}

func TestIsTrusted(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::ffff:192.0.2.0/120")}
	for in, want := range map[string]bool{
		"10.1.2.3":         true,
		"::ffff:10.1.2.3":  true,
		"11.0.0.1":         false,
		"192.0.2.5":        true,
		"::ffff:192.0.2.5": true,
		"2001:db8::1":      false,
	} {
		if got := isTrusted(trusted, netip.MustParseAddr(in)); got != want {
			t.Errorf("isTrusted(%s) = %v, want %v", in, got, want)
		}
	}
	if isTrusted([]netip.Prefix{netip.MustParsePrefix("0.0.0.0/0"), netip.MustParsePrefix("::/0")}, netip.Addr{}) {
		t.Error("the zero address is trusted")
	}
}
