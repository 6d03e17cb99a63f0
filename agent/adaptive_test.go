// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tether/internal/testwait"
	"tether/store"
	"tether/wire"
)

// blackholeProxy forwards TCP connections to a target and, like a NAT box
// that forgot a mapping, silently stops forwarding a connection once it has
// been idle for idle or longer: no close, no reset, the bytes just vanish.
type blackholeProxy struct {
	ln     net.Listener
	target string
	idle   time.Duration
	wg     sync.WaitGroup

	mu    sync.Mutex
	conns []net.Conn
}

func startBlackholeProxy(t *testing.T, target string, idle time.Duration) *blackholeProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &blackholeProxy{ln: ln, target: target, idle: idle}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

func (p *blackholeProxy) accept() {
	defer p.wg.Done()
	for {
		in, err := p.ln.Accept()
		if err != nil {
			return
		}
		out, err := net.Dial("tcp", p.target)
		if err != nil {
			in.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, in, out)
		p.mu.Unlock()
		var last atomic.Int64
		var dead atomic.Bool
		last.Store(time.Now().UnixNano())
		forward := func(dst, src net.Conn) {
			defer p.wg.Done()
			defer dst.Close()
			buf := make([]byte, 32<<10)
			for {
				n, err := src.Read(buf)
				if err != nil {
					return
				}
				now := time.Now().UnixNano()
				if dead.Load() || time.Duration(now-last.Load()) >= p.idle {
					dead.Store(true) // forgotten: swallow everything from now on
					continue
				}
				last.Store(now)
				if _, err := dst.Write(buf[:n]); err != nil {
					return
				}
			}
		}
		p.wg.Add(2)
		go forward(out, in)
		go forward(in, out)
	}
}

// Behind a NAT that forgets idle connections after two seconds, the agent
// finds the longest heartbeat that holds, just under the timeout, with
// probes on a second connection: the connection that carries messages
// never dies on the way. The clock is real; the bounds are scaled down.
func TestAdaptiveHeartbeatSettlesUnderTheIdleTimeout(t *testing.T) {
	const natIdle = 2 * time.Second
	p := newPeer(t)
	proxy := startBlackholeProxy(t, strings.TrimPrefix(p.url, "http://"), natIdle)
	policy := HeartbeatPolicy{Min: 250 * time.Millisecond, Max: 8 * time.Second, Start: 500 * time.Millisecond, Growth: 2, Precision: 150 * time.Millisecond}
	d := newDevice(t, "", "http://"+proxy.ln.Addr().String(), nil, func(c *Config) {
		c.HeartbeatPolicy = &policy
		c.PongWait = 400 * time.Millisecond
	})
	d.start()
	p.nextConn(t)
	d.waitConnected(t)

	// The search takes the sum of the probed intervals, about 8 s here;
	// a loaded machine may take longer, and that is not what is tested.
	var learned store.Heartbeat
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		d.agent.condMu.Lock()
		learned = d.agent.learner.known
		settled := d.agent.learner.settled()
		d.agent.condMu.Unlock()
		if settled {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the heartbeat search has not ended: %+v", learned)
		}
	}
	if learned.Good >= natIdle || natIdle-learned.Good > max(policy.Precision, learned.Good/10)+100*time.Millisecond {
		t.Errorf("settled on %v (shortest failure %v) for a NAT timeout of %v", learned.Good, learned.Bad, natIdle)
	}
	st, err := d.agent.Status(bg)
	if err != nil {
		t.Fatal(err)
	}
	if st.Heartbeat != int(learned.Good/time.Second) || st.Reconnects != 0 {
		t.Errorf("status %+v: want the learned heartbeat in use and the first connection still up", st)
	}
	p.mu.Lock()
	probes := p.probes
	p.mu.Unlock()
	if probes < 3 {
		t.Errorf("%d probe connections, want the search to have used several", probes)
	}
	// What was learned is kept, as soon as it is learned.
	testwait.Until(t, "the learned heartbeat to be kept", waitLimit, func() bool {
		kept, err := d.store.Heartbeat(unknownNetwork)
		return err == nil && kept == learned
	})
}

// The server's welcome may keep a session for less than the agent asks:
// the agent pings within the welcome's heartbeat, whether its heartbeat
// is fixed, set later, or learned, and probes no longer intervals.
func TestHeartbeatWithinTheWelcome(t *testing.T) {
	const allowed = 2 * time.Second
	tests := []struct {
		name  string
		tweak func(c *Config)
		// then runs on the connected agent.
		then func(d *device)
	}{
		{"fixed, longer", func(c *Config) { c.Heartbeat = time.Hour }, func(*device) {}},
		{"set longer later", func(c *Config) { c.Heartbeat = time.Second }, func(d *device) {
			d.agent.Link().SetHeartbeat(time.Hour)
			d.agent.announce()
		}},
		{"learned", func(c *Config) {
			c.HeartbeatPolicy = &HeartbeatPolicy{Min: time.Second, Max: 28 * time.Minute, Start: time.Second, Growth: 2, Precision: 500 * time.Millisecond}
		}, func(d *device) {
			testwait.Until(t, "the heartbeat search to end", waitLimit, func() bool {
				_, _, probing := d.agent.nextProbe()
				d.agent.condMu.Lock()
				defer d.agent.condMu.Unlock()
				return d.agent.learner.known.Good == allowed && !probing
			})
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			p := newPeer(t)
			p.set(func(p *peer) { p.welcomeHeartbeat = int(allowed / time.Second) })
			d := newDevice(t, "", p.url, nil, tt.tweak).start()
			pc := p.nextConn(t)
			d.waitConnected(t)
			tt.then(d)
			if st := d.agent.Link().Stats(); st.Heartbeat > allowed {
				t.Errorf("heartbeat %v, over the welcome's %v", st.Heartbeat, allowed)
			}
			last := time.Now()
			for range 3 {
				select {
				case <-pc.pings:
				case <-time.After(allowed + time.Second):
					t.Fatalf("no ping within %v of the last", allowed+time.Second)
				}
				if gap := time.Since(last); gap > allowed+500*time.Millisecond {
					t.Errorf("pings %v apart, over the welcome's %v", gap, allowed)
				}
				last = time.Now()
			}
			for _, h := range p.helloLog() {
				if h.hello.Probe && h.hello.Heartbeat > int(allowed/time.Second) {
					t.Errorf("a probe of %d s, over the welcome's %v", h.hello.Heartbeat, allowed)
				}
			}
			for {
				select {
				case f := <-pc.frames:
					var st wire.State
					if f.Type == wire.TypeState && (f.Decode(&st) != nil || st.Heartbeat > int(allowed/time.Second)) {
						t.Errorf("state frame %+v announces more than the welcome's %v", st, allowed)
					}
					continue
				default:
				}
				break
			}
		})
	}
}
