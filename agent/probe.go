// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"errors"
	"fmt"
	"time"

	"tether/internal/websocket"
	"tether/wire"
)

// probeRetry is how long the prober waits after a probe that told nothing
// (the server was unreachable or closed it) before it tries again.
const probeRetry = time.Minute

// Probe opens a probe connection (hello with Probe set), leaves it idle for
// d, then pings and waits the pong wait for the answer: held reports
// whether the connection survived d idle. An error means the probe told
// nothing about the network (no connection, or the server closed it).
func (l *Link) Probe(ctx context.Context, hello wire.Hello, d time.Duration) (held bool, err error) {
	hello.Version, hello.Probe = wire.Version, true
	hello.Heartbeat = int((d + time.Second - 1) / time.Second)
	frame, err := wire.Encode("", hello)
	if err != nil {
		return false, err
	}
	l.mu.Lock()
	server := l.server // the session's node: the prober runs while connected
	l.mu.Unlock()
	conn, _, err := l.dialer.DialContext(ctx, server, nil)
	if err != nil {
		return false, fmt.Errorf("probe: dial: %w", err)
	}
	defer conn.Close()
	conn.SetReadLimit(wire.MaxFrameSize)
	w, err := exchangeHello(ctx, conn, frame)
	if err != nil {
		return false, fmt.Errorf("probe: %w", err)
	}
	if allowed := time.Duration(w.Heartbeat) * time.Second; allowed > 0 && d > allowed {
		return false, fmt.Errorf("probe: the server keeps a connection idle for at most %v, not %v", allowed, d)
	}

	pong := make(chan struct{}, 1)
	conn.SetPongHandler(func(string) error {
		select {
		case pong <- struct{}{}:
		default:
		}
		return nil
	})
	readErr := make(chan error, 1)
	go func() {
		for {
			conn.SetReadDeadline(time.Time{})
			if _, _, err := conn.ReadMessage(); err != nil {
				readErr <- err
				return
			}
		}
	}()
	defer func() {
		conn.Close()
		<-readErr
	}()

	idle := time.NewTimer(d)
	defer idle.Stop()
	select {
	case <-idle.C:
	case err := <-readErr:
		readErr <- err // for the deferred wait
		return false, fmt.Errorf("probe: closed while idle: %w", err)
	case <-ctx.Done():
		msg := websocket.FormatCloseMessage(websocket.CloseGoingAway, "agent closing")
		conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(writeTimeout))
		return false, ctx.Err()
	}
	if err := conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeTimeout)); err != nil {
		return false, nil // the network refused the ping: the path is gone
	}
	wait := time.NewTimer(l.cfg.PongWait)
	defer wait.Stop()
	select {
	case <-pong:
		msg := websocket.FormatCloseMessage(websocket.CloseNormalClosure, "probe done")
		conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(writeTimeout))
		return true, nil
	case err := <-readErr:
		readErr <- err
		var closeErr *websocket.CloseError
		if errors.As(err, &closeErr) {
			return false, fmt.Errorf("probe: the server closed it: %w", err)
		}
		return false, nil // reset by the network after the idle time
	case <-wait.C:
		return false, nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// probeLoop tries longer heartbeat intervals on an idle probe connection
// while the learner has some to try, the device is connected and not on
// low battery. It sleeps on probeWake otherwise: no timer runs once the
// search is over.
func (a *Agent) probeLoop(ctx context.Context) {
	var retry <-chan time.Time
	for {
		d, network, ok := a.nextProbe()
		if !ok {
			select {
			case <-a.probeWake:
			case <-retry:
				retry = nil
				a.setProbeBlocked(false)
			case <-ctx.Done():
				return
			}
			continue
		}
		hello, err := linkHandler{a}.Hello()
		if err != nil || hello.DeviceID == "" {
			a.setProbeBlocked(true)
			retry = time.After(probeRetry)
			continue
		}
		a.log.Debug("probing heartbeat", "network", network, "interval", d)
		held, err := a.link.Probe(ctx, hello, d)
		switch {
		case ctx.Err() != nil:
			return
		case err != nil:
			a.log.Debug("probe told nothing", "interval", d, "err", err)
			a.setProbeBlocked(true)
			retry = time.After(probeRetry)
		default:
			a.learn(network, d, held)
		}
	}
}

// nextProbe is the interval to probe on the current network, if any. The
// server's bound on the heartbeat (its welcome's) bounds the search: a
// probe idle for longer would be closed by the server and tell nothing
// about the network.
func (a *Agent) nextProbe() (time.Duration, string, bool) {
	s := a.currentSession()
	a.condMu.Lock()
	defer a.condMu.Unlock()
	if a.learner == nil || a.probeBlocked || a.powerMode == PowerLow || !a.routeUp || s == nil {
		return 0, "", false
	}
	d, ok := a.learner.next()
	if ok && s.allowed > 0 && d > s.allowed {
		d, ok = s.allowed, a.learner.interval() < s.allowed
	}
	return d, a.network, ok
}

// setProbeBlocked stops probing after a probe that told nothing, until
// the retry delay or a change of conditions ends it.
func (a *Agent) setProbeBlocked(blocked bool) {
	a.condMu.Lock()
	a.probeBlocked = blocked
	a.condMu.Unlock()
}

// wakeProber tells the prober that conditions changed.
func (a *Agent) wakeProber() {
	a.setProbeBlocked(false)
	select {
	case a.probeWake <- struct{}{}:
	default:
	}
}

// learn records whether a connection on network survived d idle, keeps
// it, and moves the heartbeat in use to what now holds.
func (a *Agent) learn(network string, d time.Duration, held bool) {
	a.condMu.Lock()
	if a.learner == nil || a.network != network {
		a.condMu.Unlock()
		return // the network changed meanwhile: the result is not its
	}
	before := a.learner.interval()
	if held {
		a.learner.held(d, a.now())
	} else {
		a.learner.failed(d, a.now())
	}
	known, interval := a.learner.known, a.learner.interval()
	a.condMu.Unlock()
	a.log.Info("heartbeat learned", "network", network, "probed", d, "held", held,
		"interval", interval, "longest_held", known.Good, "shortest_failed", known.Bad)
	if err := a.store.SetHeartbeat(network, known); err != nil {
		a.log.Warn("learned heartbeat not kept", "network", network, "err", err)
	}
	if interval != before {
		a.link.SetHeartbeat(interval)
		a.announce()
	}
	a.statusChanged()
}

// sessionEnded learns from a connection that died silently: its interval
// no longer holds on this network.
func (a *Agent) sessionEnded(reason string, heartbeat time.Duration) {
	if reason != ReasonHeartbeatTimeout {
		return
	}
	a.condMu.Lock()
	network, up := a.network, a.routeUp && a.learner != nil
	a.condMu.Unlock()
	if up {
		a.learn(network, heartbeat, false)
	}
}

// announce tells the server, on the current session, the power mode and
// the heartbeat in use, so that it holds messages and times the session
// out accordingly.
func (a *Agent) announce() {
	s := a.currentSession()
	if s == nil {
		return
	}
	state := wire.State{Mode: a.currentPowerMode(), Heartbeat: int((s.interval() + time.Second - 1) / time.Second), Link: a.currentLinkType()}
	frame, err := wire.Encode("", state)
	if err == nil {
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		err = s.Send(ctx, frame)
		cancel()
	}
	if err != nil {
		a.log.Debug("state not sent; the next hello carries it", "err", err)
	}
}
