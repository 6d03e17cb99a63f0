// SPDX-License-Identifier: Apache-2.0

// Package ipctest provides an in-memory ipc.Backend for testing the doors
// (ipc/socketdoor, ipc/dbusdoor) and their clients without the agent, and
// the helpers their tests share.
//
// It keeps the agent's rules in miniature, so that a door's tests see real
// answers: an app ID belongs to the Unix user that first registered it,
// each app has one listener (a new one replaces the old), stored messages
// are delivered a window at a time until acked, unacked ones come again on
// the next listen, an app has at most 20 pending upstream messages, and a
// TTL of 0 fails at once when offline. It stores nothing on disk, talks to
// no server and, unlike the agent, grants root nothing special. It is not
// for production use.
package ipctest

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"sync"

	"tether/ipc"
	"tether/wire"
)

const (
	// Window is how many delivered messages an app may leave unacked.
	Window = 100
	// MaxPending is how many upstream messages an app may have waiting
	// for an outcome.
	MaxPending = 20
)

type registration struct{ app, sender string }

type subscription struct {
	l         ipc.Listener
	delivered map[string]bool // unacked messages handed to l
}

type pendingSend struct {
	req    ipc.SendRequest
	result chan ipc.SendResult
}

// Backend is an in-memory ipc.Backend. The zero value is not usable; call
// New.
type Backend struct {
	deviceID string

	mu        sync.Mutex
	connected bool
	server    string
	owners    map[string]uint32
	tokens    map[registration]string
	vapid     map[registration]string
	queued    map[string][]ipc.Message // per app, unacked, in arrival order
	subs      map[string]*subscription
	pending   map[string][]*pendingSend // per app, in send order
	sends     map[string][]ipc.SendRequest
	acked     map[string][]string
	ackCalls  map[string]int
	topics    map[registration][]string
	powerMode string
	onStatus  func()
	lastCall  ipc.Caller
	nextID    int
}

// New returns an empty backend that reports the given server and device ID
// in its status and starts out connected.
func New(server, deviceID string) *Backend {
	return &Backend{
		server:    server,
		deviceID:  deviceID,
		connected: true,
		powerMode: "mains",
		topics:    make(map[registration][]string),
		vapid:     make(map[registration]string),
		owners:    make(map[string]uint32),
		tokens:    make(map[registration]string),
		queued:    make(map[string][]ipc.Message),
		subs:      make(map[string]*subscription),
		pending:   make(map[string][]*pendingSend),
		sends:     make(map[string][]ipc.SendRequest),
		acked:     make(map[string][]string),
		ackCalls:  make(map[string]int),
	}
}

// OnStatusChange sets a function called, outside the backend's lock,
// after each change that SetConnected, SetServer or SetPowerMode makes to
// the status.
func (b *Backend) OnStatusChange(f func()) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.onStatus = f
}

// SetPowerMode sets the power mode the status reports.
func (b *Backend) SetPowerMode(mode string) { b.changeStatus(func() { b.powerMode = mode }) }

// SetServer sets the server the status reports, as an agent moving to
// another node of a cluster does.
func (b *Backend) SetServer(server string) { b.changeStatus(func() { b.server = server }) }

// changeStatus runs change under the backend's lock, then tells the
// OnStatusChange function outside it.
func (b *Backend) changeStatus(change func()) {
	b.mu.Lock()
	change()
	f := b.onStatus
	b.mu.Unlock()
	if f != nil {
		f()
	}
}

// RefreshToken gives (app, sender) a new token and tells the app's
// listener, if any.
func (b *Backend) RefreshToken(app, sender, token string) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tokens[registration{app, sender}] = token
	if s := b.subs[app]; s != nil {
		s.l.TokenRefreshed(sender, token)
	}
}

// Topics returns the topics (app, sender) is subscribed to, in
// subscription order.
func (b *Backend) Topics(app, sender string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.topics[registration{app, sender}])
}

// SetConnected sets whether the backend claims to be connected to the
// server.
func (b *Backend) SetConnected(connected bool) { b.changeStatus(func() { b.connected = connected }) }

// SetOwner makes uid the owner of app, as if that user had registered it.
func (b *Backend) SetOwner(app string, uid uint32) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.owners[app] = uid
}

// LastCaller returns the caller of the most recent Backend call.
func (b *Backend) LastCaller() ipc.Caller {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.lastCall
}

// Push stores a downstream message for m.App and delivers it if the app's
// listener has room in its window.
func (b *Backend) Push(m ipc.Message) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.queued[m.App] = append(b.queued[m.App], m)
	b.pump(m.App)
}

// DeleteMessages tells app's listener, if any, that count messages were
// dropped before delivery.
func (b *Backend) DeleteMessages(app string, count int) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s := b.subs[app]; s != nil {
		s.l.DeletedMessages(count)
	}
}

