// SPDX-License-Identifier: Apache-2.0

package clientip

import (
	"net/http/httptest"
	"net/netip"
	"testing"
)

// testTrusted: a load balancer network, an IPv6 proxy network and one
// more proxy.
var testTrusted = []netip.Prefix{
	netip.MustParsePrefix("10.0.0.0/8"),
	netip.MustParsePrefix("2001:db8:ffff::/48"),
	netip.MustParsePrefix("203.0.113.9/32"),
}

func TestFromRequest(t *testing.T) {
	tests := []struct {
		name   string
		remote string
		xff    []string
		want   string
	}{
		{name: "untrusted peer, no header", remote: "192.0.2.1:1234", want: "192.0.2.1"},
		{name: "untrusted peer ignores header", remote: "192.0.2.1:1234", xff: []string{"198.51.100.7"}, want: "192.0.2.1"},
		{name: "untrusted IPv6 peer", remote: "[2001:db8::1]:443", xff: []string{"198.51.100.7"}, want: "2001:db8::1"},
		{name: "untrusted IPv4-mapped peer", remote: "[::ffff:192.0.2.1]:1234", want: "192.0.2.1"},
		{name: "trusted peer, no header", remote: "10.1.2.3:1234", want: "10.1.2.3"},
		{name: "trusted peer, empty header", remote: "10.1.2.3:1234", xff: []string{""}, want: "10.1.2.3"},
		{name: "one hop", remote: "10.1.2.3:1234", xff: []string{"198.51.100.7"}, want: "198.51.100.7"},
		{name: "client-supplied left part ignored", remote: "10.1.2.3:1234", xff: []string{"1.1.1.1, 2.2.2.2, 198.51.100.7"}, want: "198.51.100.7"},
		{name: "client spoofs a trusted address", remote: "10.1.2.3:1234", xff: []string{"10.9.9.9, 198.51.100.7"}, want: "198.51.100.7"},
		{name: "two trusted hops", remote: "10.1.2.3:1234", xff: []string{"1.1.1.1, 198.51.100.7, 203.0.113.9, 10.0.0.5"}, want: "198.51.100.7"},
		{name: "all trusted", remote: "10.1.2.3:1234", xff: []string{"10.0.0.1, 10.0.0.2"}, want: "10.0.0.1"},
		{name: "several fields", remote: "10.1.2.3:1234", xff: []string{"1.1.1.1, 198.51.100.7", "203.0.113.9", "10.0.0.5"}, want: "198.51.100.7"},
		{name: "several fields, client in the first", remote: "10.1.2.3:1234", xff: []string{"198.51.100.7", "10.0.0.5"}, want: "198.51.100.7"},
		{name: "no spaces", remote: "10.1.2.3:1234", xff: []string{"1.1.1.1,198.51.100.7,10.0.0.5"}, want: "198.51.100.7"},
		{name: "tabs and spaces", remote: "10.1.2.3:1234", xff: []string{" 1.1.1.1 ,\t198.51.100.7 \t, 10.0.0.5 "}, want: "198.51.100.7"},
		{name: "empty entries skipped", remote: "10.1.2.3:1234", xff: []string{"198.51.100.7,, 10.0.0.5,"}, want: "198.51.100.7"},
		{name: "IPv4 with port", remote: "10.1.2.3:1234", xff: []string{"198.51.100.7:51000"}, want: "198.51.100.7"},
		{name: "IPv6", remote: "10.1.2.3:1234", xff: []string{"2001:db8::7"}, want: "2001:db8::7"},
		{name: "IPv6 in brackets", remote: "10.1.2.3:1234", xff: []string{"[2001:db8::7]"}, want: "2001:db8::7"},
		{name: "IPv6 with port", remote: "10.1.2.3:1234", xff: []string{"[2001:db8::7]:51000"}, want: "2001:db8::7"},
		{name: "IPv4-mapped IPv6", remote: "10.1.2.3:1234", xff: []string{"::ffff:198.51.100.7"}, want: "198.51.100.7"},
		{name: "trusted IPv6 proxy", remote: "[2001:db8:ffff::1]:443", xff: []string{"198.51.100.7, 2001:db8:ffff::2"}, want: "198.51.100.7"},
		{name: "IPv4-mapped trusted peer", remote: "[::ffff:10.1.2.3]:1234", xff: []string{"198.51.100.7"}, want: "198.51.100.7"},
		{name: "garbage next to the proxy", remote: "10.1.2.3:1234", xff: []string{"198.51.100.7, unknown"}, want: "10.1.2.3"},
		{name: "garbage after a trusted hop", remote: "10.1.2.3:1234", xff: []string{"198.51.100.7, bogus, 10.0.0.5"}, want: "10.0.0.5"},
		{name: "garbage left of the client", remote: "10.1.2.3:1234", xff: []string{"bogus, 198.51.100.7"}, want: "198.51.100.7"},
		{name: "hostname", remote: "10.1.2.3:1234", xff: []string{"client.example"}, want: "10.1.2.3"},
		// Ambiguous: read as an address, as a proxy that writes IPv6 with a
		// port would put it in brackets.
		{name: "IPv6 with port, no brackets", remote: "10.1.2.3:1234", xff: []string{"2001:db8::7:443"}, want: "2001:db8::7:443"},
		{name: "IPv6 with a port too big for a group", remote: "10.1.2.3:1234", xff: []string{"2001:db8::7:51000"}, want: "10.1.2.3"},
		{name: "IPv4 in brackets", remote: "10.1.2.3:1234", xff: []string{"[198.51.100.7]"}, want: "10.1.2.3"},
		{name: "IPv4 in brackets with port", remote: "10.1.2.3:1234", xff: []string{"[198.51.100.7]:80"}, want: "10.1.2.3"},
		{name: "zone", remote: "10.1.2.3:1234", xff: []string{"fe80::1%eth0"}, want: "10.1.2.3"},
		{name: "unclosed bracket", remote: "10.1.2.3:1234", xff: []string{"[2001:db8::7"}, want: "10.1.2.3"},
		{name: "quoted", remote: "10.1.2.3:1234", xff: []string{`"198.51.100.7"`}, want: "10.1.2.3"},
		{name: "port out of range", remote: "10.1.2.3:1234", xff: []string{"198.51.100.7:70000"}, want: "10.1.2.3"},
		{name: "bad RemoteAddr", remote: "pipe", xff: []string{"198.51.100.7"}, want: "invalid IP"},
		{name: "RemoteAddr without port", remote: "10.1.2.3", xff: []string{"198.51.100.7"}, want: "198.51.100.7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := httptest.NewRequest("GET", "/", nil)
			r.RemoteAddr = tt.remote
			for _, v := range tt.xff {
				r.Header.Add("X-Forwarded-For", v)
			}
			if got := FromRequest(r, testTrusted); got.String() != tt.want {
				t.Errorf("FromRequest = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestFromRequestNoTrusted(t *testing.T) {
	r := httptest.NewRequest("GET", "/", nil)
	r.RemoteAddr = "10.1.2.3:1234"
	r.Header.Set("X-Forwarded-For", "198.51.100.7")
	if got := FromRequest(r, nil); got != netip.MustParseAddr("10.1.2.3") {
		t.Errorf("FromRequest with nothing trusted = %s, want the peer", got)
	}
}
