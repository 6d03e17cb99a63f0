// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"tether/ipc"
	"tether/store"
	"tether/wire"
)

// Retry of upstream messages the server could not take for the moment
// (an error frame with code unavailable or internal): after upstreamRetryMin,
// doubling up to upstreamRetryMax, within one session. A new session resends
// everything pending anyway.
const (
	upstreamRetryMin = 30 * time.Second
	upstreamRetryMax = 5 * time.Minute
)

// request is a register or unregister waiting for the server's answer. The
// session goroutine persists the answer before it handles later frames, so
// that a message sent right after a registration finds it in the store.
type request struct {
	kind  wire.Type // TypeRegister, TypeUnregister, TypeSubscribe or TypeUnsubscribe
	reg   store.Registration
	topic string             // of a subscribe or unsubscribe
	done  chan requestResult // buffered; written once by whoever removes the request
}

type requestResult struct {
	token    string
	endpoint string // of a Web Push registration
	err      error
}

// linkHandler connects the Link to the Agent without making Hello and
// Serve part of the Agent's API.
type linkHandler struct{ a *Agent }

// Hello presents the stored credentials when they belong to the
// configured servers, else asks for a check-in.
func (h linkHandler) Hello() (wire.Hello, error) {
	a := h.a
	hello := wire.Hello{Agent: a.name, Mode: a.currentPowerMode(), Link: a.currentLinkType()}
	creds, err := a.store.Credentials()
	switch {
	case err == nil && a.ownsCredentials(creds):
		hello.DeviceID, hello.DeviceSecret = creds.DeviceID, creds.Secret
	case err == nil:
		a.log.Warn("stored credentials are for another server; checking in anew", "stored_server", creds.Server)
		hello.EnrollKey = a.enrollKey
	case errors.Is(err, store.ErrNotFound):
		a.log.Info("checking in")
		hello.EnrollKey = a.enrollKey
	default:
		return wire.Hello{}, err
	}
	return hello, nil
}

// Serve runs one session: it adopts the welcome (persisting check-in
// credentials before anything else), registers the apps again after a new
// check-in (restore), resends pending upstream messages and handles frames
// until the connection ends.
func (h linkHandler) Serve(ctx context.Context, s *Session) {
	a := h.a
	w := s.Welcome()
	if err := a.adopt(w); err != nil {
		a.log.Error("cannot use session", "err", err)
		return
	}
	a.refusals = refusals{}
	a.sweep() // the seen IDs of acked messages expire without a timer
	a.outbox.begin(s)
	a.statusChanged()
	a.wakeProber()
	var restoring sync.WaitGroup
	defer restoring.Wait() // after endSession, which ends its requests
	defer a.endSession()
	a.log.Info("connected", "server", a.link.Stats().Server, "device", w.DeviceID, "heartbeat", s.interval())

	r := &sessionRun{a: a, s: s, retry: map[outboxKey]bool{}, retryDelay: upstreamRetryMin}
	r.retryTimer = time.NewTimer(time.Hour)
	r.retryTimer.Stop()
	defer r.retryTimer.Stop()

	restored := a.restore(ctx, &restoring)
	if restored == nil {
		r.resendOutbox(ctx, nil, true)
	}
	for {
		select {
		case data, ok := <-s.Frames():
			if !ok {
				return
			}
			if err := r.handleBurst(ctx, drain(data, s.Frames())); err != nil {
				// The server resends unacked messages only in a new
				// session: ending this one, and reconnecting after the
				// backoff, is what gets them delivered again.
				a.log.Warn("ending the session", "err", err)
				return
			}
		case err := <-restored:
			restored = nil
			if err != nil {
				a.log.Warn("ending the session", "err", err)
				return
			}
			a.outbox.setRestoring(false)
			a.log.Info("apps registered again")
			r.resendOutbox(ctx, nil, true)
		case <-r.retryTimer.C:
			keys := r.retry
			r.retry = map[outboxKey]bool{}
			r.retryDelay = min(2*r.retryDelay, upstreamRetryMax)
			r.resendOutbox(ctx, keys, true)
		case <-a.flushDeferred:
			keys := a.outbox.takeDeferred()
			if len(keys) > 0 {
				a.log.Debug("sending deferred upstream messages", "count", len(keys))
				r.resendOutbox(ctx, keys, false)
			}
		case <-ctx.Done():
			return
		}
	}
}

