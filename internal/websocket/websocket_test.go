// SPDX-License-Identifier: Apache-2.0

package websocket

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	gorilla "github.com/gorilla/websocket"
)

// serve runs handler for every WebSocket connection of a gorilla/websocket
// server, the connection server's library, and returns its ws:// URL and,
// when secure, a dialer that trusts it.
func serve(t *testing.T, secure bool, handler func(*gorilla.Conn)) (string, *Dialer) {
	t.Helper()
	up := gorilla.Upgrader{Subprotocols: []string{"tether.v1"}}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, err := up.Upgrade(w, r, nil)
		if err != nil {
			return
		}
		defer c.Close()
		handler(c)
	})
	d := &Dialer{Subprotocols: []string{"tether.v1"}, HandshakeTimeout: 10 * time.Second}
	var srv *httptest.Server
	if secure {
		srv = httptest.NewTLSServer(h)
		d.TLSClientConfig = &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	} else {
		srv = httptest.NewServer(h)
	}
	t.Cleanup(srv.Close)
	return "ws" + strings.TrimPrefix(srv.URL, "http"), d
}

func dial(t *testing.T, url string, d *Dialer) *Conn {
	t.Helper()
	c, _, err := d.DialContext(context.Background(), url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	return c
}

// echo sends back every message as it came.
func echo(c *gorilla.Conn) {
	for {
		typ, p, err := c.ReadMessage()
		if err != nil {
			return
		}
		if err := c.WriteMessage(typ, p); err != nil {
			return
		}
	}
}

func TestEcho(t *testing.T) {
	sizes := []int{0, 1, 125, 126, 65535, 65536, 300 << 10}
	for _, secure := range []bool{false, true} {
		url, d := serve(t, secure, echo)
		c := dial(t, url, d)
		if c.Subprotocol() != "tether.v1" {
			t.Errorf("subprotocol %q, want tether.v1", c.Subprotocol())
		}
		for _, n := range sizes {
			for _, typ := range []int{TextMessage, BinaryMessage} {
				msg := bytes.Repeat([]byte("x"), n)
				if err := c.WriteMessage(typ, msg); err != nil {
					t.Fatalf("write %d bytes: %v", n, err)
				}
				gotType, got, err := c.ReadMessage()
				if err != nil || gotType != typ || !bytes.Equal(got, msg) {
					t.Fatalf("secure=%v: echo of %d bytes of type %d: got %d bytes of type %d, %v", secure, n, typ, len(got), gotType, err)
				}
			}
		}
	}
}

func TestControlFrames(t *testing.T) {
	tests := []struct {
		name string
		// server acts on its side of the connection.
		server func(*gorilla.Conn)
		// client sets the client's handlers before it reads.
		client func(c *Conn, seen chan<- string)
		want   []string // what the handlers saw, in order
		// wantErr is what ReadMessage ends with.
		wantErr error
	}{
		{
			name: "the default ping handler answers with a pong",
			server: func(c *gorilla.Conn) {
				pong := make(chan string, 1)
				c.SetPongHandler(func(s string) error { pong <- s; return nil })
				c.WriteControl(gorilla.PingMessage, []byte("hb"), time.Now().Add(time.Second))
				go c.ReadMessage()
				c.WriteMessage(gorilla.TextMessage, []byte("pong:"+<-pong))
				c.WriteControl(gorilla.CloseMessage, gorilla.FormatCloseMessage(gorilla.CloseNormalClosure, "bye"), time.Now().Add(time.Second))
			},
			want:    []string{"message pong:hb"},
			wantErr: &CloseError{Code: CloseNormalClosure, Text: "bye"},
		},
		{
			name: "handlers see pings, pongs and the close frame",
			server: func(c *gorilla.Conn) {
				c.WriteControl(gorilla.PingMessage, []byte("a"), time.Now().Add(time.Second))
				c.WriteControl(gorilla.PongMessage, []byte("b"), time.Now().Add(time.Second))
				c.WriteControl(gorilla.CloseMessage, gorilla.FormatCloseMessage(gorilla.CloseGoingAway, "node draining"), time.Now().Add(time.Second))
			},
			client: func(c *Conn, seen chan<- string) {
				c.SetPingHandler(func(s string) error { seen <- "ping " + s; return nil })
				c.SetPongHandler(func(s string) error { seen <- "pong " + s; return nil })
				c.SetCloseHandler(func(code int, text string) error { seen <- "close " + text; return nil })
			},
			want:    []string{"ping a", "pong b", "close node draining"},
			wantErr: &CloseError{Code: CloseGoingAway, Text: "node draining"},
		},
		{
			name: "a close frame without a code",
			server: func(c *gorilla.Conn) {
				c.WriteControl(gorilla.CloseMessage, nil, time.Now().Add(time.Second))
			},
			wantErr: &CloseError{Code: CloseNoStatusReceived},
		},
		{
			name: "a message over the read limit",
			server: func(c *gorilla.Conn) {
				c.WriteMessage(gorilla.TextMessage, make([]byte, 101))
			},
			client:  func(c *Conn, _ chan<- string) { c.SetReadLimit(100) },
			wantErr: ErrReadLimit,
		},
		{
			name: "a fragmented message",
			server: func(c *gorilla.Conn) {
				w, _ := c.NextWriter(gorilla.BinaryMessage)
				w.Write([]byte("one,"))
				c.WriteControl(gorilla.PingMessage, nil, time.Now().Add(time.Second))
				w.Write(bytes.Repeat([]byte("two,"), 2000)) // past gorilla's buffer: a second frame
				w.Close()
				c.WriteControl(gorilla.CloseMessage, gorilla.FormatCloseMessage(gorilla.CloseNormalClosure, ""), time.Now().Add(time.Second))
				for { // the pong and the close frame's echo
					if _, _, err := c.ReadMessage(); err != nil {
						return
					}
				}
			},
			client:  func(c *Conn, _ chan<- string) { c.SetReadLimit(10000) },
			want:    []string{"message one,two,two,two,two,"}, // the first 20 bytes
			wantErr: &CloseError{Code: CloseNormalClosure},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			url, d := serve(t, false, tt.server)
			c := dial(t, url, d)
			seen := make(chan string, 10)
			if tt.client != nil {
				tt.client(c, seen)
			}
			var got []string
			var err error
			for {
				var p []byte
				if _, p, err = c.ReadMessage(); err != nil {
					break
				}
				msg := string(p)
				if len(msg) > 20 {
					msg = msg[:20]
				}
				got = append(got, "message "+msg)
			}
			close(seen)
			var handled []string
			for s := range seen {
				handled = append(handled, s)
			}
			if tt.client != nil && len(handled) > 0 {
				got = append(handled, got...)
			}
			if strings.Join(got, "|") != strings.Join(tt.want, "|") {
				t.Errorf("saw %q, want %q", got, tt.want)
			}
			var ce, wantCE *CloseError
			switch {
			case errors.As(tt.wantErr, &wantCE):
				if !errors.As(err, &ce) || *ce != *wantCE {
					t.Errorf("ended with %v, want %v", err, tt.wantErr)
				}
			case !errors.Is(err, tt.wantErr):
				t.Errorf("ended with %v, want %v", err, tt.wantErr)
			}
			if _, _, again := c.ReadMessage(); again != err {
				t.Errorf("a read after the error got %v, want the same error", again)
			}
		})
	}
}

