package server

import (
	"net"
	"syscall"
	"testing"
)

// TestListenTCPLeavesKeepaliveOff checks the socket of an accepted
// connection: a kernel keepalive probe would wake an idle device's radio.
func TestListenTCPLeavesKeepaliveOff(t *testing.T) {
	for _, tc := range []struct {
		name   string
		listen func(string) (net.Listener, error)
		want   int
	}{
		// The default, to show that the check can see keepalive at all.
		{"net.Listen", func(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }, 1},
		{"listenTCP", listenTCP, 0},
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
			raw, err := conn.(*net.TCPConn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var got int
			var sockErr error
			if err := raw.Control(func(fd uintptr) {
				got, sockErr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
			}); err != nil || sockErr != nil {
				t.Fatal(err, sockErr)
			}
			if got != tc.want {
				t.Fatalf("SO_KEEPALIVE = %d on an accepted connection, want %d", got, tc.want)
			}
		})
	}
}