// adopt checks the welcome against what the agent knows and persists new
// credentials, or the configured servers with the credentials it presented.
func (a *Agent) adopt(w wire.Welcome) error {
	if w.DeviceSecret != "" {
		err := a.store.SetCredentials(store.Credentials{Server: a.credentialsServer(), DeviceID: w.DeviceID, Secret: w.DeviceSecret})
		if err != nil {
			return err
		}
		a.log.Info("checked in", "device", w.DeviceID)
		return nil
	}
	creds, err := a.store.Credentials()
	if err != nil {
		return fmt.Errorf("welcome without credentials: %w", err)
	}
	if !a.ownsCredentials(creds) || creds.DeviceID != w.DeviceID {
		return fmt.Errorf("welcome for device %q without credentials; this is device %q", w.DeviceID, creds.DeviceID)
	}
	// The cluster took the credentials: they now belong to the configured
	// list, so that a later list need only share a node with this one, not
	// with the list of the check-in.
	if servers := a.credentialsServer(); creds.Server != servers {
		// The session is good without it; the next welcome tries again.
		if err := a.store.SetServer(creds.DeviceID, servers); err != nil {
			a.log.Warn("the credentials stay with the servers of before", "err", err)
			return nil
		}
		a.log.Info("credentials now for the configured servers", "device", creds.DeviceID, "servers", a.endpoints)
	}
	return nil
}

// endSession marks the agent offline and fails the requests that were
// waiting for an answer on this session.
func (a *Agent) endSession() {
	a.outbox.end()
	a.signalExpiry() // pending upstream messages may expire while offline
	a.statusChanged()
}

// drain returns first and whatever frames are already queued behind it,
// without waiting, up to the most messages one ack can carry.
func drain(first []byte, frames <-chan []byte) [][]byte {
	burst := [][]byte{first}
	for len(burst) < wire.MaxAckIDs {
		select {
		case data, ok := <-frames:
			if !ok {
				return burst
			}
			burst = append(burst, data)
		default:
			return burst
		}
	}
	return burst
}

// sessionRun is the state of one session that only its goroutine touches.
type sessionRun struct {
	a          *Agent
	s          *Session
	retry      map[outboxKey]bool
	retryTimer *time.Timer
	retryDelay time.Duration
}

// handleBurst handles frames that arrived together. Answers and acks are
// handled in order first; then the messages among them are stored in one
// transaction and acknowledged with one ack. It fails only when the
// messages could not be stored.
func (r *sessionRun) handleBurst(ctx context.Context, burst [][]byte) error {
	msgs := make([]wire.Message, 0, len(burst))
	for _, data := range burst {
		f, err := r.s.Codec().Decode(data)
		if err != nil {
			r.reject(ctx, "", wire.CodeBadFrame, err)
			continue
		}
		switch f.Type {
		case wire.TypeMessage:
			var m wire.Message
			if err := f.Decode(&m); err != nil {
				r.reject(ctx, f.Ref, wire.CodeBadFrame, err)
				continue
			}
			msgs = append(msgs, m)
		case wire.TypeRegistered, wire.TypeUnregistered, wire.TypeSubscribed, wire.TypeUnsubscribed:
			r.answer(ctx, f)
		case wire.TypeTokenRefresh:
			r.tokenRefreshed(ctx, f)
		case wire.TypeDeletedMessages:
			r.deletedMessages(ctx, f)
		case wire.TypeUpstreamAck:
			r.upstreamAcked(ctx, f)
		case wire.TypeError:
			r.serverError(f)
		case wire.TypeGoAway:
			r.goAway(f)
		case wire.TypeHello, wire.TypeWelcome, wire.TypeRegister, wire.TypeUnregister, wire.TypeAck, wire.TypeUpstream, wire.TypeSubscribe, wire.TypeUnsubscribe, wire.TypeState:
			r.reject(ctx, f.Ref, wire.CodeUnknownType, fmt.Errorf("the agent does not take %s frames", f.Type))
		default:
			r.reject(ctx, f.Ref, wire.CodeUnknownType, fmt.Errorf("unknown frame type %q", f.Type))
		}
	}
	if len(msgs) > 0 {
		return r.storeMessages(ctx, msgs)
	}
	return nil
}

