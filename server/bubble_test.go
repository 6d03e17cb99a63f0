// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"net"
	"sync"
	"testing"
)

// startServerInBubble runs a server over pipes in a fresh data directory
// until the test ends, for a test inside synctest.Test: there the
// server's timers, deadlines and sleeps run on the bubble's clock, which
// jumps ahead whenever every goroutine of the test waits. Real sockets do
// not work there (a goroutine waiting on one is not durably blocked, so
// the clock would never move), hence the pipes; a cluster needs sockets,
// so these servers keep their own store whatever the environment asks.
func startServerInBubble(t *testing.T, mod func(*Config)) *testServer {
	t.Helper()
	return startTestServer(t, t.TempDir(), mod, newPipeListener())
}

// pipeListener is a net.Listener whose connections are net.Pipe pairs:
// DialContext hands one end to Accept and returns the other.
type pipeListener struct {
	conns     chan net.Conn
	closed    chan struct{}
	closeOnce sync.Once
	mu        sync.Mutex
	nextPort  int
}

func newPipeListener() *pipeListener {
	return &pipeListener{conns: make(chan net.Conn), closed: make(chan struct{}), nextPort: 40000}
}

func (l *pipeListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.closed:
		return nil, net.ErrClosed
	}
}

func (l *pipeListener) Close() error {
	l.closeOnce.Do(func() { close(l.closed) })
	return nil
}

// Addr is a TCP address, as the server's own listener has.
func (l *pipeListener) Addr() net.Addr { return &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 443} }

// DialContext connects to the listener; each connection comes from a port
// of its own on 127.0.0.1, as a TCP client's would.
func (l *pipeListener) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	l.mu.Lock()
	l.nextPort++
	peer := &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: l.nextPort}
	l.mu.Unlock()
	server, client := net.Pipe()
	var err error
	select {
	case l.conns <- tcpAddrConn{Conn: server, local: l.Addr(), remote: peer}:
		return tcpAddrConn{Conn: client, local: peer, remote: l.Addr()}, nil
	case <-l.closed:
		err = net.ErrClosed
	case <-ctx.Done():
		err = ctx.Err()
	}
	server.Close()
	client.Close()
	return nil, err
}

// tcpAddrConn is a pipe end with TCP addresses: the server learns a
// client's IP address from its connection.
type tcpAddrConn struct {
	net.Conn
	local, remote net.Addr
}

func (c tcpAddrConn) LocalAddr() net.Addr  { return c.local }
func (c tcpAddrConn) RemoteAddr() net.Addr { return c.remote }
