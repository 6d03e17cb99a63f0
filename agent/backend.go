// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"tether/ipc"
	"tether/store"
	"tether/wire"
)

// The ipc.Backend methods. Each checks the caller first: an app ID belongs
// to the Unix user who registered it first, and root may act for any app.
// Errors wrap the ipc sentinels and name the app, never a token.

// Register returns the registration of (req.App, req.Sender): from the
// store when the device has one (no round trip, works offline), else from
// the server.
func (a *Agent) Register(ctx context.Context, c ipc.Caller, req ipc.RegisterRequest) (ipc.Registration, error) {
	app, sender := req.App, req.Sender
	if err := (wire.Register{App: app, Sender: sender, VAPID: req.VAPID}).Validate(); err != nil {
		return ipc.Registration{}, invalid("register", err)
	}
	owner := c.UID
	reserved, isReserved := a.appOwners[app]
	switch bound, err := a.store.Owner(app); {
	case errors.Is(err, store.ErrNotFound):
		if isReserved {
			if reserved != c.UID && !c.IsRoot() {
				return ipc.Registration{}, fmt.Errorf("register: app %q is reserved for another user: %w", app, ipc.ErrPermission)
			}
			owner = reserved
		}
	case err != nil:
		return ipc.Registration{}, fmt.Errorf("register: %w: %w", ipc.ErrStorage, err)
	case bound != c.UID && !c.IsRoot():
		return ipc.Registration{}, fmt.Errorf("register: app %q belongs to another user: %w", app, ipc.ErrPermission)
	default:
		owner = bound
	}
	switch reg, err := a.store.Registration(app, sender); {
	case err == nil && reg.VAPID != req.VAPID:
		// The endpoint is the app server's capability: another key would
		// let another app server push to it.
		return ipc.Registration{}, fmt.Errorf("register app %q: it is registered with another VAPID key; unregister first: %w", app, ipc.ErrInvalidArgument)
	case err == nil:
		return ipc.Registration{Token: reg.Token, Endpoint: reg.Endpoint}, nil
	case !errors.Is(err, store.ErrNotFound):
		return ipc.Registration{}, fmt.Errorf("register: %w: %w", ipc.ErrStorage, err)
	}
	if !c.IsRoot() && !isReserved {
		release, err := a.claimRegistration(owner)
		if err != nil {
			return ipc.Registration{}, fmt.Errorf("register app %q sender %q: %w", app, sender, err)
		}
		defer release()
	}
	r := &request{kind: wire.TypeRegister, reg: store.Registration{App: app, Sender: sender, Owner: owner, VAPID: req.VAPID}}
	res := a.roundTrip(ctx, r, wire.Register{App: app, Sender: sender, VAPID: req.VAPID})
	if res.err != nil {
		return ipc.Registration{}, fmt.Errorf("register app %q sender %q: %w", app, sender, res.err)
	}
	return ipc.Registration{Token: res.token, Endpoint: res.endpoint}, nil
}

// claimRegistration counts one more registration for Unix user uid, or
// fails with ipc.ErrTooManyRegistrations when the user already has the
// most allowed one user: those in the store (apps reserved in AppOwners
// aside, as their users are chosen) and those on their way to the server.
// The claim lasts until release, by when a registration the server
// granted is in the store.
func (a *Agent) claimRegistration(uid uint32) (release func(), err error) {
	a.regMu.Lock()
	defer a.regMu.Unlock()
	regs, err := a.store.Registrations()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ipc.ErrStorage, err)
	}
	held := a.registering[uid]
	for _, reg := range regs {
		if _, reserved := a.appOwners[reg.App]; reg.Owner == uid && !reserved {
			held++
		}
	}
	if held >= a.userRegs {
		return nil, fmt.Errorf("user %d has %d registrations, the most one user may have: %w", uid, held, ipc.ErrTooManyRegistrations)
	}
	a.registering[uid]++
	return func() {
		a.regMu.Lock()
		defer a.regMu.Unlock()
		if a.registering[uid]--; a.registering[uid] == 0 {
			delete(a.registering, uid)
		}
	}, nil
}

