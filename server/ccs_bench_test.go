// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"tether/internal/testwait"
	"tether/server/xmpp/xmpptest"
	"tether/wire"
)

// benchCCS starts a quiet server with its XMPP endpoint and an app server
// connected to it.
func benchCCS(b *testing.B) (*testServer, NewSender, *xmpptest.Client) {
	b.Helper()
	ts := startServer(b, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		c.XMPPListen, c.XMPPPlaintext = "127.0.0.1:0", true
		// Sixteen devices at full speed are far over a device's rate.
		c.UpstreamRateLimit = -1
	})
	snd := ts.addSender("")
	c, err := xmpptest.Dial(context.Background(), xmpptest.Config{Addr: ts.XMPPAddr().String(), User: snd.ID, Password: snd.ServerKey})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return ts, snd, c
}

// BenchmarkXMPPDownstream: single-token stanzas on one XMPP connection,
// the app server keeping up to 100 unanswered as CCS allows, round robin
// over 1000 offline devices. Each is stored (fsync) before its ack.
func BenchmarkXMPPDownstream(b *testing.B) {
	ts, snd, c := benchCCS(b)
	tokens := benchTokens(b, ts.store, snd.ID, 1000)
	window := make(chan struct{}, ccsWindow)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range b.N {
			p, ok := <-c.Stanzas()
			if !ok {
				b.Errorf("the connection ended: %v", c.Err())
				return
			}
			var a ccsReply
			if json.Unmarshal(p, &a) != nil || a.MessageType != "ack" {
				b.Errorf("answer %s", p)
				return
			}
			<-window
		}
	}()
	b.ResetTimer()
	for i := range b.N {
		window <- struct{}{}
		stanza := fmt.Appendf(nil, `{"to": %q, "message_id": "m-%d", "time_to_live": 3600, "data": {"temperature": "21.5", "unit": "C", "room": "kitchen"}}`, tokens[i%len(tokens)], i)
		if err := c.Send(stanza); err != nil {
			b.Fatal(err)
		}
	}
	<-done
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}

// BenchmarkXMPPUpstream: upstream messages from 16 devices, each stored
// before the device's upstream_ack, delivered over one XMPP connection and
// acked by the app server, which settles (deletes) them.
func BenchmarkXMPPUpstream(b *testing.B) {
	ts, snd, c := benchCCS(b)
	const devices = 16
	devs := make([]*device, devices)
	for i := range devs {
		devs[i] = ts.checkIn()
		devs[i].register(app, snd.ID)
	}
	acked := make(chan struct{})
	go func() {
		defer close(acked)
		for range b.N {
			p, ok := <-c.Stanzas()
			if !ok {
				b.Errorf("the connection ended: %v", c.Err())
				return
			}
			var u webhookBody
			if err := json.Unmarshal(p, &u); err != nil {
				b.Error(err)
				return
			}
			ack, _ := json.Marshal(map[string]string{"to": u.From, "message_id": u.MessageID, "message_type": "ack"})
			if err := c.Send(ack); err != nil {
				b.Error(err)
				return
			}
		}
	}()
	b.ResetTimer()
	var wg sync.WaitGroup
	for i, d := range devs {
		wg.Go(func() {
			for n := i; n < b.N; n += devices {
				u := wire.Upstream{App: app, To: snd.ID, ID: fmt.Sprint("up-", n), TTL: 3600, Data: map[string]string{"temperature": "21.5"}}
				frame, _ := wire.Encode(u.ID, u)
				d.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
				if err := d.conn.WriteMessage(1, frame); err != nil {
					b.Error(err)
					return
				}
				f, err := d.read()
				var ack wire.UpstreamAck
				if err == nil {
					err = f.Decode(&ack)
				}
				if err != nil || f.Type != wire.TypeUpstreamAck || ack.Error != "" {
					b.Errorf("upstream ack: %v %s %v", f.Type, f.Body, err)
					return
				}
			}
		})
	}
	wg.Wait()
	<-acked
	testwait.Until(b, "the queue to empty", 10*time.Second, func() bool { return upstreamCount(b, ts) == 0 })
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msgs/s")
}
