// SPDX-License-Identifier: Apache-2.0

package faultproxy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"
)

// quiet is how long a test watches a side to see that nothing arrives.
const quiet = 300 * time.Millisecond

// upstream accepts the proxy's connections and hands them to the test.
func upstream(t *testing.T) (string, <-chan *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	conns := make(chan *net.TCPConn, 16)
	var (
		accepting sync.WaitGroup
		mu        sync.Mutex
		all       []net.Conn
	)
	accepting.Go(func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			all = append(all, c)
			mu.Unlock()
			conns <- c.(*net.TCPConn)
		}
	})
	t.Cleanup(func() {
		ln.Close()
		accepting.Wait()
		for _, c := range all {
			c.Close()
		}
	})
	return ln.Addr().String(), conns
}

// start runs a proxy to addr; the test fails if Serve does not return,
// with every connection's goroutines ended, once the proxy is closed.
func start(t *testing.T, addr string) *Proxy {
	t.Helper()
	p, err := New(Config{Upstream: addr})
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- p.Serve(context.Background()) }()
	t.Cleanup(func() {
		p.Close()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return within 10 s of Close")
		}
	})
	return p
}

func dial(t *testing.T, p *Proxy) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// accepted waits for the proxy's next connection to the upstream.
func accepted(t *testing.T, conns <-chan *net.TCPConn) *net.TCPConn {
	t.Helper()
	select {
	case c := <-conns:
		return c
	case <-time.After(10 * time.Second):
		t.Fatal("the proxy did not connect to the upstream within 10 s")
		return nil
	}
}

// pair dials through p and returns both ends of the proxied connection.
func pair(t *testing.T, p *Proxy, conns <-chan *net.TCPConn) (client, server *net.TCPConn) {
	t.Helper()
	client = dial(t, p)
	return client, accepted(t, conns)
}

func set(t *testing.T, p *Proxy, f Faults) {
	t.Helper()
	if err := p.Set(f); err != nil {
		t.Fatal(err)
	}
}

func write(t *testing.T, c net.Conn, b []byte) {
	t.Helper()
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write(b); err != nil {
		t.Fatalf("write: %v", err)
	}
}

func readN(t *testing.T, c net.Conn, n int) []byte {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	b := make([]byte, n)
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	return b
}

// expectEnd reads c until it ends and returns the error it ended with
// (io.EOF for an orderly close).
func expectEnd(t *testing.T, c net.Conn) error {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := io.Copy(io.Discard, c)
	if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatal("the connection did not end within 10 s")
	}
	if err == nil {
		err = io.EOF
	}
	return err
}

// expectQuiet checks that nothing, not even the end of the connection,
// comes out of c for a while.
func expectQuiet(t *testing.T, c net.Conn, side string) {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(quiet))
	n, err := c.Read(make([]byte, 1))
	if n > 0 || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the %s got %d bytes and %v through a blackhole, want nothing", side, n, err)
	}
}

func TestForwardsBothWaysAndHalfCloses(t *testing.T) {
	addr, conns := upstream(t)
	p := start(t, addr)
	client, server := pair(t, p, conns)

	write(t, client, []byte("hello"))
	if got := readN(t, server, 5); string(got) != "hello" {
		t.Fatalf("upstream got %q", got)
	}
	write(t, server, []byte("welcome"))
	if got := readN(t, client, 7); string(got) != "welcome" {
		t.Fatalf("client got %q", got)
	}
	// A half close goes through, and the other direction goes on.
	client.CloseWrite()
	if err := expectEnd(t, server); err != io.EOF {
		t.Fatalf("upstream read %v after the client's half close, want EOF", err)
	}
	write(t, server, []byte("bye"))
	if got := readN(t, client, 3); string(got) != "bye" {
		t.Fatalf("client got %q after its half close", got)
	}
	server.Close()
	if err := expectEnd(t, client); err != io.EOF {
		t.Fatalf("client read %v after the upstream closed, want EOF", err)
	}
}

