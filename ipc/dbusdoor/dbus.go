// SPDX-License-Identifier: Apache-2.0

package dbusdoor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"tether/internal/busclient"

	"tether/ipc"
)

// dbusErrorFailed answers anything without a name of its own.
const dbusErrorFailed = "org.freedesktop.DBus.Error.Failed"

// statusTimeout bounds the status read that seeds the properties.
const statusTimeout = 10 * time.Second

// connectTimeout bounds connecting to the bus and taking the name, on a
// bus daemon that may be busy.
const connectTimeout = 10 * time.Second

// Config configures a Server.
type Config struct {
	// Bus is "system" (the default when empty), "session" or a bus
	// address; see DBusAddress.
	Bus string
	// Backend serves the calls.
	Backend ipc.Backend
	// Logger; nil means slog.Default().
	Logger *slog.Logger
}

// Server is the D-Bus door: the service org.tether.Push, whose methods
// a Backend answers and whose signals carry the backend's events, each to
// the one connection that subscribed for the app. The interface is
// described in docs/ipc.md.
//
// Who calls is asked of the bus daemon for every call (the Unix user and
// process of the calling connection); nothing the caller says about itself
// is trusted. The bus does not tell the caller's group: Caller.GID is 0.
type Server struct {
	backend ipc.Backend
	log     *slog.Logger
	conn    *busclient.Conn

	// ctx is the parent of every call's context; Close cancels it.
	ctx    context.Context
	cancel context.CancelFunc

	// Each wakes one of Serve's goroutines; a send never blocks.
	writerWake  chan struct{}
	controlWake chan struct{}
	statusWake  chan struct{}

	mu      sync.Mutex
	closed  bool
	serving bool
	// queue holds the signals waiting for the writer, in order.
	queue []outSignal
	// subs holds the subscriptions that have not ended.
	subs map[*dbusSub]struct{}
	// current is each app's newest subscription made on this door, from
	// the moment it is being made.
	current map[string]*dbusSub
	// toCancel holds subscriptions ended from inside a Listener call,
	// whose backend cancel must wait for the control goroutine.
	toCancel []*dbusSub
	// announced is the status the properties were last announced with.
	announced ipc.Status

	calls     sync.WaitGroup // method calls in progress
	loops     sync.WaitGroup // the call dispatcher and Serve's goroutines
	closeOnce sync.Once
	closeErr  error
}

// outSignal is one signal waiting to be written. A subscription's signals
// count against its room; final is the last one it gets and is written
// even when the subscription's other signals are discarded.
type outSignal struct {
	msg   *signalMsg
	sub   *dbusSub
	final bool
}

// signalMsg is a signal from the door's object; dest, when set, is the one
// connection it goes to.
type signalMsg struct {
	dest, iface, member string
	body                []any
}

