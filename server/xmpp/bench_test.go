// SPDX-License-Identifier: Apache-2.0

package xmpp

import (
	"bufio"
	"bytes"
	"context"
	"strings"
	"sync/atomic"
	"testing"
)

// benchPayload is a typical CCS ack-sized JSON with a few characters to
// escape.
const benchPayload = `{"to":"fK3b:APA91bH-token-token-token","message_id":"m-123456","data":{"text":"<b>5 € & more</b>"}}`

// countingHandler signals when it got want messages.
type countingHandler struct {
	n, want atomic.Int64
	done    chan struct{}
}

func (h *countingHandler) Message([]byte) {
	if h.n.Add(1) == h.want.Load() {
		close(h.done)
	}
}

func (h *countingHandler) Closed(error) {}

// BenchmarkMessageToHandler: message stanzas from a client over TLS to
// Handler.Message.
func BenchmarkMessageToHandler(b *testing.B) {
	handler := &countingHandler{done: make(chan struct{})}
	h := startServer(b, func(c *Config) { c.Open = func(*Conn) Handler { return handler } })
	c := h.loginFor(b)
	var stanza bytes.Buffer
	stanza.WriteString(`<message id="1"><gcm xmlns="google:mobile:data">`)
	payload, err := appendEscaped(nil, benchPayload, false)
	if err != nil {
		b.Fatal(err)
	}
	stanza.Write(payload)
	stanza.WriteString(`</gcm></message>`)
	handler.want.Store(int64(b.N))
	b.SetBytes(int64(stanza.Len()))
	b.ResetTimer()
	w := bufio.NewWriter(c.conn)
	for range b.N {
		w.Write(stanza.Bytes())
	}
	if err := w.Flush(); err != nil {
		b.Fatal(err)
	}
	<-handler.done
}

// BenchmarkSend: Conn.Send to a client over TLS that reads the stanzas.
func BenchmarkSend(b *testing.B) {
	h := startServer(b)
	c, r := h.login()
	stanzaEnd := []byte("</message>")
	got := make(chan error, 1)
	go func() {
		seen, buf := 0, make([]byte, 64<<10)
		var chunk []byte
		for seen < b.N {
			n, err := c.in.Read(buf)
			// Keep the tail of the last read: an end tag may be split.
			tail := chunk[max(0, len(chunk)-len(stanzaEnd)+1):]
			chunk = append(append(make([]byte, 0, len(tail)+n), tail...), buf[:n]...)
			seen += bytes.Count(chunk, stanzaEnd)
			if err != nil {
				got <- err
				return
			}
		}
		got <- nil
	}()
	b.SetBytes(int64(len(benchPayload)))
	b.ResetTimer()
	for range b.N {
		if err := r.conn.Send(context.Background(), []byte(benchPayload)); err != nil {
			b.Fatal(err)
		}
	}
	if err := <-got; err != nil {
		b.Fatal(err)
	}
}

func BenchmarkEscape(b *testing.B) {
	payload := []byte(strings.Repeat(benchPayload, 10))
	b.SetBytes(int64(len(payload)))
	buf := make([]byte, 0, 2*len(payload))
	for range b.N {
		if _, err := appendEscaped(buf[:0], payload, false); err != nil {
			b.Fatal(err)
		}
	}
}
