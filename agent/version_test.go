// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"fmt"
	"slices"
	"testing"

	"tether/wire"
)

// TestServerVersions: the agent offers the highest protocol version it
// speaks and takes the one the server's welcome names, including a server
// of version 1 from before compact frames; messages come down, the agent
// acks them in the session's encoding, and the app gets them.
func TestServerVersions(t *testing.T) {
	for _, version := range []int{1, wire.Version} {
		t.Run(fmt.Sprint("version ", version), func(t *testing.T) {
			p := newPeer(t)
			p.set(func(p *peer) { p.version = version })
			d := newDevice(t, "", p.url, nil)
			registerDirect(t, d, app, sender, alice.UID)
			d.start()
			pc := p.nextConn(t)
			if pc.hello.Version != wire.Version || pc.codec.Version() != version {
				t.Fatalf("hello offered version %d, session speaks %d; want %d and %d", pc.hello.Version, pc.codec.Version(), wire.Version, version)
			}
			d.waitConnected(t)
			l, _ := listen(t, d.agent, alice, app)
			// The first ack alone, to see its encoding: a JSON frame
			// has a body, a compact one none.
			pc.message("m1", app, sender, 3600)
			f := pc.waitFor(t, wire.TypeAck)
			var ack wire.Ack
			if err := f.Decode(&ack); err != nil || !slices.Equal(ack.IDs, []string{"m1"}) || (len(f.Body) == 0) != (version >= 2) {
				t.Fatalf("ack %+v (%s), %v", ack, f.Body, err)
			}
			want := []string{"m1", "m2", "m3"}
			for _, id := range want[1:] {
				pc.message(id, app, sender, 3600)
			}
			if ids := pc.waitAcked(t, 2); !slices.Equal(ids, want[1:]) {
				t.Fatalf("acked %v, want %v", ids, want[1:])
			}
			for _, id := range want {
				if m := l.nextMessage(t); m.ID != id || m.Data["n"] != id {
					t.Fatalf("delivered %+v, want %s", m, id)
				}
			}
		})
	}
}