// New connects to the bus, serves the object and takes the
// name org.tether.Push, so that calls are answered from the moment the name
// is visible. It fails when the bus cannot be reached, when the bus's
// policy does not let this user own the name (the policy file
// packaging/dbus/org.tether.Push.conf is not installed) or when another
// connection owns it. Signals go out once Serve runs.
func New(cfg Config) (*Server, error) {
	if cfg.Backend == nil {
		return nil, errors.New("dbus door: no backend")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.Default()
	}
	addr, err := ipc.DBusAddress(cfg.Bus, os.Getenv)
	if err != nil {
		return nil, fmt.Errorf("dbus door: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Server{
		backend:     cfg.Backend,
		log:         log.With("door", "dbus"),
		ctx:         ctx,
		cancel:      cancel,
		writerWake:  make(chan struct{}, 1),
		controlWake: make(chan struct{}, 1),
		statusWake:  make(chan struct{}, 1),
		subs:        make(map[*dbusSub]struct{}),
		current:     make(map[string]*dbusSub),
	}
	if err := s.connect(addr); err != nil {
		cancel()
		return nil, fmt.Errorf("dbus door: %w", err)
	}
	return s, nil
}

// connect opens a connection, serves the object from its first message,
// watches for connections leaving the bus, and then takes the name.
func (s *Server) connect(addr string) error {
	ctx, cancel := context.WithTimeout(s.ctx, statusTimeout)
	st, err := s.backend.Status(ctx)
	cancel()
	if err != nil {
		// The first StatusChanged announces what differs from zero.
		s.log.Warn("read the status for the bus properties", "err", err)
	}
	s.announced = st

	ctx, cancel = context.WithTimeout(s.ctx, connectTimeout)
	defer cancel()
	conn, err := busclient.Dial(ctx, addr)
	if err != nil {
		return fmt.Errorf("connect to the bus at %s: %w", addr, err)
	}
	s.conn = conn
	s.loops.Add(1)
	go func() {
		defer s.loops.Done()
		s.dispatch()
	}()
	fail := func(what string, err error) error {
		s.cancel()
		conn.Close()
		s.loops.Wait()
		s.calls.Wait()
		return fmt.Errorf("%s: %w", what, err)
	}
	err = conn.AddMatch(ctx, "type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop.DBus',member='NameOwnerChanged'")
	if err != nil {
		return fail("watch connections leaving the bus", err)
	}
	err = conn.RequestName(ctx, ipc.DBusName)
	if errors.Is(err, busclient.ErrNameTaken) {
		return fail("take the name", fmt.Errorf("the name %s is owned by another connection on the bus; is another tetherd running?", ipc.DBusName))
	}
	if err != nil {
		return fail(fmt.Sprintf("take the name %s (is org.tether.Push.conf installed in the bus's policy directory?)", ipc.DBusName), err)
	}
	return nil
}

// Serve writes the door's signals and follows the bus (connections that
// leave, status changes) until ctx ends, Close is called or the connection
// to the bus is lost. It then closes the server. Losing the bus is an
// error; the other two are not.
func (s *Server) Serve(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	if s.serving {
		s.mu.Unlock()
		return errors.New("dbus door: already serving")
	}
	s.serving = true
	s.loops.Add(3)
	s.mu.Unlock()

	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	go func() {
		defer s.loops.Done()
		s.writeLoop()
	}()
	go func() {
		defer s.loops.Done()
		s.controlLoop()
	}()
	go func() {
		defer s.loops.Done()
		s.followBus()
	}()
	select {
	case <-s.ctx.Done():
	case <-s.conn.Done():
	}
	lost := !s.isClosed()
	s.Close()
	if lost {
		return errors.New("dbus door: lost the connection to the bus")
	}
	return nil
}

// Close ends every subscription, leaves the bus (which releases the name)
// and returns once the calls in progress and Serve's goroutines are done.
func (s *Server) Close() error {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		var cancels []func()
		for u := range s.subs {
			s.endLocked(u, true, "")
			if c := u.takeCancelLocked(); c != nil {
				cancels = append(cancels, c)
			}
		}
		s.queue = nil
		s.mu.Unlock()

		s.cancel()
		for _, c := range cancels {
			c()
		}
		if err := s.conn.Close(); err != nil {
			s.closeErr = fmt.Errorf("dbus door: close: %w", err)
		}
	})
	s.calls.Wait()
	s.loops.Wait()
	return s.closeErr
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// StatusChanged asks the door to read the backend's status again and to
// announce the properties that changed (PropertiesChanged). It never
// blocks; calls that come faster than the door reads are merged.
func (s *Server) StatusChanged() { wake(s.statusWake) }

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// writeLoop is the one goroutine that writes the door's signals.
func (s *Server) writeLoop() {
	stopped := s.conn.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-stopped:
			return
		case <-s.writerWake:
		}
		for {
			msg := s.nextSignal()
			if msg == nil {
				break
			}
			// A signal to a connection that has just left is dropped by
			// the bus; a closed connection ends the loop above.
			s.conn.Emit(msg.dest, ipc.DBusPath, msg.iface, msg.member, msg.body...)
		}
	}
}

