//go:build !tether_nodbus

package main

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/godbus/dbus/v5"

	"tether/ipc"
)

// busConn is a connection to the agent over D-Bus (docs/ipc.md).
type busConn struct {
	ctx     context.Context
	conn    *dbus.Conn
	agent   dbus.BusObject
	signals chan *dbus.Signal
	// owner is the agent's unique connection name, once known: only its
	// signals are the agent's.
	owner string
}

// dialBus connects to the bus that bus names (system, session or an
// address). When ctx ends the connection is closed, which ends any call or
// wait in progress.
func dialBus(ctx context.Context, bus string, getenv func(string) string) (*busConn, error) {
	addr, err := ipc.DBusAddress(bus, getenv)
	if err != nil {
		return nil, usagef("--dbus: %v", err)
	}
	conn, err := dbus.Connect(addr, dbus.WithContext(ctx), dbus.WithSignalHandler(dbus.NewSequentialSignalHandler()))
	if err != nil {
		return nil, fmt.Errorf("cannot reach the bus at %s: %w", addr, err)
	}
	b := &busConn{ctx: ctx, conn: conn, agent: conn.Object(ipc.DBusName, ipc.DBusPath), signals: make(chan *dbus.Signal, 16)}
	conn.Signal(b.signals)
	return b, nil
}

func (b *busConn) close() { b.conn.Close() }

// callBus makes one request on a bus connection of its own.
func callBus(ctx context.Context, bus string, getenv func(string) string, req ipc.Request) (ipc.Response, error) {
	b, err := dialBus(ctx, bus, getenv)
	if err != nil {
		return ipc.Response{}, err
	}
	defer b.close()
	return b.do(req)
}

// listenBus makes a new bus connection the app's subscriber.
func listenBus(ctx context.Context, bus string, getenv func(string) string, app string) (listener, error) {
	b, err := dialBus(ctx, bus, getenv)
	if err != nil {
		return nil, err
	}
	if err := b.subscribe(app); err != nil {
		b.close()
		return nil, err
	}
	return &busListener{b: b, app: app}, nil
}

// callMethod calls a method of the agent's interface; a D-Bus error
// comes back as an *ipc.ResponseError, its code the error's short name.
func (b *busConn) callMethod(method string, args ...any) *dbus.Call {
	call := b.agent.CallWithContext(b.ctx, ipc.DBusInterface+"."+method, 0, args...)
	call.Err = busError(call.Err)
	return call
}

const busErrorPrefix = ipc.DBusInterface + ".Error."

func busError(err error) error {
	var e dbus.Error
	if !errors.As(err, &e) {
		return err
	}
	var text string
	if len(e.Body) > 0 {
		text, _ = e.Body[0].(string)
	}
	switch e.Name {
	case "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner":
		return fmt.Errorf("cannot reach the agent on the bus: %s", text)
	case "org.freedesktop.DBus.Error.NoReply":
		if strings.Contains(text, "disconnected") {
			return errAgentLeft // while it was answering
		}
	}
	code, ok := strings.CutPrefix(e.Name, busErrorPrefix)
	if !ok {
		code = e.Name
	}
	return &ipc.ResponseError{Code: code, Message: text}
}

// do makes one request of the socket protocol through the agent's
// D-Bus methods, so that every command works the same through either door.
func (b *busConn) do(req ipc.Request) (ipc.Response, error) {
	switch req.Op {
	case "register":
		var resp ipc.Response
		err := b.callMethod("Register", req.App, req.Sender).Store(&resp.Token)
		return resp, err
	case "unregister":
		return ipc.Response{}, b.callMethod("Unregister", req.App, req.Sender).Err
	case "subscribe_topic":
		return ipc.Response{}, b.callMethod("SubscribeTopic", req.App, req.Sender, req.Topic).Err
	case "unsubscribe_topic":
		return ipc.Response{}, b.callMethod("UnsubscribeTopic", req.App, req.Sender, req.Topic).Err
	case "status":
		return b.status()
	case "send":
		return b.send(req)
	}
	return ipc.Response{}, fmt.Errorf("op %q has no D-Bus method", req.Op)
}