// Unregister drops the registration of (app, sender) on the server and then
// on the device, with the held messages from that sender. It needs the
// server: offline it fails with ipc.ErrOffline and changes nothing.
func (a *Agent) Unregister(ctx context.Context, c ipc.Caller, app, sender string) error {
	if err := a.authorize(c, app); err != nil {
		return fmt.Errorf("unregister: %w", err)
	}
	switch _, err := a.store.Token(app, sender); {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("unregister: app %q sender %q: %w", app, sender, ipc.ErrNotRegistered)
	case err != nil:
		return fmt.Errorf("unregister: %w: %w", ipc.ErrStorage, err)
	}
	req := &request{kind: wire.TypeUnregister, reg: store.Registration{App: app, Sender: sender}}
	if res := a.roundTrip(ctx, req, wire.Unregister{App: app, Sender: sender}); res.err != nil {
		return fmt.Errorf("unregister app %q sender %q: %w", app, sender, res.err)
	}
	return nil
}

// roundTrip sends a request on the current session and waits for the
// session goroutine to hand over the server's answer, already persisted.
func (a *Agent) roundTrip(ctx context.Context, req *request, body wire.Body) requestResult {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	ref := newID()
	frame, err := wire.Encode(ref, body)
	if err != nil {
		return requestResult{err: invalid(string(body.FrameType()), err)}
	}
	req.done = make(chan requestResult, 1)
	s := a.outbox.addRequest(ref, req)
	if s == nil {
		return requestResult{err: ipc.ErrOffline}
	}
	defer a.outbox.takeRequest(ref)
	if err := s.Send(ctx, frame); err != nil {
		return requestResult{err: fmt.Errorf("%w: %w", ipc.ErrOffline, err)}
	}
	select {
	case res := <-req.done:
		return res
	case <-ctx.Done():
		return requestResult{err: fmt.Errorf("waiting for the server: %w", ctx.Err())}
	}
}

// Listen makes l the app's listener and starts delivering what is held.
func (a *Agent) Listen(ctx context.Context, c ipc.Caller, app string, l ipc.Listener) (func(), error) {
	if l == nil {
		return nil, fmt.Errorf("listen: %w: no listener", ipc.ErrInvalidArgument)
	}
	if err := a.authorize(c, app); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	// Expired messages go now, so that they are reported, not delivered.
	a.sweep()
	return a.inbox.listen(app, l)
}

// Ack removes acknowledged messages from the store, in a transaction it
// may share with others, then frees their room in the app's window.
func (a *Agent) Ack(ctx context.Context, c ipc.Caller, app string, ids []string) error {
	if err := a.authorize(c, app); err != nil {
		return fmt.Errorf("ack: %w", err)
	}
	if len(ids) == 0 {
		return fmt.Errorf("ack: %w: no message IDs", ipc.ErrInvalidArgument)
	}
	if err := a.inbox.ack(app, ids); err != nil {
		return fmt.Errorf("ack: %w: %w", ipc.ErrStorage, err)
	}
	return nil
}

// Send persists an upstream message, then sends it if connected.
func (a *Agent) Send(ctx context.Context, c ipc.Caller, req ipc.SendRequest) (string, <-chan ipc.SendResult, error) {
	if err := a.authorize(c, req.App); err != nil {
		return "", nil, fmt.Errorf("send: %w", err)
	}
	if req.To == wire.WebPushSender {
		return "", nil, fmt.Errorf("send for app %q: Web Push has no upstream messages: %w", req.App, ipc.ErrInvalidArgument)
	}
	switch _, err := a.store.Token(req.App, req.To); {
	case errors.Is(err, store.ErrNotFound):
		return "", nil, fmt.Errorf("send: app %q sender %q: %w", req.App, req.To, ipc.ErrNotRegistered)
	case err != nil:
		return "", nil, fmt.Errorf("send: %w: %w", ipc.ErrStorage, err)
	}
	ttl := int64(wire.MaxTTL)
	if req.TTL != nil {
		ttl = *req.TTL
	}
	if req.ID == "" {
		req.ID = newID()
	}
	up := wire.Upstream{App: req.App, To: req.To, ID: req.ID, TTL: ttl, Priority: req.Priority, Data: req.Data}
	if err := up.Validate(); err != nil {
		return "", nil, invalid("send", err)
	}
	if ttl == 0 && a.currentSession() == nil {
		return "", nil, fmt.Errorf("send: time to live 0 and %w", ipc.ErrOffline)
	}

	key := outboxKey{req.App, req.ID}
	result := make(chan ipc.SendResult, 1)
	if !a.outbox.expect(key, result) { // before the message can be sent and acked
		return "", nil, fmt.Errorf("send: %w: message %q of app %q is already pending", ipc.ErrInvalidArgument, req.ID, req.App)
	}

	now := a.now()
	u, err := a.store.AddUpstream(store.Upstream{
		App: req.App, To: req.To, ID: req.ID, TTL: ttl, Priority: req.Priority, Data: req.Data,
		Created: now, Expires: now.Add(time.Duration(ttl) * time.Second),
	}, MaxPending)
	if err != nil {
		a.outbox.takeResult(key)
		switch {
		case errors.Is(err, store.ErrOutboxFull):
			return "", nil, fmt.Errorf("send: app %q has %d pending: %w", req.App, MaxPending, ipc.ErrTooManyMessages)
		case errors.Is(err, store.ErrDuplicate):
			return "", nil, fmt.Errorf("send: %w: message %q of app %q is already pending", ipc.ErrInvalidArgument, req.ID, req.App)
		}
		return "", nil, fmt.Errorf("send: %w: %w", ipc.ErrStorage, err)
	}
	a.signalExpiry()
	// Look the session up only now that the message is in the outbox: a
	// session that began since Send started has already resent the outbox
	// without it, and would leave it pending until the next connection; one
	// that begins from now on resends it with the rest.
	if s := a.currentSession(); s != nil {
		// Stored now, so it must reach the session even if the app hangs
		// up; a full queue waits for the writer or for the session's end,
		// after which the next session resends it.
		a.sendUpstream(context.WithoutCancel(ctx), s, u, ttl, true)
	}
	return req.ID, result, nil
}