// Complete gives the outcome of a pending upstream message: sent if errText
// is empty, else failed for that reason.
func (b *Backend) Complete(app, id, errText string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	i := slices.IndexFunc(b.pending[app], func(p *pendingSend) bool { return p.req.ID == id })
	if i < 0 {
		return fmt.Errorf("complete %q for app %q: no such pending message", id, app)
	}
	p := b.pending[app][i]
	b.pending[app] = slices.Delete(b.pending[app], i, i+1)
	r := ipc.SendResult{App: app, ID: id, Err: errText}
	p.result <- r
	if s := b.subs[app]; s != nil {
		s.l.SendResult(r)
	}
	return nil
}

// Acked returns the IDs app has acked, in order.
func (b *Backend) Acked(app string) []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.acked[app])
}

// AckCalls returns how many Ack calls app's acks took.
func (b *Backend) AckCalls(app string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.ackCalls[app]
}

// Sends returns the upstream messages accepted for app, in order.
func (b *Backend) Sends(app string) []ipc.SendRequest {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.sends[app])
}

// Listening reports whether app has a listener.
func (b *Backend) Listening(app string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.subs[app] != nil
}

// pump delivers app's queued messages that its listener has not seen, as
// far as the window allows. The caller holds b.mu; Listener methods do not
// block, so calling them under it is safe.
func (b *Backend) pump(app string) {
	s := b.subs[app]
	if s == nil {
		return
	}
	for _, m := range b.queued[app] {
		if len(s.delivered) >= Window {
			return
		}
		if !s.delivered[m.ID] {
			s.delivered[m.ID] = true
			s.l.Deliver(m)
		}
	}
}

// authorize records the caller and checks that it owns app. The caller
// holds b.mu.
func (b *Backend) authorize(c ipc.Caller, op, app string) error {
	b.lastCall = c
	if app == "" {
		return fmt.Errorf("%s: no app ID: %w", op, ipc.ErrInvalidArgument)
	}
	owner, ok := b.owners[app]
	if !ok {
		return fmt.Errorf("%s for app %q: %w", op, app, ipc.ErrUnknownApp)
	}
	if owner != c.UID {
		return fmt.Errorf("%s for app %q: it belongs to uid %d, not %d: %w", op, app, owner, c.UID, ipc.ErrPermission)
	}
	return nil
}

// Register implements ipc.Backend. A registration with
// ipc.WebPushSender gets the endpoint https://SERVER/up/TOKEN; the VAPID
// key is kept for VAPID.
func (b *Backend) Register(ctx context.Context, c ipc.Caller, req ipc.RegisterRequest) (ipc.Registration, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	app, sender := req.App, req.Sender
	if _, known := b.owners[app]; !known && app != "" {
		b.owners[app] = c.UID
	}
	if err := b.authorize(c, "register", app); err != nil {
		return ipc.Registration{}, err
	}
	if sender == "" {
		return ipc.Registration{}, fmt.Errorf("register app %q: no sender ID: %w", app, ipc.ErrInvalidArgument)
	}
	if req.VAPID != "" && sender != ipc.WebPushSender {
		return ipc.Registration{}, fmt.Errorf("register app %q: a VAPID key is for sender %s only: %w", app, ipc.WebPushSender, ipc.ErrInvalidArgument)
	}
	key := registration{app, sender}
	token, ok := b.tokens[key]
	if !ok {
		b.nextID++
		token = "token-" + strconv.Itoa(b.nextID)
		b.tokens[key] = token
		b.vapid[key] = req.VAPID
	}
	reg := ipc.Registration{Token: token}
	if sender == ipc.WebPushSender {
		reg.Endpoint = "https://" + b.server + "/up/" + token
	}
	return reg, nil
}

// VAPID returns the VAPID key app registered with for sender.
func (b *Backend) VAPID(app, sender string) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.vapid[registration{app, sender}]
}

// Unregister implements ipc.Backend.
func (b *Backend) Unregister(ctx context.Context, c ipc.Caller, app, sender string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.authorize(c, "unregister", app); err != nil {
		return err
	}
	key := registration{app, sender}
	if _, ok := b.tokens[key]; !ok {
		return fmt.Errorf("unregister app %q from sender %q: %w", app, sender, ipc.ErrNotRegistered)
	}
	delete(b.tokens, key)
	return nil
}

// Listen implements ipc.Backend. It delivers what is queued before it
// returns, as the agent may.
func (b *Backend) Listen(ctx context.Context, c ipc.Caller, app string, l ipc.Listener) (func(), error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.authorize(c, "listen", app); err != nil {
		return nil, err
	}
	if old := b.subs[app]; old != nil {
		old.l.Replaced()
	}
	s := &subscription{l: l, delivered: make(map[string]bool)}
	b.subs[app] = s
	b.pump(app)
	return func() {
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.subs[app] == s {
			delete(b.subs, app)
		}
	}, nil
}

