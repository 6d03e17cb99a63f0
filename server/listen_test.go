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
