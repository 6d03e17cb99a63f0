// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"errors"
	"fmt"

	"tether/store"
	"tether/wire"
)

// Power modes, as the agent's power source reports them and Status shows
// them.
const (
	// PowerMains: prompt delivery of everything.
	PowerMains = "mains"
	// PowerBattery: the server may hold normal-priority messages and
	// deliver them in batches.
	PowerBattery = "battery"
	// PowerLow: only high-priority messages move; normal-priority upstream
	// messages wait for high-priority traffic or a better mode, and the
	// heartbeat stays at the longest interval known to hold.
	PowerLow = "low"
)

// ErrPowerMode is returned for a power mode the agent does not know.
var ErrPowerMode = errors.New("unknown power mode")

// unknownNetwork keys what is learned while the agent is not told which
// network it is on.
const unknownNetwork = "-"

// NetworkChanged tells the agent about the device's route to the world:
// up is whether a default route exists, network identifies the network it
// goes through (an interface and gateway, say). When the route appears or
// moves, the agent reconnects at once, skipping any backoff; while there
// is none, it stops dialling. The heartbeat follows what was learned for
// the network.
func (a *Agent) NetworkChanged(up bool, network string) {
	if network == "" {
		network = unknownNetwork
	}
	a.condMu.Lock()
	wasUp, was := a.routeUp, a.network
	a.routeUp, a.network = up, network
	a.condMu.Unlock()
	switch {
	case !up:
		if wasUp {
			a.log.Info("no route: dialling held")
		}
		a.link.Hold()
	case !wasUp:
		a.useNetwork(network)
		a.link.Wake("route-up")
	case was == unknownNetwork:
		// The first report, of the network the agent is already using.
		a.useNetwork(network)
	case was != network:
		a.useNetwork(network)
		a.link.Wake("route-changed")
	}
	a.statusChanged()
}

// useNetwork loads what was learned about network and sets the heartbeat
// from it, when the heartbeat is adaptive.
func (a *Agent) useNetwork(network string) {
	if a.policy == nil {
		return
	}
	known, err := a.store.Heartbeat(network)
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		a.log.Warn("read learned heartbeat; starting afresh", "network", network, "err", err)
	}
	l := newLearner(*a.policy, known)
	a.condMu.Lock()
	a.learner = l
	a.condMu.Unlock()
	a.link.SetHeartbeat(l.interval())
	a.log.Info("network", "id", network, "heartbeat", l.interval(), "settled", l.settled())
	a.announce()
	a.wakeProber()
}

// SetPowerMode tells the agent how the device is powered: PowerMains,
// PowerBattery or PowerLow.
func (a *Agent) SetPowerMode(mode string) error {
	switch mode {
	case PowerMains, PowerBattery, PowerLow:
	default:
		return fmt.Errorf("set power mode %q: %w", mode, ErrPowerMode)
	}
	a.condMu.Lock()
	old := a.powerMode
	a.powerMode = mode
	a.condMu.Unlock()
	if old == mode {
		return nil
	}
	a.log.Info("power mode", "mode", mode, "was", old)
	if old == PowerLow {
		a.releaseDeferred()
	}
	a.announce()
	a.wakeProber()
	a.statusChanged()
	return nil
}

// SetWiFi tells the agent whether the device reaches the server over
// Wi-Fi. The agent tells the server, which lets low-urgency Web Push
// messages through to a device on battery only over Wi-Fi (RFC 8030,
// docs/power.md).
func (a *Agent) SetWiFi(wifi bool) {
	link := wire.LinkOther
	if wifi {
		link = wire.LinkWiFi
	}
	a.condMu.Lock()
	old := a.linkType
	a.linkType = link
	a.condMu.Unlock()
	if old != link {
		a.log.Info("link", "link", link)
		a.announce()
	}
}

func (a *Agent) currentLinkType() string {
	a.condMu.Lock()
	defer a.condMu.Unlock()
	return a.linkType
}

func (a *Agent) currentPowerMode() string {
	a.condMu.Lock()
	defer a.condMu.Unlock()
	return a.powerMode
}

// PrepareForSleep closes the connection cleanly before the system
// suspends: queued acknowledgements go out, then a close frame. The agent
// dials again on Resume.
func (a *Agent) PrepareForSleep(ctx context.Context) error {
	a.log.Info("system going to sleep: closing the connection")
	return a.link.Suspend(ctx)
}

// Resume reconnects after the system woke up, unless there is no route.
func (a *Agent) Resume() {
	a.condMu.Lock()
	up := a.routeUp
	a.condMu.Unlock()
	if !up {
		a.log.Info("system resumed; waiting for a route")
		return
	}
	a.log.Info("system resumed: reconnecting")
	a.link.Wake("resume")
}

// releaseDeferred asks the session to send the upstream messages kept back
// in low power mode.
func (a *Agent) releaseDeferred() {
	select {
	case a.flushDeferred <- struct{}{}:
	default:
	}
}