// reject logs a frame the agent cannot use and tells the server why.
func (r *sessionRun) reject(ctx context.Context, ref, code string, problem error) {
	r.a.log.Warn("bad frame from server", "code", code, "ref", ref, "err", problem)
	r.send(ctx, ref, wire.Error{Code: code, Message: problem.Error()})
}

func (r *sessionRun) send(ctx context.Context, ref string, b wire.Body) {
	frame, err := r.s.Codec().Encode(ref, b)
	if err == nil {
		err = r.s.Send(ctx, frame)
	}
	if err != nil {
		r.a.log.Debug("frame not sent", "type", b.FrameType(), "err", err)
	}
}

// storeMessages persists a batch of downstream messages, acknowledges all
// of them (duplicates too) and then wakes their apps' listeners. When the
// store fails nothing is acknowledged and the error ends the session, so
// that the server delivers them again in the next one.
func (r *sessionRun) storeMessages(ctx context.Context, msgs []wire.Message) error {
	a := r.a
	now := a.now()
	recs := make([]store.Message, len(msgs))
	for i, m := range msgs {
		recs[i] = store.Message{
			ID: m.ID, App: m.App, From: m.From, Token: m.Token,
			CollapseKey: m.CollapseKey, Data: m.Data, Priority: m.Priority,
			SentTime: m.SentTime, TTL: m.TTL, Notification: m.Notification, Topic: m.Topic, Raw: m.Raw,
			Received: now, Expires: now.Add(max(time.Duration(m.TTL)*time.Second, minHold)),
		}
	}
	// The server has its ack only after the commit.
	res := a.inbox.add(recs)
	if res.err != nil {
		return fmt.Errorf("%d downstream messages not stored, not acknowledged: %w", len(msgs), res.err)
	}
	outcomes, dropped := res.outcomes, res.dropped
	ids := make([]string, 0, len(msgs))
	acked := map[string]bool{}
	woken := map[string]bool{}
	stored, dups := 0, 0
	high := false
	for i, m := range msgs {
		high = high || m.Priority == "high"
		if !acked[m.ID] {
			acked[m.ID] = true
			ids = append(ids, m.ID)
		}
		switch outcomes[i] {
		case store.Stored:
			stored++
			woken[m.App] = true
		case store.Duplicate:
			dups++
		case store.NoRegistration:
			a.log.Warn("message for no registration dropped", "id", m.ID, "app", m.App, "from", m.From)
		}
	}
	r.send(ctx, "", wire.Ack{IDs: ids})
	a.log.Debug("downstream messages stored", "stored", stored, "duplicates", dups, "acked", len(ids))
	if high {
		a.releaseDeferred() // the radio is awake anyway
	}
	if stored > 0 {
		a.signalExpiry()
	}
	for app := range woken {
		a.inbox.wake(app)
	}
	for app, ids := range dropped {
		a.log.Warn("an app holds more than its quota: its oldest messages were dropped", "app", app, "count", len(ids))
		a.inbox.forget(app, ids, true) // the listener reports the count
	}
	return nil
}

// answer completes a request with the server's answer, persisting it
// first.
func (r *sessionRun) answer(ctx context.Context, f wire.Frame) {
	a := r.a
	req := a.outbox.takeRequest(f.Ref)
	if req == nil {
		a.log.Warn("answer to no pending request", "type", f.Type, "ref", f.Ref)
		return
	}
	var app, sender, token, endpoint, topic string
	var err error
	switch f.Type {
	case wire.TypeRegistered:
		var body wire.Registered
		err = f.Decode(&body)
		app, sender, token, endpoint = body.App, body.Sender, body.Token, body.Endpoint
	case wire.TypeUnregistered:
		var body wire.Unregistered
		err = f.Decode(&body)
		app, sender = body.App, body.Sender
	case wire.TypeSubscribed:
		var body wire.Subscribed
		err = f.Decode(&body)
		app, sender, topic = body.App, body.Sender, body.Topic
	case wire.TypeUnsubscribed:
		var body wire.Unsubscribed
		err = f.Decode(&body)
		app, sender, topic = body.App, body.Sender, body.Topic
	}
	if err != nil {
		r.reject(ctx, f.Ref, wire.CodeBadFrame, err)
		req.done <- requestResult{err: fmt.Errorf("%w: bad answer from the server", ipc.ErrRefused)}
		return
	}
	if f.Type != answerType[req.kind] || app != req.reg.App || sender != req.reg.Sender || topic != req.topic {
		err := fmt.Errorf("%s for app %q sender %q answers %s for app %q sender %q", f.Type, app, sender, req.kind, req.reg.App, req.reg.Sender)
		r.reject(ctx, f.Ref, wire.CodeInvalid, err)
		req.done <- requestResult{err: fmt.Errorf("%w: mismatched answer from the server", ipc.ErrRefused)}
		return
	}
	req.done <- a.complete(req, token, endpoint)
}

