// SPDX-License-Identifier: Apache-2.0

package websocket

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// testProxy is an HTTP CONNECT proxy on loopback that wants the
// credentials of its URL, if any, and answers as answer says.
type testProxy struct {
	url *url.URL
	// answer is what the proxy writes to a CONNECT with the right
	// credentials in place of "200 OK" and the tunnel; "" for those,
	// "silence" for nothing at all.
	answer string

	mu       sync.Mutex
	connects []string // requests, as method and target
}

func startTestProxy(t *testing.T, user *url.Userinfo, answer string) *testProxy {
	t.Helper()
	p := &testProxy{answer: answer}
	srv := httptest.NewServer(http.HandlerFunc(p.serve))
	t.Cleanup(srv.Close)
	p.url = &url.URL{Scheme: "http", Host: srv.Listener.Addr().String(), User: user}
	return p
}

func (p *testProxy) serve(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	p.connects = append(p.connects, r.Method+" "+r.RequestURI)
	p.mu.Unlock()
	if r.Method != http.MethodConnect {
		http.Error(w, "CONNECT only", http.StatusMethodNotAllowed)
		return
	}
	if p.url.User != nil {
		pw, _ := p.url.User.Password()
		if r.Header.Get("Proxy-Authorization") != "Basic "+base64.StdEncoding.EncodeToString([]byte(p.url.User.Username()+":"+pw)) {
			w.Header().Set("Proxy-Authenticate", `Basic realm="test"`)
			w.WriteHeader(http.StatusProxyAuthRequired)
			return
		}
	}
	c, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return
	}
	defer c.Close()
	switch p.answer {
	case "silence":
		io.Copy(io.Discard, brw) // until the client gives up
		return
	case "":
	default:
		io.WriteString(c, p.answer)
		return
	}
	up, err := net.Dial("tcp", r.Host)
	if err != nil {
		io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\n\r\n")
		return
	}
	defer up.Close()
	io.WriteString(c, "HTTP/1.1 200 OK\r\n\r\n")
	go func() {
		io.Copy(up, brw)
		up.Close()
	}()
	io.Copy(c, up)
}

func (p *testProxy) seen() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.connects...)
}

func TestDialThroughProxy(t *testing.T) {
	alice := url.UserPassword("alice", "s3cret:with%colon")
	tests := []struct {
		name   string
		secure bool
		// proxyUser is what the proxy wants; clientUser what the client
		// gives (the proxy's when nil).
		proxyUser, clientUser *url.Userinfo
		answer                string
		timeout               time.Duration
		// wantErr is what the error says; "" for an echo through the
		// tunnel.
		wantErr      string
		wantRefused  bool
		wantDeadline bool
	}{
		{name: "ws:// without credentials", answer: ""},
		{name: "wss:// with credentials", secure: true, proxyUser: alice},
		{name: "ws:// with credentials", proxyUser: alice},
		{name: "a wrong password", proxyUser: alice, clientUser: url.UserPassword("alice", "wrong"),
			wantErr: "answered CONNECT 127.0.0.1:", wantRefused: true},
		{name: "no credentials where the proxy wants them", proxyUser: alice, clientUser: url.User(""),
			wantErr: "with 407 Proxy Authentication Required", wantRefused: true},
		{name: "forbidden", answer: "HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno",
			wantErr: "with 403 Forbidden", wantRefused: true},
		{name: "not HTTP", answer: "SSH-2.0-OpenSSH\r\n", wantErr: "read the answer to CONNECT"},
		{name: "bytes after the answer", answer: "HTTP/1.1 200 OK\r\n\r\nhello",
			wantErr: "5 bytes came after the answer to CONNECT"},
		{name: "a silent proxy", answer: "silence", timeout: 500 * time.Millisecond, wantDeadline: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			target, d := serve(t, tt.secure, echo)
			p := startTestProxy(t, tt.proxyUser, tt.answer)
			use := *p.url
			if tt.clientUser != nil {
				use.User = tt.clientUser
				if tt.clientUser.Username() == "" {
					use.User = nil
				}
			}
			d.Proxy = func(*url.URL) *url.URL { return &use }
			if tt.timeout > 0 {
				d.HandshakeTimeout = tt.timeout
			}
			c, _, err := d.DialContext(context.Background(), target, nil)
			switch {
			case tt.wantDeadline:
				// The connection's deadline and ctx's end at the same time.
				if !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, os.ErrDeadlineExceeded) {
					t.Fatalf("dial: %v, want the handshake's deadline", err)
				}
				return
			case tt.wantErr != "":
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || errors.Is(err, ErrProxyRefused) != tt.wantRefused {
					t.Fatalf("dial: %v, want an error saying %q (ErrProxyRefused: %v)", err, tt.wantErr, tt.wantRefused)
				}
				if pw, ok := use.User.Password(); ok && strings.Contains(err.Error(), pw) {
					t.Errorf("the error shows the password: %v", err)
				}
				return
			case err != nil:
				t.Fatalf("dial %s through %s: %v", target, p.url.Redacted(), err)
			}
			defer c.Close()
			c.SetReadDeadline(time.Now().Add(10 * time.Second))
			if err := c.WriteMessage(TextMessage, []byte("through")); err != nil {
				t.Fatal(err)
			}
			if _, got, err := c.ReadMessage(); err != nil || string(got) != "through" {
				t.Fatalf("echo: %q, %v", got, err)
			}
			u, _ := url.Parse(target)
			if got := p.seen(); len(got) != 1 || got[0] != "CONNECT "+u.Host {
				t.Errorf("the proxy saw %q, want one CONNECT %s", got, u.Host)
			}
		})
	}
}