// Ack implements ipc.Backend.
func (b *Backend) Ack(ctx context.Context, c ipc.Caller, app string, ids []string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.authorize(c, "ack", app); err != nil {
		return err
	}
	if len(ids) == 0 {
		return fmt.Errorf("ack for app %q: no message IDs: %w", app, ipc.ErrInvalidArgument)
	}
	b.queued[app] = slices.DeleteFunc(b.queued[app], func(m ipc.Message) bool { return slices.Contains(ids, m.ID) })
	if s := b.subs[app]; s != nil {
		for _, id := range ids {
			delete(s.delivered, id)
		}
	}
	b.acked[app] = append(b.acked[app], ids...)
	b.ackCalls[app]++
	b.pump(app)
	return nil
}

// Send implements ipc.Backend.
func (b *Backend) Send(ctx context.Context, c ipc.Caller, req ipc.SendRequest) (string, <-chan ipc.SendResult, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if err := b.authorize(c, "send", req.App); err != nil {
		return "", nil, err
	}
	switch {
	case req.To == "":
		return "", nil, fmt.Errorf("send for app %q: no recipient: %w", req.App, ipc.ErrInvalidArgument)
	case req.TTL != nil && *req.TTL < 0:
		return "", nil, fmt.Errorf("send for app %q: negative ttl %d: %w", req.App, *req.TTL, ipc.ErrInvalidArgument)
	case req.Priority != "" && req.Priority != "normal" && req.Priority != "high":
		return "", nil, fmt.Errorf("send for app %q: priority %q is neither normal nor high: %w", req.App, req.Priority, ipc.ErrInvalidArgument)
	case wire.DataSize(req.Data) > wire.MaxDataSize:
		return "", nil, fmt.Errorf("send for app %q: data is %d bytes, limit %d: %w", req.App, wire.DataSize(req.Data), wire.MaxDataSize, ipc.ErrMessageTooBig)
	case len(b.pending[req.App]) >= MaxPending:
		return "", nil, fmt.Errorf("send for app %q: %d messages are pending: %w", req.App, MaxPending, ipc.ErrTooManyMessages)
	case req.TTL != nil && *req.TTL == 0 && !b.connected:
		return "", nil, fmt.Errorf("send for app %q with ttl 0: %w", req.App, ipc.ErrOffline)
	}
	if req.ID == "" {
		b.nextID++
		req.ID = "up-" + strconv.Itoa(b.nextID)
	}
	result := make(chan ipc.SendResult, 1)
	b.pending[req.App] = append(b.pending[req.App], &pendingSend{req: req, result: result})
	b.sends[req.App] = append(b.sends[req.App], req)
	return req.ID, result, nil
}

// SubscribeTopic implements ipc.Backend.
func (b *Backend) SubscribeTopic(ctx context.Context, c ipc.Caller, app, sender, topic string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	key, err := b.topicRegistration(c, "subscribe", app, sender, topic)
	if err != nil {
		return err
	}
	if !slices.Contains(b.topics[key], topic) {
		b.topics[key] = append(b.topics[key], topic)
	}
	return nil
}

// UnsubscribeTopic implements ipc.Backend.
func (b *Backend) UnsubscribeTopic(ctx context.Context, c ipc.Caller, app, sender, topic string) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	key, err := b.topicRegistration(c, "unsubscribe", app, sender, topic)
	if err != nil {
		return err
	}
	b.topics[key] = slices.DeleteFunc(b.topics[key], func(t string) bool { return t == topic })
	return nil
}

func (b *Backend) topicRegistration(c ipc.Caller, op, app, sender, topic string) (registration, error) {
	if err := b.authorize(c, op, app); err != nil {
		return registration{}, err
	}
	key := registration{app, sender}
	if _, ok := b.tokens[key]; !ok {
		return key, fmt.Errorf("%s app %q sender %q: %w", op, app, sender, ipc.ErrNotRegistered)
	}
	if topic == "" {
		return key, fmt.Errorf("%s app %q: no topic: %w", op, app, ipc.ErrInvalidArgument)
	}
	return key, nil
}

// Status implements ipc.Backend.
func (b *Backend) Status(ctx context.Context) (ipc.Status, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	st := ipc.Status{
		Connected: b.connected,
		Server:    b.server,
		DeviceID:  b.deviceID,
		Apps:      len(b.owners),
		PowerMode: b.powerMode,
	}
	for _, q := range b.queued {
		st.QueuedDownstream += len(q)
	}
	for _, p := range b.pending {
		st.PendingUpstream += len(p)
	}
	return st, nil
}