// answerType is the frame that grants each request.
var answerType = map[wire.Type]wire.Type{
	wire.TypeRegister:    wire.TypeRegistered,
	wire.TypeUnregister:  wire.TypeUnregistered,
	wire.TypeSubscribe:   wire.TypeSubscribed,
	wire.TypeUnsubscribe: wire.TypeUnsubscribed,
}

// complete persists the outcome of a request the server has granted.
func (a *Agent) complete(req *request, token, endpoint string) requestResult {
	app, sender := req.reg.App, req.reg.Sender
	switch req.kind {
	case wire.TypeSubscribe, wire.TypeUnsubscribe, wire.TypeState:
		// Subscriptions live on the server; the device keeps nothing.
		a.log.Info(string(req.kind)+"d", "app", app, "sender", sender, "topic", req.topic)
		return requestResult{}
	case wire.TypeUnregister:
		dropped, err := a.store.Unregister(app, sender)
		switch {
		case errors.Is(err, store.ErrNotFound):
		case err != nil:
			return requestResult{err: fmt.Errorf("%w: %w", ipc.ErrStorage, err)}
		}
		a.inbox.forget(app, dropped, false)
		a.log.Info("unregistered", "app", app, "sender", sender, "dropped_messages", len(dropped))
		return requestResult{}
	}
	reg := req.reg
	reg.Token, reg.Endpoint = token, endpoint
	switch err := a.store.Register(reg); {
	case errors.Is(err, store.ErrOwned):
		return requestResult{err: fmt.Errorf("app %q belongs to another user: %w", app, ipc.ErrPermission)}
	case err != nil:
		return requestResult{err: fmt.Errorf("%w: %w", ipc.ErrStorage, err)}
	}
	a.log.Info("registered", "app", app, "sender", sender)
	return requestResult{token: token, endpoint: endpoint}
}

// serverError handles an error frame: the answer to a request, to an
// upstream message, or a complaint about the session.
func (r *sessionRun) serverError(f wire.Frame) {
	a := r.a
	var e wire.Error
	if err := f.Decode(&e); err != nil {
		// Never answer an error with an error: two peers could loop.
		a.log.Warn("bad error frame from server", "ref", f.Ref, "err", err)
		return
	}
	if f.Ref == "" {
		a.log.Warn("server reports a problem", "code", e.Code, "message", e.Message)
		return
	}
	if req := a.outbox.takeRequest(f.Ref); req != nil {
		if req.kind == wire.TypeUnregister && e.Code == wire.CodeNotRegistered {
			req.done <- a.complete(req, "", "") // the server has no such registration either
			return
		}
		req.done <- requestResult{err: refusal(e)}
		return
	}
	key, ok := a.outbox.upstream(f.Ref)
	if !ok {
		a.log.Warn("server reports a problem with an unknown frame", "ref", f.Ref, "code", e.Code, "message", e.Message)
		return
	}
	if e.Code == wire.CodeUnavailable || e.Code == wire.CodeInternal {
		a.log.Info("server cannot take upstream message now; will retry", "app", key.app, "id", key.id, "code", e.Code)
		if len(r.retry) == 0 {
			r.retryTimer.Reset(r.retryDelay)
		}
		r.retry[key] = true
		return
	}
	a.log.Warn("server refused upstream message", "app", key.app, "id", key.id, "code", e.Code, "message", e.Message)
	r.finishUpstream(key, e.String())
}

// refusal turns an error frame answering a request into the ipc error a
// door understands.
func refusal(e wire.Error) error {
	switch e.Code {
	case wire.CodeInvalid, wire.CodeBadFrame:
		return fmt.Errorf("%w: server says %s", ipc.ErrInvalidArgument, e)
	case wire.CodeNotRegistered:
		return fmt.Errorf("%w: server says %s", ipc.ErrNotRegistered, e)
	}
	return fmt.Errorf("%w: %s", ipc.ErrRefused, e)
}