// nextSignal takes the next signal to write, skipping those of
// subscriptions whose signals are discarded.
func (s *Server) nextSignal() *signalMsg {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) > 0 {
		out := s.queue[0]
		s.queue[0] = outSignal{}
		s.queue = s.queue[1:]
		if out.sub != nil && !out.final {
			out.sub.queued--
			if out.sub.discard {
				continue
			}
		}
		return out.msg
	}
	s.queue = nil // let the backing array go
	return nil
}

// followBus ends the subscriptions of connections that left the bus.
func (s *Server) followBus() {
	for {
		sig, err := s.conn.NextSignal(s.ctx)
		if err != nil {
			return // the door is closing, or the bus went
		}
		s.handleBusSignal(sig)
	}
}

// controlLoop follows the backend: it cancels subscriptions ended while the
// backend was calling the door, and announces status changes.
func (s *Server) controlLoop() {
	stopped := s.conn.Done()
	for {
		select {
		case <-s.ctx.Done():
			return
		case <-stopped:
			return
		case <-s.controlWake:
			s.runCancels()
		case <-s.statusWake:
			s.announceStatus()
		}
	}
}

func (s *Server) handleBusSignal(sig *busclient.Signal) {
	if sig.Sender != "org.freedesktop.DBus" || sig.Name != "org.freedesktop.DBus.NameOwnerChanged" || len(sig.Body) != 3 {
		return
	}
	name, _ := sig.Body[0].(string)
	newOwner, _ := sig.Body[2].(string)
	if strings.HasPrefix(name, ":") && newOwner == "" {
		s.dropConnection(name)
	}
}

// dropConnection ends the subscriptions of a connection that left the bus.
// What they had not acked stays with the backend for the next subscriber.
func (s *Server) dropConnection(name string) {
	var cancels []func()
	s.mu.Lock()
	for u := range s.subs {
		if u.dest == name {
			s.log.Debug("subscriber left the bus", "app", u.app, "connection", name)
			s.endLocked(u, true, "")
			if c := u.takeCancelLocked(); c != nil {
				cancels = append(cancels, c)
			}
		}
	}
	s.mu.Unlock()
	for _, c := range cancels {
		c()
	}
}

func (s *Server) runCancels() {
	s.mu.Lock()
	var cancels []func()
	for _, u := range s.toCancel {
		if c := u.takeCancelLocked(); c != nil {
			cancels = append(cancels, c)
		}
	}
	s.toCancel = nil
	s.mu.Unlock()
	for _, c := range cancels {
		c()
	}
}

// enqueueLocked queues a signal for the writer. The caller holds s.mu.
func (s *Server) enqueueLocked(out outSignal) {
	s.queue = append(s.queue, out)
	wake(s.writerWake)
}

// endLocked ends a subscription: it gets no more signals, and, if discard
// is set, none of those still queued. A non-empty reason is sent to the
// subscriber as SubscriptionEnded, after whatever is still sent. The
// caller holds s.mu and cancels the backend subscription itself unless the
// backend ended it.
func (s *Server) endLocked(u *dbusSub, discard bool, reason string) {
	u.ended, u.discard = true, discard
	delete(s.subs, u)
	if s.current[u.app] == u {
		delete(s.current, u.app)
	}
	if reason != "" {
		s.enqueueLocked(outSignal{msg: u.signal("SubscriptionEnded", u.app, reason), sub: u, final: true})
	}
}

// dbusSub is one app's subscription on the bus: the Listener the door gives
// the backend. Its methods never block; they queue signals for the
// subscriber's connection, or end the subscription when it has too many
// waiting.
type dbusSub struct {
	s    *Server
	dest string // the subscriber's unique connection name
	app  string

	// Guarded by s.mu.
	queued    int  // signals waiting in s.queue, final ones aside
	ended     bool // no more signals are queued
	discard   bool // queued signals are not written
	replaced  bool // the backend ended the subscription
	cancel    func()
	cancelled bool
}

