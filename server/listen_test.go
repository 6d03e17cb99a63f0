// SPDX-License-Identifier: Apache-2.0

package server

import (
	"net"
	"testing"

	"tether/internal/sockopt"
)

// TestListenTCPLeavesKeepaliveOff checks the socket of an accepted
// connection: a kernel keepalive probe would wake an idle device's radio.
func TestListenTCPLeavesKeepaliveOff(t *testing.T) {
	for _, tc := range []struct {
		name   string
		listen func(string) (net.Listener, error)
		want   bool
	}{
		// The default, to show that the check can see keepalive at all.
		{"net.Listen", func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }, true},
		{"listenTCP", listenTCP, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ln, err := tc.listen("127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			defer ln.Close()
			client, err := net.Dial("tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer client.Close()
			conn, err := ln.Accept()
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			got, err := sockopt.KeepAlive(conn)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("SO_KEEPALIVE on an accepted connection is %v, want %v", got, tc.want)
			}
		})
	}
}

func TestPublicOrigin(t *testing.T) {
	for _, tc := range []struct{ url, want string }{
		{"", ""},
		{"wss://push.example.com", "https://push.example.com"},
		{"ws://127.0.0.1:8080", "http://127.0.0.1:8080"},
		{"https://push.example.com:8443/", "https://push.example.com:8443"},
		{"http://[2001:db8::1]:80", "http://[2001:db8::1]:80"},
	} {
		s, err := New(Config{DataDir: t.TempDir(), OpenEnrollment: true, PublicURL: tc.url})
		if err != nil {
			t.Fatalf("New with public URL %q: %v", tc.url, err)
		}
		if got := s.PublicOrigin(); got != tc.want {
			t.Errorf("PublicOrigin of %q = %q, want %q", tc.url, got, tc.want)
		}
		s.Close()
	}
	if _, err := New(Config{DataDir: t.TempDir(), OpenEnrollment: true, PublicURL: "ftp://push.example.com"}); err == nil {
		t.Error("New took an ftp:// public URL")
	}
}
