// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"tether/ipc"
	"tether/store"
	"tether/wire"
)

// confirmRefusals is how many times in a row the server must refuse the
// device's credentials before the agent takes it that the server no longer
// knows the device: more than once, so that a refusal by mistake, or by a
// node of a cluster that is behind the others, does not cost the device
// its identity and its apps their tokens.
const confirmRefusals = 2

// refusals is what the agent keeps of the server's refusals of hello. The
// link's goroutine alone touches it: Hello, Serve and Refused run there.
type refusals struct {
	// credentials counts the refusals in a row of the device's
	// credentials.
	credentials int
	// logged is the problem last logged as an error: a refusal that goes
	// on is logged once, not at every attempt.
	logged string
}

// once logs problem as an error, unless it is the one logged last.
func (r *refusals) once(log *slog.Logger, problem, msg string, args ...any) {
	if r.logged == problem {
		return
	}
	r.logged = problem
	log.Error(msg, args...)
}

// Refused decides what the device presents next after the server refused
// hello (Handler).
func (h linkHandler) Refused(hello wire.Hello, e wire.Error) bool {
	a := h.a
	r := &a.refusals
	switch {
	case e.Code == wire.CodeRevoked:
		// Revocation sticks: the device does not check in anew, whatever
		// key or certificate it holds.
		r.once(a.log, e.Code, "the server revoked this device or its certificate: it stays offline, and does not check in anew",
			"device", hello.DeviceID, "reason", e.Message)
		return false
	case e.Code != wire.CodeUnauthorized:
		return true
	case hello.DeviceID == "":
		r.once(a.log, "check-in", "the server refused the check-in: give tetherd the server's enrollment key (enroll_key_file) or a client certificate it accepts (cert and key)",
			"reason", e.Message)
		return false
	}
	r.credentials++
	if r.credentials < confirmRefusals {
		a.log.Warn("the server refused the device's credentials; asking once more before checking in anew", "device", hello.DeviceID)
		return true
	}
	if !a.canEnroll {
		r.once(a.log, "unknown device", "the server no longer knows this device: give tetherd an enrollment key (enroll_key_file) or a client certificate (cert and key) to check in anew, or restore the server's store",
			"device", hello.DeviceID)
		return false
	}
	if err := a.store.ForgetCredentials(hello.DeviceID); err != nil {
		a.log.Error("cannot drop the credentials the server refuses; the next attempt tries again", "device", hello.DeviceID, "err", err)
		return true
	}
	r.credentials = 0
	a.log.Warn("the server no longer knows this device: checking in anew, then registering its apps again", "old_device", hello.DeviceID)
	a.statusChanged() // no device ID until the check-in
	return true
}

// restore registers again, on the session, the registrations the device
// had before it checked in anew (stale in the store), in a goroutine that
// wg counts, and tells each app of its tokens that changed. Upstream
// messages wait until it is over: the server would refuse them
// (NotRegistered) for a registration it does not have yet. It returns nil
// when there is nothing to restore; else a channel that yields once, nil
// when it is over, or why the session must end so that the next one tries
// again.
func (a *Agent) restore(ctx context.Context, wg *sync.WaitGroup) <-chan error {
	done := make(chan error, 1)
	regs, err := a.store.Registrations()
	if err != nil {
		done <- fmt.Errorf("cannot tell which registrations to make again: %w", err)
		return done
	}
	var stale []store.Registration
	for _, reg := range regs {
		if reg.Stale {
			stale = append(stale, reg)
		}
	}
	if len(stale) == 0 {
		return nil
	}
	a.outbox.setRestoring(true)
	wg.Go(func() { done <- a.reregister(ctx, stale) })
	return done
}

// reregister registers each of regs again, one after the other: a device
// has a few, and the server answers each at once. A registration the
// server refuses for good (its sender is gone) stays stale, so that a
// later session tries it again; the app's sends to it are refused
// NotRegistered meanwhile, as they would be anyway. Any other failure
// ends the session, to try again in the next.
func (a *Agent) reregister(ctx context.Context, regs []store.Registration) error {
	a.log.Info("registering the apps again", "registrations", len(regs))
	for _, reg := range regs {
		req := &request{kind: wire.TypeRegister, reg: store.Registration{App: reg.App, Sender: reg.Sender, Owner: reg.Owner, VAPID: reg.VAPID}}
		res := a.roundTrip(ctx, req, wire.Register{App: reg.App, Sender: reg.Sender, VAPID: reg.VAPID})
		switch {
		case res.err == nil:
			a.inbox.forget(reg.App, nil, true) // the new token, if it changed
		case errors.Is(res.err, ipc.ErrNotRegistered), errors.Is(res.err, ipc.ErrInvalidArgument):
			a.log.Warn("the server refuses the registration; it stays as it was", "app", reg.App, "sender", reg.Sender, "err", res.err)
		default:
			return fmt.Errorf("register app %q sender %q again: %w", reg.App, reg.Sender, res.err)
		}
	}
	return nil
}
