// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"tether/wire"
)

// TestHostDialerTriesEveryAddress dials real listeners on 127.0.0.1 and
// 127.0.0.2 through names a fake resolver knows: the addresses are tried in
// a random order, a dead one costs nothing but its refusal, and a name
// with no live address fails naming each.
func TestHostDialerTriesEveryAddress(t *testing.T) {
	ln1, ln2 := listenPair(t)
	defer ln1.Close()
	defer ln2.Close()
	_, port, _ := net.SplitHostPort(ln1.Addr().String())

	const dials = 64
	for _, tt := range []struct {
		name   string
		addrs  []string
		reach  []string // the addresses that answer, each at least once
		errHas []string // when every dial fails
	}{
		// The same one of two every time: a chance of 2·2^-64.
		{"spread over both", []string{"127.0.0.1", "127.0.0.2"}, []string{"127.0.0.1", "127.0.0.2"}, nil},
		{"a dead address skipped", []string{"127.0.0.3", "127.0.0.1"}, []string{"127.0.0.1"}, nil},
		{"none alive", []string{"127.0.0.3", "127.0.0.4"}, nil, []string{"dial push.test: ", "127.0.0.3:" + port, "127.0.0.4:" + port, "refused"}},
		{"no address", nil, nil, []string{"dial push.test: the name has no address"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d := newHostDialer(&net.Dialer{KeepAlive: -1})
			d.lookup = resolveTo("push.test", tt.addrs...)
			reached := map[string]int{}
			for range dials {
				ctx, cancel := context.WithTimeout(context.Background(), waitLimit)
				conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort("push.test", port))
				cancel()
				if tt.errHas != nil {
					if err == nil {
						t.Fatalf("dialled %s, want a failure", conn.RemoteAddr())
					}
					for _, s := range tt.errHas {
						if !strings.Contains(err.Error(), s) {
							t.Fatalf("error %q does not name %q", err, s)
						}
					}
					return
				}
				if err != nil {
					t.Fatal(err)
				}
				host, _, _ := net.SplitHostPort(conn.RemoteAddr().String())
				reached[host]++
				conn.Close()
			}
			if len(reached) != len(tt.reach) {
				t.Errorf("reached %v, want each of %v", reached, tt.reach)
			}
			for _, addr := range tt.reach {
				if reached[addr] == 0 {
					t.Errorf("%s never answered in %d dials; reached %v", addr, dials, reached)
				}
			}
		})
	}

	t.Run("resolver fails", func(t *testing.T) {
		d := newHostDialer(&net.Dialer{})
		d.lookup = resolveTo("push.test")
		_, err := d.DialContext(context.Background(), "tcp", "elsewhere.test:"+port)
		if dnsErr, ok := errors.AsType[*net.DNSError](err); !ok || !dnsErr.IsNotFound {
			t.Errorf("dialling an unknown name: %v, want the resolver's error", err)
		}
	})
	t.Run("an address is not resolved", func(t *testing.T) {
		d := newHostDialer(&net.Dialer{})
		d.lookup = func(context.Context, string) ([]string, error) { return nil, errors.New("resolver called") }
		conn, err := d.DialContext(context.Background(), "tcp", ln1.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		conn.Close()
	})
}

// TestHostDialerVerifiesTheName: whichever address answers, TLS verifies
// the name of the URL, not the address.
func TestHostDialerVerifiesTheName(t *testing.T) {
	p := newPeer(t)
	node := p.addNode(nil, true) // its certificate is for example.com and 127.0.0.1
	_, port, _ := net.SplitHostPort(node.Listener.Addr().String())
	roots := x509.NewCertPool()
	roots.AddCert(node.Certificate())
	for _, tt := range []struct {
		name string
		ok   bool
	}{
		{"example.com", true},
		{"push.test", false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			url := "wss://" + net.JoinHostPort(tt.name, port) + wire.Path
			l, err := NewLink(LinkConfig{URLs: []string{url}, TLS: &tls.Config{RootCAs: roots}, Heartbeat: time.Minute, PongWait: time.Minute, MinBackoff: time.Second, MaxBackoff: time.Minute})
			if err != nil {
				t.Fatal(err)
			}
			l.hosts.lookup = resolveTo(tt.name, "127.0.0.1")
			conn, _, err := l.dialer.DialContext(context.Background(), url, nil)
			if tt.ok {
				if err != nil {
					t.Fatal(err)
				}
				conn.Close()
				return
			}
			if _, ok := errors.AsType[x509.HostnameError](err); !ok {
				t.Fatalf("dialling %s: %v, want a host name error", url, err)
			}
		})
	}
}
