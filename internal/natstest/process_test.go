// SPDX-License-Identifier: Apache-2.0

package natstest

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestProcessesKeepQuorum: an R3 stream on three nats-server processes
// takes writes with one of them killed or cut off, and the server catches
// up when it is back.
func TestProcessesKeepQuorum(t *testing.T) {
	bin, err := Build(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := StartProcesses(t, ProcConfig{Bin: bin, Dir: t.TempDir()})
	// Connected to the first server, which stays in the majority.
	nc, err := nats.Connect(p.ClientURL(0), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "S", Subjects: []string{"s.>"}, Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	publish := func(what string) {
		t.Helper()
		for {
			// Each attempt has a timeout of its own: one sent while the
			// stream elects a leader gets no answer at all; the message ID keeps
			// one stored before its answer was lost from counting twice.
			actx, acancel := context.WithTimeout(ctx, 2*time.Second)
			_, err := js.Publish(actx, "s."+what, []byte(what), jetstream.WithMsgID(what))
			acancel()
			if err == nil {
				return
			}
			if ctx.Err() != nil {
				t.Fatalf("publish %s: %v", what, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	publish("all")
	p.Kill(1)
	publish("killed")
	if err := p.Start(1); err != nil {
		t.Fatal(err)
	}
	// Node 1 must have caught up before node 2 is cut off, or the stream
	// has no quorum until it does.
	for {
		st, err := js.Stream(ctx, "S")
		if err == nil {
			if info, err := st.Info(ctx); err == nil && allCurrent(info.Cluster) {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("node 1 did not catch up after its restart: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := p.Blackhole(2, true); err != nil {
		t.Fatal(err)
	}
	publish("cut-off")
	if err := p.Blackhole(2, false); err != nil {
		t.Fatal(err)
	}
	if err := p.WaitReady(time.Minute); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, "S")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil || info.State.Msgs != 3 {
		t.Fatalf("stream holds %v messages, %v; want 3", info.State.Msgs, err)
	}
}

// allCurrent says whether every replica of a stream is online and
// current with its leader.
func allCurrent(c *jetstream.ClusterInfo) bool {
	if c == nil || c.Leader == "" {
		return false
	}
	for _, r := range c.Replicas {
		if !r.Current || r.Offline {
			return false
		}
	}
	return true
}