func (b *busConn) status() (ipc.Response, error) {
	var props map[string]dbus.Variant
	err := b.agent.CallWithContext(b.ctx, "org.freedesktop.DBus.Properties.GetAll", 0, ipc.DBusInterface).Store(&props)
	if err != nil {
		return ipc.Response{}, busError(err)
	}
	var st ipc.Status
	var apps, queued, pending uint32
	for _, p := range []struct {
		name string
		dst  any
	}{
		{"Connected", &st.Connected}, {"Server", &st.Server}, {"DeviceID", &st.DeviceID}, {"PowerMode", &st.PowerMode},
		{"Apps", &apps}, {"QueuedDownstream", &queued}, {"PendingUpstream", &pending},
	} {
		v, ok := props[p.name]
		if !ok {
			return ipc.Response{}, fmt.Errorf("the agent has no property %s", p.name)
		}
		if err := v.Store(p.dst); err != nil {
			return ipc.Response{}, fmt.Errorf("the agent's property %s: %w", p.name, err)
		}
	}
	st.Apps, st.QueuedDownstream, st.PendingUpstream = int(apps), int(queued), int(pending)
	return ipc.Response{Status: &st}, nil
}

// send sends an upstream message. With req.Wait it subscribes for the app
// first, since the outcome is a signal to the app's subscriber, and waits
// for it.
func (b *busConn) send(req ipc.Request) (ipc.Response, error) {
	options := map[string]dbus.Variant{}
	if req.TTL != nil {
		if ttl := *req.TTL; ttl >= 0 && ttl <= math.MaxUint32 {
			options["ttl"] = dbus.MakeVariant(uint32(ttl))
		} else {
			options["ttl"] = dbus.MakeVariant(ttl) // for the agent to refuse
		}
	}
	if req.Priority != "" {
		options["priority"] = dbus.MakeVariant(req.Priority)
	}
	data := req.Data
	if data == nil {
		data = map[string]string{}
	}
	if req.Wait {
		if err := b.subscribe(req.App); err != nil {
			return ipc.Response{}, err
		}
		defer b.callMethod("Unsubscribe", req.App)
	}
	var resp ipc.Response
	if err := b.callMethod("Send", req.App, req.To, req.MessageID, data, options).Store(&resp.MessageID); err != nil {
		return ipc.Response{}, err
	}
	if !req.Wait {
		return resp, nil
	}
	for {
		ev, err := b.next(req.App)
		if err != nil {
			return resp, err
		}
		switch {
		case ev.Event == ipc.EventReplaced:
			return resp, fmt.Errorf("another listener for app %q took over before the outcome came", req.App)
		case ev.MessageID != resp.MessageID:
			// Messages are not acked, so they come again to the app's
			// listener; outcomes of other sends are not ours.
		case ev.Event == ipc.EventSent:
			resp.Sent = true
			return resp, nil
		case ev.Event == ipc.EventSendError:
			return resp, &ipc.ResponseError{Code: ipc.CodeSendError, Message: ev.Error}
		}
	}
}

// subscribe makes this connection the app's subscriber. It learns the
// agent's connection first, so that the agent's leaving and its signals
// can be told from anyone else's.
func (b *busConn) subscribe(app string) error {
	err := b.conn.AddMatchSignal(
		dbus.WithMatchSender("org.freedesktop.DBus"),
		dbus.WithMatchMember("NameOwnerChanged"),
		dbus.WithMatchArg(0, ipc.DBusName))
	if err != nil {
		return fmt.Errorf("watch the agent on the bus: %w", err)
	}
	// Subscribe starts the agent if the bus can activate it.
	if err := b.callMethod("Subscribe", app).Err; err != nil {
		return err
	}
	if err := b.conn.BusObject().CallWithContext(b.ctx, "org.freedesktop.DBus.GetNameOwner", 0, ipc.DBusName).Store(&b.owner); err != nil {
		if b.ctx.Err() != nil {
			return b.ctx.Err()
		}
		return errAgentLeft // it answered Subscribe, so it was there
	}
	return nil
}

// errAgentLeft: the agent's connection left the bus.
var errAgentLeft = errors.New("the agent left the bus")

// next waits for the next of the app's events from the agent.
func (b *busConn) next(app string) (*ipc.Event, error) {
	for {
		var s *dbus.Signal
		select {
		case s = <-b.signals:
		case <-b.ctx.Done():
			return nil, b.ctx.Err()
		}
		if s == nil {
			return nil, errors.New("the connection to the bus closed")
		}
		if s.Sender == "org.freedesktop.DBus" {
			if s.Name == "org.freedesktop.DBus.NameOwnerChanged" && len(s.Body) == 3 && s.Body[0] == ipc.DBusName && s.Body[1] != "" {
				return nil, errAgentLeft
			}
			continue
		}
		if s.Sender != b.owner || s.Path != ipc.DBusPath {
			continue // not the agent's
		}
		ev, err := busEvent(s)
		if err != nil {
			return nil, err
		}
		if ev == nil || eventApp(ev) != app {
			continue
		}
		if ev.Event == "" {
			return nil, fmt.Errorf("the agent ended the subscription for app %q: %s", app, ev.Error)
		}
		return ev, nil
	}
}