// TestCloseSent: after the client's close frame, writes fail and the
// server sees the code.
func TestCloseSent(t *testing.T) {
	got := make(chan error, 1)
	url, d := serve(t, false, func(c *gorilla.Conn) {
		_, _, err := c.ReadMessage()
		got <- err
	})
	c := dial(t, url, d)
	if err := c.WriteControl(CloseMessage, FormatCloseMessage(CloseGoingAway, "agent closing"), time.Now().Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteMessage(TextMessage, []byte("late")); err != ErrCloseSent {
		t.Errorf("write after close: %v, want ErrCloseSent", err)
	}
	if err := <-got; !gorilla.IsCloseError(err, gorilla.CloseGoingAway) {
		t.Errorf("server read %v, want close 1001", err)
	}
}

func TestHandshakeFailures(t *testing.T) {
	tests := []struct {
		name       string
		answer     string // the server's whole answer; empty: a real 403 from net/http
		wantStatus string
		wantErr    string
	}{
		{name: "refused", wantStatus: "403 Forbidden", wantErr: "the server answered 403 Forbidden"},
		{name: "wrong accept", answer: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n\r\n", wantStatus: "101 Switching Protocols", wantErr: "wrong Sec-WebSocket-Accept"},
		{name: "not HTTP", answer: "SSH-2.0-OpenSSH_9.6\r\n\r\n", wantErr: "malformed status line"},
		{name: "header too long", answer: "HTTP/1.1 101 OK\r\nX: " + strings.Repeat("y", maxHeaderBytes) + "\r\n\r\n", wantErr: "over 16384 bytes"},
		{name: "cut short", answer: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n", wantErr: "EOF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var url string
			if tt.answer == "" {
				srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
					http.Error(w, "no", http.StatusForbidden)
				}))
				defer srv.Close()
				url = "ws" + strings.TrimPrefix(srv.URL, "http")
			} else {
				ln, err := net.Listen("tcp", "127.0.0.1:0")
				if err != nil {
					t.Fatal(err)
				}
				defer ln.Close()
				go func() {
					nc, err := ln.Accept()
					if err != nil {
						return
					}
					defer nc.Close()
					r := bufio.NewReader(nc)
					for { // the request, up to its blank line
						l, err := r.ReadString('\n')
						if err != nil || l == "\r\n" {
							break
						}
					}
					nc.Write([]byte(tt.answer))
				}()
				url = "ws://" + ln.Addr().String() + "/device"
			}
			d := &Dialer{HandshakeTimeout: 10 * time.Second}
			c, resp, err := d.DialContext(context.Background(), url, nil)
			if err == nil {
				c.Close()
				t.Fatal("dial succeeded")
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("error %q, want it to contain %q", err, tt.wantErr)
			}
			if tt.wantStatus != "" && (resp == nil || resp.Status != tt.wantStatus) {
				t.Errorf("response %+v, want status %q", resp, tt.wantStatus)
			}
		})
	}
}

