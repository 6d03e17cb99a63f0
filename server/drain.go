// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"net/http"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"tether/wire"
)

// Draining a node's device sessions: before maintenance, the node sends
// its devices elsewhere, a few at a time, and takes no new session until
// it restarts.

// errBadDrain marks drain settings out of range.
var errBadDrain = errors.New("bad drain")

// Bounds of a device drain's settings: the longest wait the wire carries.
const maxDrainWait = time.Duration(maxRetryAfter) * time.Second

// DeviceDrain says how to drain a node's device sessions.
type DeviceDrain struct {
	// To is the URL devices are told to connect to next, another node of
	// the cluster (wss://host:port). Empty: on a cluster, another live
	// node, each time at random; on a single machine none, and devices
	// wait RetryAfter and come back.
	To string
	// Over is the time the sessions are spread over, so that the nodes
	// they go to take them in a stream rather than all at once. 0 sends
	// them all at once.
	Over time.Duration
	// RetryAfter is the wait asked of devices that have no node to go to,
	// spread between half of it and one and a half times it.
	RetryAfter time.Duration
}

func (d DeviceDrain) check() error {
	if d.To != "" {
		if _, err := wire.ParseServerURL(d.To); err != nil {
			return fmt.Errorf("%w: the URL to send devices to: %w", errBadDrain, err)
		}
	}
	if d.Over < 0 || d.Over > maxDrainWait || d.RetryAfter < 0 || d.RetryAfter > maxDrainWait {
		return fmt.Errorf("%w: the spread and the wait are 0 to %v", errBadDrain, maxDrainWait)
	}
	return nil
}

// DeviceDrainResult says how many sessions a drain sends away.
type DeviceDrainResult struct {
	Sessions int `json:"sessions"`
}

// drainer holds a node's drain, once asked for. Its zero value is a node
// that is not draining.
type drainer struct {
	mu   sync.Mutex
	plan *DeviceDrain
	// changed is closed, and replaced, when plan changes.
	changed chan struct{}
}

// start makes plan the node's drain.
func (d *drainer) start(plan DeviceDrain) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.plan = &plan
	if d.changed != nil {
		close(d.changed)
	}
	d.changed = make(chan struct{})
}

// current is the drain, nil when there is none, and a channel closed when
// it changes.
func (d *drainer) current() (*DeviceDrain, <-chan struct{}) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.changed == nil {
		d.changed = make(chan struct{})
	}
	return d.plan, d.changed
}

// drainGoAway is the goaway of a session sent away by plan, or of a
// device refused while the node drains.
func (s *Server) drainGoAway(plan *DeviceDrain) wire.GoAway {
	g := wire.GoAway{Reason: "server draining", Server: plan.To}
	if g.Server == "" && s.node != nil {
		g.Server = s.node.cl.OtherPublicURL()
	}
	if g.Server == "" {
		// Nowhere to go: come back later, apart.
		g.RetryAfter = spreadSeconds(plan.RetryAfter)
	}
	return g
}

// refuseWhileDraining sends a device connection away, before its
// handshake, when the node drains; false when it does not.
func (s *Server) refuseWhileDraining(conn *websocket.Conn) bool {
	plan, _ := s.drain.current()
	if plan == nil {
		return false
	}
	s.goAwayConn(conn, s.drainGoAway(plan), websocket.CloseGoingAway, "server draining")
	return true
}

// drainLoop carries out the drains asked of the node until ctx ends: it
// sends each live session its goaway at its own time within the drain's
// spread, then any session that opened meanwhile.
func (s *Server) drainLoop(ctx context.Context) {
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		plan, changed := s.drain.current()
		if plan != nil {
			s.drainSessions(ctx, plan, changed, timer)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		}
	}
}

// drainSessions sends the live sessions away as plan says, in a random
// order, evenly over its spread; it returns early when ctx ends or the
// plan changes.
func (s *Server) drainSessions(ctx context.Context, plan *DeviceDrain, changed <-chan struct{}, timer *time.Timer) {
	live := s.hub.live()
	mathrand.Shuffle(len(live), func(i, j int) { live[i], live[j] = live[j], live[i] })
	began := time.Now()
	s.log.Info("draining device sessions", "sessions", len(live), "over", plan.Over, "to", plan.To)
	for i, ss := range live {
		at := began.Add(plan.Over * time.Duration(i) / time.Duration(len(live)))
		if wait := time.Until(at); wait > 0 {
			timer.Reset(wait)
			select {
			case <-ctx.Done():
				return
			case <-changed:
				return
			case <-timer.C:
			}
		}
		ss.finish(s.drainGoAway(plan), websocket.CloseGoingAway, "server draining")
	}
	// Sessions whose handshake was under way when the drain began.
	for _, ss := range s.hub.live() {
		ss.finish(s.drainGoAway(plan), websocket.CloseGoingAway, "server draining")
	}
	s.log.Info("device sessions drained", "sessions", len(live), "took", time.Since(began).Round(time.Millisecond))
}

type deviceDrainRequest struct {
	To                string `json:"to"`
	OverSeconds       int64  `json:"over_seconds"`
	RetryAfterSeconds int64  `json:"retry_after_seconds"`
}

// adminDrainRoutes adds the device drain to the admin socket's mux.
func (s *Server) adminDrainRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /devices/drain", func(w http.ResponseWriter, r *http.Request) {
		var req deviceDrainRequest
		if !decodeAdminRequest(w, r, &req) {
			return
		}
		plan := DeviceDrain{To: req.To, Over: secondsDuration(req.OverSeconds), RetryAfter: secondsDuration(req.RetryAfterSeconds)}
		if err := plan.check(); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		n := len(s.hub.live())
		s.drain.start(plan)
		writeJSON(w, http.StatusOK, DeviceDrainResult{Sessions: n})
	})
}

// DrainDevices has the running server send its device sessions elsewhere
// as drain says, and refuse new ones until it restarts. It returns at
// once, with the sessions being sent away; a drain asked again replaces
// the one under way. A cluster is drained node by node: it wraps
// ErrPerNode for one, and ErrNotServing when no server runs.
func (a *Admin) DrainDevices(ctx context.Context, drain DeviceDrain) (DeviceDrainResult, error) {
	if a.cluster != nil {
		return DeviceDrainResult{}, fmt.Errorf("drain device sessions: %w", ErrPerNode)
	}
	if a.store != nil {
		return DeviceDrainResult{}, fmt.Errorf("drain device sessions: %w", ErrNotServing)
	}
	if err := drain.check(); err != nil {
		return DeviceDrainResult{}, fmt.Errorf("drain device sessions: %w", err)
	}
	body, _ := json.Marshal(deviceDrainRequest{To: drain.To, OverSeconds: int64(drain.Over / time.Second), RetryAfterSeconds: int64(drain.RetryAfter / time.Second)})
	var res DeviceDrainResult
	if err := a.call(ctx, http.MethodPost, "/devices/drain", body, http.StatusOK, &res); err != nil {
		return DeviceDrainResult{}, fmt.Errorf("drain device sessions: %w", err)
	}
	return res, nil
}
