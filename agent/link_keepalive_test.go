package agent

import (
	"context"
	"net"
	"syscall"
	"testing"
	"time"
)

// TestLinkDialsWithoutKeepalive checks the socket the link dials: a kernel
// keepalive probe would wake the radio between heartbeats.
func TestLinkDialsWithoutKeepalive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l, err := NewLink(LinkConfig{URL: "ws://" + ln.Addr().String(), Heartbeat: time.Minute, PongWait: time.Minute, MinBackoff: time.Second, MaxBackoff: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		dial func(ctx context.Context, network, addr string) (net.Conn, error)
		want int
	}{
		// Go's default dialer, to show that the check can see keepalive at all.
		{"net.Dialer", (&net.Dialer{}).DialContext, 1},
		{"Link", l.dialer.NetDialContext, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := tc.dial(context.Background(), "tcp", ln.Addr().String())
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
				t.Fatalf("SO_KEEPALIVE = %d on the dialled connection, want %d", got, tc.want)
			}
		})
	}
}