func TestDialProxyUnreachable(t *testing.T) {
	target, d := serve(t, false, echo)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := &url.URL{Scheme: "http", Host: l.Addr().String(), User: url.UserPassword("bob", "hunter2")}
	l.Close()
	d.Proxy = func(*url.URL) *url.URL { return dead }
	_, _, err = d.DialContext(context.Background(), target, nil)
	if err == nil || !strings.Contains(err.Error(), "dial proxy http://bob:xxxxx@"+dead.Host) || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("dial: %v, want an error naming the proxy without its password", err)
	}
}

// FuzzTunnel feeds arbitrary bytes to tunnel as the proxy's answer to
// CONNECT: it never panics, and takes the tunnel as open only after a 2xx
// answer with nothing behind it.
func FuzzTunnel(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 Connection established\r\n\r\n"))
	f.Add([]byte("HTTP/1.0 200 OK\r\nProxy-Agent: x\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n"))
	f.Add([]byte("HTTP/1.1 204 No Content\r\n\r\n\x16\x03\x01"))
	f.Add([]byte("HTTP/1.1 200\r\n"))
	proxy := &url.URL{Scheme: "http", Host: "proxy:3128", User: url.UserPassword("u", "pw")}
	f.Fuzz(func(t *testing.T, answer []byte) {
		client, server := net.Pipe()
		defer client.Close()
		go func() {
			defer server.Close()
			buf := make([]byte, 512)
			for n := 0; !bytes.Contains(buf[:n], []byte("\r\n\r\n")); {
				m, err := server.Read(buf[n:])
				if err != nil {
					return
				}
				n += m
			}
			server.Write(answer)
		}()
		err := tunnel(client, proxy, "push.example:443")
		if err != nil {
			// The answer is quoted when malformed: it may hold the
			// password only if the proxy wrote it.
			if strings.Contains(err.Error(), "pw") && !bytes.Contains(answer, []byte("pw")) {
				t.Errorf("the error shows the password: %v", err)
			}
			return
		}
		resp, rerr := readResponse(bufio.NewReader(bytes.NewReader(answer)))
		if rerr != nil || resp.StatusCode/100 != 2 {
			t.Errorf("tunnel open after the answer %q", answer)
		}
	})
}