// takeCancelLocked returns the backend's cancel for an ended subscription,
// once, or nil when there is nothing (more) to cancel. The caller holds
// s.mu and calls the result without it.
func (u *dbusSub) takeCancelLocked() func() {
	if u.cancel == nil || u.cancelled || u.replaced {
		return nil
	}
	u.cancelled = true
	return u.cancel
}

// signal builds a signal of the door's interface addressed to the
// subscriber's connection alone.
func (u *dbusSub) signal(member string, body ...any) *signalMsg {
	return &signalMsg{dest: u.dest, iface: ipc.DBusInterface, member: member, body: body}
}

func (u *dbusSub) push(msg *signalMsg) {
	s := u.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if u.ended {
		return
	}
	if u.queued >= ipc.MaxQueuedEvents {
		s.log.Warn("too many signals wait for the subscriber; ending its subscription", "app", u.app, "connection", u.dest)
		s.endLocked(u, true, ipc.DBusEndOverflow)
		// The backend may be calling from under its own locks; its
		// cancel must come from elsewhere.
		s.toCancel = append(s.toCancel, u)
		wake(s.controlWake)
		return
	}
	u.queued++
	s.enqueueLocked(outSignal{msg: msg, sub: u})
}

// Deliver implements Listener.
func (u *dbusSub) Deliver(m ipc.Message) {
	extras := map[string]busclient.Variant{}
	if m.Priority != "" {
		extras["priority"] = busclient.MakeVariant(validUTF8(m.Priority))
	}
	if !m.SentTime.IsZero() {
		extras["sent_time"] = busclient.MakeVariant(m.SentTime.UnixMilli())
	}
	if len(m.Notification) > 0 {
		extras["notification"] = busclient.MakeVariant(validUTF8Map(m.Notification))
	}
	if m.Topic != "" {
		extras["topic"] = busclient.MakeVariant(validUTF8(m.Topic))
	}
	if len(m.Raw) > 0 {
		extras["raw"] = busclient.MakeVariant(m.Raw)
	}
	extras["ttl"] = busclient.MakeVariant(clampUint32(m.TTL))
	u.push(u.signal("Message", u.app, validUTF8(m.ID), validUTF8(m.From), validUTF8(m.CollapseKey), validUTF8Map(m.Data), extras))
}

// SendResult implements Listener.
func (u *dbusSub) SendResult(r ipc.SendResult) {
	u.push(u.signal("SendResult", u.app, r.ID, validUTF8(r.Err)))
}

// DeletedMessages implements Listener.
func (u *dbusSub) DeletedMessages(count int) {
	u.push(u.signal("DeletedMessages", u.app, clampUint32(int64(count))))
}

// TokenRefreshed implements Listener.
func (u *dbusSub) TokenRefreshed(sender, token string) {
	u.push(u.signal("TokenRefreshed", u.app, sender, token))
}

// Replaced implements Listener. The subscriber is told with
// SubscriptionEnded, unless the one that took over is the same connection
// subscribing again: it is still the app's subscriber.
func (u *dbusSub) Replaced() {
	s := u.s
	s.mu.Lock()
	defer s.mu.Unlock()
	if u.ended {
		return
	}
	u.replaced = true
	reason := ipc.DBusEndReplaced
	if cur := s.current[u.app]; cur != nil && cur != u && cur.dest == u.dest {
		reason = ""
	}
	s.endLocked(u, false, reason)
}

// validUTF8 makes s fit a D-Bus string, which must be UTF-8, as JSON
// decoding does.
func validUTF8(s string) string { return strings.ToValidUTF8(s, "\uFFFD") }

func validUTF8Map(m map[string]string) map[string]string {
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[validUTF8(k)] = validUTF8(v)
	}
	return out
}

func clampUint32(n int64) uint32 {
	return uint32(min(max(n, 0), 1<<32-1))
}
