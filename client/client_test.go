// SPDX-License-Identifier: Apache-2.0

package client

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"tether/internal/testwait"
	"tether/ipc"
	"tether/ipc/ipctest"
	"tether/ipc/socketdoor"
)

const app = "com.example.app"

// door is an agent's socket door over an in-memory backend, with its
// client.
type door struct {
	b      *ipctest.Backend
	socket string
	close  func()
	c      *Client
}

func startDoor(t testing.TB) *door {
	t.Helper()
	return startDoorLogging(t, ipctest.Logger(t))
}

func startDoorLogging(t testing.TB, logger *slog.Logger) *door {
	t.Helper()
	d := &door{b: ipctest.New("push.example.test:443", "device-1"), socket: filepath.Join(t.TempDir(), "tetherd.sock")}
	srv, err := socketdoor.New(socketdoor.Config{Path: d.socket, Backend: d.b, Logger: logger})
	if err != nil {
		t.Fatal(err)
	}
	d.close = ipctest.Serve(t, srv)
	if d.c, err = New(Config{Socket: d.socket}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.c.Register(context.Background(), app, "123"); err != nil {
		t.Fatal(err)
	}
	return d
}

// TestListenerEnds: how a listener ends tells the app what to do next.
func TestListenerEnds(t *testing.T) {
	tests := []struct {
		name string
		end  func(t *testing.T, d *door)
		want error
	}{
		{"the agent stops", func(t *testing.T, d *door) { d.close() }, ErrDisconnected},
		{"another listener takes over", func(t *testing.T, d *door) {
			l, err := d.c.Listen(context.Background(), app)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
		}, ErrReplaced},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := startDoor(t)
			l, err := d.c.Listen(context.Background(), app)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			tt.end(t, d)
			if _, err := l.Next(context.Background()); !errors.Is(err, tt.want) {
				t.Errorf("Next: %v, want %v", err, tt.want)
			}
		})
	}
}

func TestUnreachable(t *testing.T) {
	c, err := New(Config{Socket: filepath.Join(t.TempDir(), "none.sock")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Status(context.Background()); !errors.Is(err, ErrUnreachable) {
		t.Errorf("Status: %v, want ErrUnreachable", err)
	}
	if _, err := c.Listen(context.Background(), app); !errors.Is(err, ErrUnreachable) {
		t.Errorf("Listen: %v, want ErrUnreachable", err)
	}
	if _, err := New(Config{Bus: "sytem"}); err == nil {
		t.Error("New took a bus that is none")
	}
}

// TestNextAfterItsContextEnds: a Next cut short by its context leaves the
// listener working, and a refused ack tells why.
func TestNextAfterItsContextEnds(t *testing.T) {
	d := startDoor(t)
	l, err := d.c.Listen(context.Background(), app)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := l.Next(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("Next with an ended context: %v", err)
	}
	d.b.Push(ipc.Message{ID: "m1", App: app, From: "123"})
	ev, err := l.Next(context.Background())
	if err != nil || ev.Message == nil || ev.Message.ID != "m1" {
		t.Fatalf("Next: %+v, %v; want m1", ev, err)
	}
	if err := l.Ack(context.Background(), "m1"); err != nil {
		t.Fatal(err)
	}
	var refused *AgentError
	if err := l.Ack(context.Background()); !errors.As(err, &refused) || refused.Code != ipc.CodeInvalidArgument {
		t.Errorf("an ack of nothing: %v, want InvalidArgument", err)
	}
	testwait.Until(t, "m1 is acked", 10*time.Second, func() bool { return len(d.b.Acked(app)) == 1 })
}

// TestNextReadsLinesInPieces: an event written in two parts, with a Next
// whose context ends between them.
func TestNextReadsLinesInPieces(t *testing.T) {
	socket := filepath.Join(t.TempDir(), "agent.sock")
	ln, err := net.Listen("unix", socket)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	agentSide := make(chan net.Conn, 1)
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			close(agentSide)
			return
		}
		bufio.NewReader(conn).ReadBytes('\n') // the listen request
		conn.Write([]byte(`{"id":1,"ok":true}` + "\n" + `{"event":"message","message":{"message_id":"m1",`))
		agentSide <- conn
	}()
	c, err := New(Config{Socket: socket})
	if err != nil {
		t.Fatal(err)
	}
	l, err := c.Listen(context.Background(), app)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	conn := <-agentSide
	if conn == nil {
		t.Fatal("no connection")
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := l.Next(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Next before the line is whole: %v", err)
	}
	conn.Write([]byte(`"app":"` + app + `","from":"1","collapse_key":"","data":{}}}` + "\n"))
	ev, err := l.Next(context.Background())
	if err != nil || ev.Message == nil || ev.Message.ID != "m1" {
		t.Errorf("Next: %+v, %v; want m1", ev, err)
	}
}

// FuzzRead: whatever the agent writes, read returns an event, a response
// or an error, and never both.
func FuzzRead(f *testing.F) {
	f.Add([]byte(`{"id":1,"ok":true}` + "\n" + `{"event":"message","message":{"message_id":"m"}}` + "\n"))
	f.Add([]byte(`{"event":""}` + "\n" + `[1]` + "\n" + `{"id":"x","ok":false,"error":{"code":"C","message":"m"}}`))
	f.Add([]byte("\n\n{"))
	f.Fuzz(func(t *testing.T, data []byte) {
		pr, pw, err := os.Pipe()
		if err != nil {
			t.Fatal(err)
		}
		defer pr.Close()
		defer pw.Close()
		c := &socketConn{nc: pr, r: bufio.NewReader(bytes.NewReader(data))}
		for range bytes.Count(data, []byte("\n")) + 1 {
			resp, ev, err := c.read(context.Background())
			if (resp != nil) && (ev != nil) || err != nil && (resp != nil || ev != nil) {
				t.Fatalf("read gave %+v, %+v, %v", resp, ev, err)
			}
			if errors.Is(err, ErrDisconnected) {
				return
			}
		}
	})
}

// BenchmarkListenAck: messages taken and acked one at a time through the
// socket door, as tetherctl listen does (the backend is in memory, so this
// is the cost of the client and the door, not of the agent's disk).
func BenchmarkListenAck(b *testing.B) {
	d := startDoorLogging(b, slog.New(slog.DiscardHandler))
	ctx := context.Background()
	l, err := d.c.Listen(ctx, app)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	for i := range b.N {
		d.b.Push(ipc.Message{ID: strconv.Itoa(i), App: app, From: "123", Data: map[string]string{"temp": "21"}})
	}
	b.ResetTimer()
	for range b.N {
		ev, err := l.Next(ctx)
		if err != nil || ev.Message == nil {
			b.Fatalf("Next: %+v, %v", ev, err)
		}
		if err := l.Ack(ctx, ev.Message.ID); err != nil {
			b.Fatal(err)
		}
	}
}
