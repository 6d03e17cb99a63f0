// SPDX-License-Identifier: Apache-2.0

package unixconn

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDial(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name    string
		listen  string // a socket to listen on; "" for none
		dial    string
		ctx     func() context.Context
		wantErr string // the error's start; "" for success
	}{
		{name: "a path", listen: filepath.Join(dir, "a.sock"), dial: filepath.Join(dir, "a.sock")},
		{name: "the abstract namespace", listen: "@" + dir + "/abstract", dial: "@" + dir + "/abstract"},
		{name: "no socket", dial: filepath.Join(dir, "none.sock"), wantErr: "dial unix " + filepath.Join(dir, "none.sock") + ": connect: no such file or directory"},
		{name: "not a socket", dial: dir, wantErr: "dial unix " + dir + ": connect: connection refused"},
		{
			name: "an ended context", listen: filepath.Join(dir, "c.sock"), dial: filepath.Join(dir, "c.sock"),
			ctx: func() context.Context {
				ctx, cancel := context.WithCancel(context.Background())
				cancel()
				return ctx
			},
			wantErr: "dial unix " + filepath.Join(dir, "c.sock") + ": context canceled",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			accepted := make(chan net.Conn, 1)
			if tt.listen != "" {
				ln, err := net.Listen("unix", tt.listen)
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				go func() {
					c, _ := ln.Accept()
					accepted <- c
				}()
			}
			ctx := context.Background()
			if tt.ctx != nil {
				ctx = tt.ctx()
			}
			f, err := Dial(ctx, tt.dial)
			if tt.wantErr != "" {
				if err == nil || !strings.HasPrefix(err.Error(), tt.wantErr) {
					t.Fatalf("Dial: %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			peer := <-accepted
			defer peer.Close()
			// Both ways, then a deadline on a read with nothing to read.
			if _, err := peer.Write([]byte("ping")); err != nil {
				t.Fatal(err)
			}
			buf := make([]byte, 4)
			if _, err := io.ReadFull(f, buf); err != nil || string(buf) != "ping" {
				t.Fatalf("read %q, %v", buf, err)
			}
			if _, err := f.Write([]byte("pong")); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(peer, buf); err != nil || string(buf) != "pong" {
				t.Fatalf("peer read %q, %v", buf, err)
			}
			if err := f.SetReadDeadline(time.Unix(1, 0)); err != nil {
				t.Fatalf("SetReadDeadline: %v", err)
			}
			if _, err := f.Read(buf); !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
				t.Errorf("read past its deadline: %v", err)
			}
		})
	}
}

func isTimeout(err error) bool {
	var te interface{ Timeout() bool }
	return errors.As(err, &te) && te.Timeout()
}
