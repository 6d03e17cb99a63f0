// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/gorilla/websocket"
	"github.com/prometheus/client_golang/prometheus"

	"tether/server/store"
	"tether/wire"
)

// hub knows the one live session and the one probe of each device, and
// owns their goroutines: shutdown closes them all and waits for them. On a
// cluster it reaches the sessions of the other nodes through bus.
type hub struct {
	// bus, on a cluster, carries what concerns a device to the node that
	// holds its session, this one or another; nil on a single machine.
	bus deviceBus
	// ttl0Drops counts the time-to-live-0 messages no session here took.
	ttl0Drops prometheus.Counter

	mu       sync.Mutex
	sessions map[string]*session // by device ID
	probes   map[string]*probe   // by device ID
	closing  bool
	wg       sync.WaitGroup
}

// deviceBus reaches a device's session wherever it is (cluster.Devices).
type deviceBus interface {
	// Watch takes, on this node, what is published for device until
	// unwatch is called.
	Watch(device string) (unwatch func(), err error)
	Kick(device string)
	// End closes the device's session: it was revoked or removed.
	End(device string)
	Live(device string, payload []byte)
	// Takeover ends, on every other node, the sessions of device older
	// than the one named key.
	Takeover(device, key string)
}

func newHub(ttl0Drops prometheus.Counter) *hub {
	return &hub{sessions: make(map[string]*session), probes: make(map[string]*probe), ttl0Drops: ttl0Drops}
}

// enter counts a new connection's goroutine in; it is false once the hub
// is shutting down. A true enter is paired with leave.
func (h *hub) enter() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closing {
		return false
	}
	h.wg.Add(1)
	return true
}

func (h *hub) leave() { h.wg.Done() }

// attach makes ss its device's live session, closing the one it replaces,
// here or, on a cluster, on another node. It is false when the hub is
// shutting down, or when the cluster cannot be told.
func (h *hub) attach(ss *session) bool {
	if h.bus != nil {
		unwatch, err := h.bus.Watch(ss.device)
		if err != nil {
			ss.log.Error("session not announced to the cluster", "err", err)
			return false
		}
		ss.unwatch = unwatch
	}
	if !attachTo(h, h.sessions, ss.device, ss) {
		ss.stopWatching()
		return false
	}
	if h.bus != nil {
		h.bus.Takeover(ss.device, ss.key)
	}
	return true
}

// detach forgets ss unless a newer session has replaced it already.
func (h *hub) detach(ss *session) {
	detachFrom(h, h.sessions, ss.device, ss)
	ss.stopWatching()
}

// attachProbe makes p its device's probe, closing the older probe it
// replaces; the device's session is left alone. It is false when the hub
// is shutting down.
func (h *hub) attachProbe(p *probe) bool { return attachTo(h, h.probes, p.device, p) }

// detachProbe forgets p unless a newer probe has replaced it already.
func (h *hub) detachProbe(p *probe) { detachFrom(h, h.probes, p.device, p) }

// replaceable is what a device has one of at a time: a session, a probe.
type replaceable interface {
	comparable
	// replaced closes it, a newer one having taken its place.
	replaced()
}

// attachTo makes v device's entry in m, closing the one it replaces.
func attachTo[T replaceable](h *hub, m map[string]T, device string, v T) bool {
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		return false
	}
	old, had := m[device]
	m[device] = v
	h.mu.Unlock()
	if had {
		old.replaced()
	}
	return true
}

// detachFrom forgets v unless a newer entry has replaced it already.
func detachFrom[T comparable](h *hub, m map[string]T, device string, v T) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if m[device] == v {
		delete(m, device)
	}
}

func (h *hub) session(device string) *session {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sessions[device]
}

// modes counts the sessions of this node by the power mode their device
// announced.
func (h *hub) modes() map[string]int {
	h.mu.Lock()
	sessions := make([]*session, 0, len(h.sessions))
	for _, ss := range h.sessions {
		sessions = append(sessions, ss)
	}
	h.mu.Unlock()
	n := make(map[string]int, 3)
	for _, ss := range sessions {
		ss.mu.Lock()
		n[powerMode(ss.mode)]++
		ss.mu.Unlock()
	}
	return n
}

