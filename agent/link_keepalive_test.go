// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"net"
	"testing"
	"time"

	"tether/internal/sockopt"
)

// TestLinkDialsWithoutKeepalive checks the socket the link dials: a kernel
// keepalive probe would wake the radio between heartbeats.
func TestLinkDialsWithoutKeepalive(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	l, err := NewLink(LinkConfig{URLs: []string{"ws://" + ln.Addr().String()}, Heartbeat: time.Minute, PongWait: time.Minute, MinBackoff: time.Second, MaxBackoff: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		dial func(ctx context.Context, network, addr string) (net.Conn, error)
		want bool
	}{
		// Go's default dialer, to show that the check can see keepalive at all.
		{"net.Dialer", (&net.Dialer{}).DialContext, true},
		{"Link", l.dialer.NetDialContext, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			conn, err := tc.dial(context.Background(), "tcp", ln.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			got, err := sockopt.KeepAlive(conn)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Fatalf("SO_KEEPALIVE on the dialled connection is %v, want %v", got, tc.want)
			}
		})
	}
}