func eventApp(ev *ipc.Event) string {
	if ev.Message != nil {
		return ev.Message.App
	}
	return ev.App
}

// busEvent turns a signal of the agent's interface into the event the
// socket would have sent, or nil for a signal that is none of them. A
// SubscriptionEnded for another reason than replacement is an event with
// no kind, the reason in Error.
func busEvent(s *dbus.Signal) (*ipc.Event, error) {
	member, ok := strings.CutPrefix(s.Name, ipc.DBusInterface+".")
	if !ok {
		return nil, nil
	}
	bad := func(err error) error {
		return fmt.Errorf("the agent sent a %s signal of signature %s: %w", member, dbus.SignatureOf(s.Body...), err)
	}
	var ev ipc.Event
	switch member {
	case "Message":
		var m ipc.Message
		var extras map[string]dbus.Variant
		if err := dbus.Store(s.Body, &m.App, &m.ID, &m.From, &m.CollapseKey, &m.Data, &extras); err != nil {
			return nil, bad(err)
		}
		if err := messageExtras(&m, extras); err != nil {
			return nil, bad(err)
		}
		ev = ipc.Event{Event: ipc.EventMessage, Message: &m}
	case "SendResult":
		if err := dbus.Store(s.Body, &ev.App, &ev.MessageID, &ev.Error); err != nil {
			return nil, bad(err)
		}
		ev.Event = ipc.EventSent
		if ev.Error != "" {
			ev.Event = ipc.EventSendError
		}
	case "DeletedMessages":
		var count uint32
		if err := dbus.Store(s.Body, &ev.App, &count); err != nil {
			return nil, bad(err)
		}
		ev.Event, ev.Count = ipc.EventDeletedMessages, int(count)
	case "TokenRefreshed":
		if err := dbus.Store(s.Body, &ev.App, &ev.Sender, &ev.Token); err != nil {
			return nil, bad(err)
		}
		ev.Event = ipc.EventTokenRefreshed
	case "SubscriptionEnded":
		var reason string
		if err := dbus.Store(s.Body, &ev.App, &reason); err != nil {
			return nil, bad(err)
		}
		if reason == ipc.DBusEndReplaced {
			ev.Event = ipc.EventReplaced
		} else {
			ev.Error = reason
		}
	default:
		return nil, nil
	}
	return &ev, nil
}

// messageExtras reads the extras of a Message signal that the socket's
// message has fields for; others are for later versions.
func messageExtras(m *ipc.Message, extras map[string]dbus.Variant) error {
	if v, ok := extras["priority"]; ok {
		if err := v.Store(&m.Priority); err != nil {
			return fmt.Errorf("priority: %w", err)
		}
	}
	if v, ok := extras["sent_time"]; ok {
		var ms int64
		if err := v.Store(&ms); err != nil {
			return fmt.Errorf("sent_time: %w", err)
		}
		m.SentTime = time.UnixMilli(ms).UTC()
	}
	if v, ok := extras["notification"]; ok {
		if err := v.Store(&m.Notification); err != nil {
			return fmt.Errorf("notification: %w", err)
		}
	}
	if v, ok := extras["ttl"]; ok {
		var ttl uint32
		if err := v.Store(&ttl); err != nil {
			return fmt.Errorf("ttl: %w", err)
		}
		m.TTL = int64(ttl)
	}
	return nil
}

// busListener is a subscription on the bus. Acks are calls of their own,
// answered before ack returns.
type busListener struct {
	b   *busConn
	app string
}

func (l *busListener) next() (*ipc.Event, error) { return l.b.next(l.app) }
func (l *busListener) pendingAcks() int          { return 0 }
func (l *busListener) close()                    { l.b.close() }

func (l *busListener) ack(id string) error {
	if err := l.b.callMethod("Ack", l.app, []string{id}).Err; err != nil {
		return fmt.Errorf("ack %s: %w", id, err)
	}
	return nil
}