func TestResetAbortsEveryConnection(t *testing.T) {
	addr, conns := upstream(t)
	p := start(t, addr)
	c1, s1 := pair(t, p, conns)
	c2, s2 := pair(t, p, conns)
	// Both links are forwarding before the reset.
	for _, c := range []*net.TCPConn{c1, c2} {
		write(t, c, []byte("x"))
	}
	readN(t, s1, 1)
	readN(t, s2, 1)

	if n := p.Reset(); n != 2 {
		t.Fatalf("Reset reset %d connections, want 2", n)
	}
	for side, c := range map[string]*net.TCPConn{"client 1": c1, "client 2": c2, "upstream 1": s1, "upstream 2": s2} {
		if err := expectEnd(t, c); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("%s read %v, want a connection reset", side, err)
		}
	}
	// Later connections are not affected.
	c3, s3 := pair(t, p, conns)
	write(t, c3, []byte("again"))
	if got := readN(t, s3, 5); string(got) != "again" {
		t.Fatalf("after the reset the upstream got %q", got)
	}
}

func TestBlackholeHoldsTrafficClosesAndNewConnections(t *testing.T) {
	addr, conns := upstream(t)
	p := start(t, addr)
	client, server := pair(t, p, conns)
	write(t, client, []byte("ping"))
	readN(t, server, 4)

	set(t, p, Faults{Blackhole: true})
	write(t, client, []byte("up"))
	write(t, server, []byte("down"))
	server.CloseWrite() // the close is held too
	expectQuiet(t, server, "upstream")
	expectQuiet(t, client, "client")
	// A new connection is accepted and left hanging, undialled.
	late := dial(t, p)
	select {
	case <-conns:
		t.Fatal("the proxy dialled the upstream for a new connection during a blackhole")
	case <-time.After(quiet):
	}

	set(t, p, Faults{})
	if got := readN(t, server, 2); string(got) != "up" {
		t.Fatalf("after the blackhole the upstream got %q, want up", got)
	}
	if got := readN(t, client, 4); string(got) != "down" {
		t.Fatalf("after the blackhole the client got %q, want down", got)
	}
	if err := expectEnd(t, client); err != io.EOF {
		t.Fatalf("after the blackhole the client read %v, want the held EOF", err)
	}
	lateServer := accepted(t, conns)
	write(t, late, []byte("late"))
	if got := readN(t, lateServer, 4); string(got) != "late" {
		t.Fatalf("the held connection carried %q, want late", got)
	}
}

// TestBlackholeCanStartMidChunk blackholes a slow transfer in the middle:
// the rest of it stops until the blackhole lifts.
func TestBlackholeCanStartMidChunk(t *testing.T) {
	addr, conns := upstream(t)
	p := start(t, addr)
	client, server := pair(t, p, conns)
	set(t, p, Faults{Bandwidth: 1000})
	want := bytes.Repeat([]byte("0123456789"), 100)
	write(t, client, want)
	got := readN(t, server, 100) // the first tenth of a second's worth
	set(t, p, Faults{Blackhole: true, Bandwidth: 1000})
	// What was written before the blackhole took hold may still come;
	// then nothing does.
	server.SetReadDeadline(time.Now().Add(quiet))
	n, _ := io.ReadFull(server, make([]byte, len(want)))
	if n > 200 {
		t.Fatalf("%d bytes came through a blackhole started 100 bytes into a 1000 B/s transfer", n)
	}
	got = append(got, want[100:100+n]...)
	expectQuiet(t, server, "upstream")
	set(t, p, Faults{})
	got = append(got, readN(t, server, len(want)-len(got))...)
	if !bytes.Equal(got, want) {
		t.Fatal("the transfer came out changed")
	}
}