// Flowing names, for the store (store.Live), what flows to the live
// sessions on this node; on a cluster the sessions on other nodes are not
// known here, and what flows to them counts as waiting.
func (h *hub) Flowing(device, app string) []string {
	if ss := h.session(device); ss != nil {
		return ss.flowing(app)
	}
	return nil
}

// Offer hands the device's live session on this node a message whose
// commit runs (store.Live).
func (h *hub) Offer(m store.Message) {
	if ss := h.session(m.Device); ss != nil {
		ss.offer(m)
	}
}

// notify tells the device's session, if any, that its queue has grown.
func (h *hub) notify(device string) {
	if h.bus != nil {
		h.bus.Kick(device)
		return
	}
	if ss := h.session(device); ss != nil {
		ss.notify()
	}
}

// end closes the device's session and probe, here or on whichever node
// holds them, with a revoked error: the device was revoked or removed.
func (h *hub) end(device string) {
	if h.bus != nil {
		h.bus.End(device)
	}
	// A probe is not on the bus; it is here or it times out.
	h.endHere(device)
}

// endHere closes the device's session and probe on this node.
func (h *hub) endHere(device string) {
	h.mu.Lock()
	ss, p := h.sessions[device], h.probes[device]
	h.mu.Unlock()
	const why = "device revoked"
	if ss != nil {
		ss.log.Info("session ended: the device was revoked or removed")
		ss.finish(wire.Error{Code: wire.CodeRevoked, Message: "the device was revoked or removed"}, websocket.ClosePolicyViolation, why)
	}
	if p != nil {
		p.close(websocket.ClosePolicyViolation, why)
	}
}

// live returns the sessions here.
func (h *hub) live() []*session {
	h.mu.Lock()
	defer h.mu.Unlock()
	live := make([]*session, 0, len(h.sessions))
	for _, ss := range h.sessions {
		live = append(live, ss)
	}
	return live
}

// notifyAll has every session here look at its queue.
func (h *hub) notifyAll() {
	for _, ss := range h.live() {
		ss.notify()
	}
}

// deliverNow hands m to the device's session without storing it; it is
// false when the device is not connected, its power mode holds m back, or
// its session is backed up. On a cluster it goes to whichever node holds
// the session, and is reported true.
func (h *hub) deliverNow(m store.Message) bool {
	if h.bus != nil {
		if b, err := json.Marshal(m); err == nil {
			h.bus.Live(m.Device, b)
		}
		return true
	}
	return h.deliverHere(m)
}

// deliverHere hands m to the device's session on this node, as
// deliverNow, and counts it dropped when no session takes it.
func (h *hub) deliverHere(m store.Message) bool {
	ss := h.session(m.Device)
	if ss != nil && ss.deliverNow(m) {
		return true
	}
	h.ttl0Drops.Inc()
	return false
}

// shutdown sends every session a goaway made by goAway and then a close
// frame, closes every probe with a close frame, and waits for all their
// goroutines. A session whose writer has not sent its goaway within wait
// is closed without it.
func (h *hub) shutdown(goAway func() wire.GoAway, wait time.Duration) {
	h.mu.Lock()
	h.closing = true
	live := make([]*session, 0, len(h.sessions))
	for _, ss := range h.sessions {
		live = append(live, ss)
	}
	probes := make([]*probe, 0, len(h.probes))
	for _, p := range h.probes {
		probes = append(probes, p)
	}
	h.mu.Unlock()
	const why = "server shutting down"
	for _, p := range probes {
		p.close(websocket.CloseGoingAway, why)
	}
	for _, ss := range live {
		ss.finish(goAway(), websocket.CloseGoingAway, why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	for _, ss := range live {
		select {
		case <-ss.done:
		case <-ctx.Done():
			ss.close(websocket.CloseGoingAway, why)
		}
	}
	h.wg.Wait()
}