// SubscribeTopic subscribes the app's registration with sender to topic
// on the server; the device keeps no copy of its subscriptions.
func (a *Agent) SubscribeTopic(ctx context.Context, c ipc.Caller, app, sender, topic string) error {
	return a.topicRequest(ctx, c, wire.Subscribe{App: app, Sender: sender, Topic: topic}, app, sender, topic)
}

// UnsubscribeTopic ends a subscription SubscribeTopic made.
func (a *Agent) UnsubscribeTopic(ctx context.Context, c ipc.Caller, app, sender, topic string) error {
	return a.topicRequest(ctx, c, wire.Unsubscribe{App: app, Sender: sender, Topic: topic}, app, sender, topic)
}

// topicRequest sends body, a subscribe or unsubscribe frame for (app,
// sender, topic), and waits for the server's answer.
func (a *Agent) topicRequest(ctx context.Context, c ipc.Caller, body wire.Body, app, sender, topic string) error {
	op := string(body.FrameType())
	if err := body.Validate(); err != nil {
		return invalid(op, err)
	}
	if err := a.authorize(c, app); err != nil {
		return fmt.Errorf("%s: %w", op, err)
	}
	switch _, err := a.store.Token(app, sender); {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("%s: app %q sender %q: %w", op, app, sender, ipc.ErrNotRegistered)
	case err != nil:
		return fmt.Errorf("%s: %w: %w", op, ipc.ErrStorage, err)
	}
	req := &request{kind: body.FrameType(), reg: store.Registration{App: app, Sender: sender}, topic: topic}
	if res := a.roundTrip(ctx, req, body); res.err != nil {
		return fmt.Errorf("%s app %q sender %q topic %q: %w", op, app, sender, topic, res.err)
	}
	return nil
}

// authorize checks that c may act for app, a registered app.
func (a *Agent) authorize(c ipc.Caller, app string) error {
	owner, err := a.store.Owner(app)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("app %q: %w", app, ipc.ErrUnknownApp)
	case err != nil:
		return fmt.Errorf("%w: %w", ipc.ErrStorage, err)
	case owner != c.UID && !c.IsRoot():
		return fmt.Errorf("app %q belongs to another user: %w", app, ipc.ErrPermission)
	}
	return nil
}

// invalid turns a wire validation error into an ipc.ErrInvalidArgument,
// or ipc.ErrMessageTooBig, that reads well to an app.
func invalid(op string, err error) error {
	msg := strings.TrimPrefix(err.Error(), wire.ErrBadFrame.Error()+": ")
	if errors.Is(err, wire.ErrDataTooBig) {
		return fmt.Errorf("%s: %w: %s", op, ipc.ErrMessageTooBig, strings.TrimPrefix(msg, wire.ErrDataTooBig.Error()+": "))
	}
	return fmt.Errorf("%s: %w: %s", op, ipc.ErrInvalidArgument, msg)
}