func TestLatencyDelaysEachChunkInOrder(t *testing.T) {
	const latency = 150 * time.Millisecond
	addr, conns := upstream(t)
	p := start(t, addr)
	client, server := pair(t, p, conns)
	set(t, p, Faults{Latency: latency})

	for _, dir := range []struct {
		name     string
		from, to *net.TCPConn
	}{{"client to upstream", client, server}, {"upstream to client", server, client}} {
		t.Run(dir.name, func(t *testing.T) {
			for i := range 3 {
				sent := time.Now()
				write(t, dir.from, []byte{byte(i)})
				readN(t, dir.to, 1)
				if took := time.Since(sent); took < latency {
					t.Fatalf("chunk %d took %v, want at least the latency %v", i, took, latency)
				}
			}
			// Many chunks in quick succession keep their order.
			var want bytes.Buffer
			for i := range 50 {
				chunk := fmt.Appendf(nil, "<%d>", i)
				want.Write(chunk)
				write(t, dir.from, chunk)
				time.Sleep(time.Millisecond)
			}
			if got := readN(t, dir.to, want.Len()); !bytes.Equal(got, want.Bytes()) {
				t.Fatalf("got %q, want %q", got, want.Bytes())
			}
		})
	}
}

func TestBandwidthLimitsEachDirection(t *testing.T) {
	const rate, size = 16 << 10, 48 << 10
	addr, conns := upstream(t)
	p := start(t, addr)
	client, server := pair(t, p, conns)
	set(t, p, Faults{Bandwidth: rate})

	// Both directions at once: each is limited on its own.
	want := make([]byte, size)
	for i := range want {
		want[i] = byte(i * 7)
	}
	began := time.Now()
	var wg sync.WaitGroup
	for _, c := range []*net.TCPConn{client, server} {
		wg.Go(func() { c.Write(want) })
	}
	for side, c := range map[string]*net.TCPConn{"upstream": server, "client": client} {
		if got := readN(t, c, size); !bytes.Equal(got, want) {
			t.Errorf("the %s got other bytes than were sent", side)
		}
	}
	wg.Wait()
	// The first pace slice goes at once; the rest take their time.
	if least := time.Duration(size-rate/paceSlices) * time.Second / rate; time.Since(began) < least {
		t.Fatalf("%d bytes each way at %d B/s took %v, want at least %v", size, rate, time.Since(began), least)
	}

	set(t, p, Faults{})
	write(t, client, want)
	readN(t, server, size)
}

func TestUnreachableUpstreamResetsTheClient(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	p := start(t, addr)
	// The reset may come before the client's connect has returned.
	c, err := net.DialTimeout("tcp", p.Addr(), 5*time.Second)
	if err == nil {
		defer c.Close()
		err = expectEnd(t, c)
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Fatalf("the client got %v, want a connection reset", err)
	}
}

func TestServeStopsWithItsContext(t *testing.T) {
	addr, conns := upstream(t)
	p, err := New(Config{Upstream: addr})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- p.Serve(ctx) }()
	client, server := pair(t, p, conns)
	set(t, p, Faults{Blackhole: true})
	hanging := dial(t, p)
	write(t, client, []byte("held"))

	cancel()
	select {
	case err := <-served:
		if err != nil {
			t.Fatalf("Serve returned %v, want nil", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return within 10 s of its context ending")
	}
	// Serve returned, so every connection's goroutines have ended, and
	// each side was reset.
	for side, c := range map[string]*net.TCPConn{"client": client, "upstream": server, "hanging client": hanging} {
		if err := expectEnd(t, c); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("the %s read %v, want a connection reset", side, err)
		}
	}
	if _, err := net.DialTimeout("tcp", p.Addr(), time.Second); err == nil {
		t.Error("the proxy still accepts connections after Serve returned")
	}
}

func TestConfigAndFaultsAreChecked(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Error("New without an upstream succeeded")
	}
	p, err := New(Config{Upstream: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, f := range []Faults{{Latency: -time.Second}, {Bandwidth: -1}} {
		if err := p.Set(f); err == nil {
			t.Errorf("Set(%+v) succeeded", f)
		}
	}
	if got := p.Faults(); got != (Faults{}) {
		t.Errorf("refused faults were applied: %+v", got)
	}
}