func (r *sessionRun) upstreamAcked(ctx context.Context, f wire.Frame) {
	var ack wire.UpstreamAck
	if err := f.Decode(&ack); err != nil {
		r.reject(ctx, f.Ref, wire.CodeBadFrame, err)
		return
	}
	if ack.Error == "" {
		r.retryDelay = upstreamRetryMin
	}
	r.finishUpstream(outboxKey{ack.App, ack.ID}, ack.Error)
}

// finishUpstream removes a message from the outbox and tells its app.
func (r *sessionRun) finishUpstream(key outboxKey, result string) {
	a := r.a
	a.outbox.finish(key)
	delete(r.retry, key)
	switch _, err := a.store.RemoveUpstream(key.app, key.id); {
	case errors.Is(err, store.ErrNotFound):
		a.log.Debug("outcome of no pending upstream message", "app", key.app, "id", key.id)
		return
	case err != nil:
		// It stays pending, is sent again, and the server drops the repeat
		// and answers again.
		a.log.Error("upstream outcome not stored", "app", key.app, "id", key.id, "err", err)
		return
	}
	a.report(ipc.SendResult{App: key.app, ID: key.id, Err: result})
}

// resendOutbox sends the pending upstream messages (only those in keys,
// when keys is not nil), and gives up on those whose time to live has run
// out. With mayDefer, normal-priority ones wait in low power mode.
func (r *sessionRun) resendOutbox(ctx context.Context, keys map[outboxKey]bool, mayDefer bool) {
	a := r.a
	pending, err := a.store.Outbox()
	if err != nil {
		a.log.Error("read outbox", "err", err)
		return
	}
	now := a.now()
	a.log.Debug("resending outbox", "pending", len(pending), "only_retries", keys != nil)
	for _, u := range pending {
		key := outboxKey{u.App, u.ID}
		if keys != nil && !keys[key] {
			continue
		}
		if u.Expired(now) {
			r.finishUpstream(key, ResultTTLExceeded)
			continue
		}
		ttl := min(int64((u.Expires.Sub(now)+time.Second-1)/time.Second), wire.MaxTTL)
		a.sendUpstream(ctx, r.s, u, ttl, mayDefer)
	}
}

// sendUpstream sends one upstream message with ttl seconds to live. With
// mayDefer, a normal-priority message in low power mode is kept back until
// high-priority traffic wakes the radio anyway or the mode changes; a
// high-priority one releases those kept back.
func (a *Agent) sendUpstream(ctx context.Context, s *Session, u store.Upstream, ttl int64, mayDefer bool) {
	key := outboxKey{u.App, u.ID}
	ref := upstreamRef(key)
	high := u.Priority == "high"
	if mayDefer && !high && a.currentPowerMode() == PowerLow {
		a.outbox.keepBack(key)
		a.log.Debug("upstream message deferred: low power", "app", u.App, "id", u.ID)
		return
	}
	if high {
		defer a.releaseDeferred()
	}
	frame, err := wire.Encode(ref, wire.Upstream{App: u.App, To: u.To, ID: u.ID, TTL: ttl, Priority: u.Priority, Data: u.Data})
	if err != nil {
		a.log.Error("encode upstream message", "app", u.App, "id", u.ID, "err", err)
		return
	}
	if !a.outbox.sending(s, ref, key) {
		a.log.Debug("upstream message not sent now: its session ended, or registers the apps again; that resends it", "app", u.App, "id", u.ID)
		return
	}
	if err := s.Send(ctx, frame); err != nil {
		a.log.Debug("upstream message not sent; will resend", "app", u.App, "id", u.ID, "err", err)
		return
	}
	a.log.Debug("upstream message sent", "app", u.App, "id", u.ID, "ttl", ttl)
}

// upstreamRef is the ref of an upstream message's frames: the same for
// every resend, so the map of refs stays as small as the outbox.
func upstreamRef(key outboxKey) string {
	sum := sha256.Sum256([]byte(key.app + "\x00" + key.id))
	return "up-" + hex.EncodeToString(sum[:12])
}
