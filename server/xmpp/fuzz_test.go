// SPDX-License-Identifier: Apache-2.0

package xmpp

import (
	"bytes"
	"context"
	"encoding/xml"
	"errors"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// panicCatcher is a slog handler that keeps only whether a connection
// panicked, so that a long fuzz run does not pile up logs.
type panicCatcher struct{ panics *atomic.Int64 }

func (p panicCatcher) Enabled(context.Context, slog.Level) bool { return true }
func (p panicCatcher) Handle(_ context.Context, r slog.Record) error {
	if strings.Contains(r.Message, "panicked") {
		p.panics.Add(1)
	}
	return nil
}
func (p panicCatcher) WithAttrs([]slog.Attr) slog.Handler { return p }
func (p panicCatcher) WithGroup(string) slog.Handler      { return p }

// FuzzStream sends arbitrary bytes as a client: from the start of the
// connection, or after a bound stream when afterBind. The server must not
// panic, must answer with well-formed XML and close the connection once
// the client closed its side, and must go on serving new connections.
func FuzzStream(f *testing.F) {
	var panics atomic.Int64
	h := startServer(f, plainTCP, func(c *Config) { c.Logger = slog.New(panicCatcher{&panics}) })
	f.Fuzz(func(t *testing.T, afterBind bool, data []byte) {
		var c *client
		if afterBind {
			c = h.loginFor(t)
		} else {
			c = h.dialFor(t)
		}
		out := make(chan []byte, 1)
		go func() {
			c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			b, err := io.ReadAll(c.in)
			if err != nil {
				t.Errorf("the server did not close the connection: %v", err)
			}
			out <- b
		}()
		c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
		c.conn.Write(data) // the server may have closed already
		c.conn.(*net.TCPConn).CloseWrite()
		answer := <-out
		c.conn.Close()
		if afterBind {
			answer = append([]byte(`<stream:stream xmlns="jabber:client" xmlns:stream="`+nsStreams+`">`), answer...)
		}
		checkWellFormed(t, answer)
		for len(h.opened) > 0 {
			<-h.opened
		}
		if n := panics.Load(); n > 0 {
			t.Fatalf("%d connections panicked", n)
		}

		fresh := h.dialFor(t)
		fresh.open("gcm.googleapis.com")
		fresh.conn.Close()
	})
}

// checkWellFormed fails unless b is well-formed XML that may only leave
// stream elements open: a connection ended by the client need not see the
// end of its stream, and a stream restart nests the new stream in the old.
func checkWellFormed(t *testing.T, b []byte) {
	t.Helper()
	dec := xml.NewDecoder(bytes.NewReader(b))
	var open []string
	for {
		tok, err := dec.Token()
		if err != nil {
			var se *xml.SyntaxError
			if errors.Is(err, io.EOF) || errors.As(err, &se) && se.Msg == "unexpected EOF" {
				for _, name := range open {
					if name != "stream" {
						t.Fatalf("the server left <%s> open in %q", name, b)
					}
				}
				return
			}
			t.Fatalf("the server wrote bad XML (%v): %q", err, b)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			open = append(open, t.Name.Local)
		case xml.EndElement:
			open = open[:len(open)-1]
		}
	}
}