func TestDialBadURL(t *testing.T) {
	for _, url := range []string{"http://example.test/", "ws://user@example.test/", "::"} {
		if _, _, err := (&Dialer{}).DialContext(context.Background(), url, nil); err == nil {
			t.Errorf("dial %q succeeded", url)
		}
	}
}

// FuzzReadMessage feeds arbitrary bytes to the reader as the server's
// frames: it must end with an error, never panic, and never return a
// message over the read limit.
func FuzzReadMessage(f *testing.F) {
	f.Add([]byte("\x81\x05hello"))
	f.Add([]byte("\x01\x02he\x89\x00\x80\x01y\x88\x02\x03\xe9"))
	f.Add([]byte("\x82\x7e\x00\x80" + strings.Repeat("z", 128)))
	f.Add([]byte("\x82\x7f\xff\xff\xff\xff\xff\xff\xff\xff"))
	f.Add([]byte("\x81\x85abcd\x00"))
	f.Add([]byte("\x88\x01x"))
	f.Fuzz(func(t *testing.T, data []byte) {
		client, server := net.Pipe()
		go func() {
			server.Write(data)
			server.Close()
		}()
		c := newConn(client, bufio.NewReaderSize(client, readBufferSize), "")
		defer c.Close()
		c.SetReadLimit(1000)
		for {
			_, p, err := c.ReadMessage()
			if err != nil {
				return
			}
			if len(p) > 1000 {
				t.Fatalf("a message of %d bytes, over the limit", len(p))
			}
		}
	})
}

// FuzzReadResponse feeds arbitrary bytes to the handshake's answer
// reader: it must not panic and must keep to maxHeaderBytes.
func FuzzReadResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno\n"))
	f.Add([]byte("HTTP/1.0 200\r\nbad header\r\n\r\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		src := bytes.NewReader(data)
		r := bufio.NewReaderSize(src, readBufferSize)
		resp, err := readResponse(r)
		if err != nil {
			return
		}
		read := len(data) - src.Len() - r.Buffered()
		if read > maxHeaderBytes {
			t.Fatalf("read %d bytes of header, over %d", read, maxHeaderBytes)
		}
		if resp.StatusCode < 0 || resp.StatusCode > 999 {
			t.Fatalf("status code %d", resp.StatusCode)
		}
	})
}
