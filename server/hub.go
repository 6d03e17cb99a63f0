package server

import (
	"sync"

	"github.com/gorilla/websocket"

	"tether/server/store"
)

// hub knows the one live session of each device and owns the session
// goroutines: shutdown closes them all and waits for them.
type hub struct {
	mu       sync.Mutex
	sessions map[string]*session // by device ID
	closing  bool
	wg       sync.WaitGroup
}

func newHub() *hub { return &hub{sessions: make(map[string]*session)} }

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

// attach makes ss its device's live session, closing the one it replaces.
// It is false when the hub is shutting down.
func (h *hub) attach(ss *session) bool {
	h.mu.Lock()
	if h.closing {
		h.mu.Unlock()
		return false
	}
	old := h.sessions[ss.device]
	h.sessions[ss.device] = ss
	h.mu.Unlock()
	if old != nil {
		old.log.Info("session replaced by a newer one")
		old.close(closeReplaced, "replaced by a newer session")
	}
	return true
}

// detach forgets ss unless a newer session has replaced it already.
func (h *hub) detach(ss *session) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.sessions[ss.device] == ss {
		delete(h.sessions, ss.device)
	}
}

func (h *hub) session(device string) *session {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sessions[device]
}

// notify tells the device's session, if any, that its queue has grown.
func (h *hub) notify(device string) {
	if ss := h.session(device); ss != nil {
		ss.notify()
	}
}

// deliverNow hands m to the device's session without storing it; it is
// false when the device is not connected or its session is backed up.
func (h *hub) deliverNow(m store.Message) bool {
	ss := h.session(m.Device)
	return ss != nil && ss.deliverNow(m)
}

// shutdown closes every session with a close frame and waits for all
// session goroutines.
func (h *hub) shutdown() {
	h.mu.Lock()
	h.closing = true
	live := make([]*session, 0, len(h.sessions))
	for _, ss := range h.sessions {
		live = append(live, ss)
	}
	h.mu.Unlock()
	for _, ss := range live {
		ss.close(websocket.CloseGoingAway, "server shutting down")
	}
	h.wg.Wait()
}
