// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strings"
	"time"

	"tether/internal/busclient"
	"tether/ipc"
)

// busConn is a connection to the agent over D-Bus (docs/ipc.md).
type busConn struct {
	conn *busclient.Conn
	// owner is the agent's unique connection name, once known: only its
	// signals are the agent's.
	owner string
}

// dialBus connects to the bus at addr.
func dialBus(ctx context.Context, addr string) (*busConn, error) {
	conn, err := busclient.Dial(ctx, addr)
	if err != nil {
		return nil, fmt.Errorf("%w: the bus at %s: %w", ErrUnreachable, addr, err)
	}
	return &busConn{conn: conn}, nil
}

func (b *busConn) close() { b.conn.Close() }

// listenBus makes a new bus connection the app's subscriber.
func listenBus(ctx context.Context, addr, app string) (*busStream, error) {
	b, err := dialBus(ctx, addr)
	if err != nil {
		return nil, err
	}
	if err := b.subscribe(ctx, app); err != nil {
		b.close()
		return nil, err
	}
	return &busStream{b: b, app: app}, nil
}

// callMethod calls a method of the agent's interface; a D-Bus error
// comes back as an *ipc.ResponseError, its code the error's short name.
func (b *busConn) callMethod(ctx context.Context, method string, args ...any) ([]any, error) {
	body, err := b.conn.Call(ctx, ipc.DBusName, ipc.DBusPath, ipc.DBusInterface, method, args...)
	return body, busError(err)
}

// callString calls a method that answers one string.
func (b *busConn) callString(ctx context.Context, method string, args ...any) (string, error) {
	body, err := b.callMethod(ctx, method, args...)
	if err != nil {
		return "", err
	}
	if s, ok := firstString(body); ok {
		return s, nil
	}
	return "", fmt.Errorf("the agent answered %s with %v, not a string", method, body)
}

func firstString(body []any) (string, bool) {
	if len(body) == 0 {
		return "", false
	}
	s, ok := body[0].(string)
	return s, ok
}

const busErrorPrefix = ipc.DBusInterface + ".Error."

func busError(err error) error {
	if errors.Is(err, busclient.ErrClosed) {
		return fmt.Errorf("%w: %w", ErrDisconnected, err)
	}
	var e *busclient.Error
	if !errors.As(err, &e) {
		return err
	}
	text, _ := firstString(e.Body)
	switch e.Name {
	case "org.freedesktop.DBus.Error.ServiceUnknown", "org.freedesktop.DBus.Error.NameHasNoOwner":
		return fmt.Errorf("%w on the bus: %s", ErrUnreachable, text)
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
func (b *busConn) do(ctx context.Context, req ipc.Request) (ipc.Response, error) {
	var resp ipc.Response
	var err error
	switch req.Op {
	case "register":
		return b.register(ctx, req)
	case "unregister":
		_, err = b.callMethod(ctx, "Unregister", req.App, req.Sender)
	case "subscribe_topic":
		_, err = b.callMethod(ctx, "SubscribeTopic", req.App, req.Sender, req.Topic)
	case "unsubscribe_topic":
		_, err = b.callMethod(ctx, "UnsubscribeTopic", req.App, req.Sender, req.Topic)
	case "status":
		return b.status(ctx)
	case "send":
		return b.send(ctx, req)
	default:
		err = fmt.Errorf("op %q has no D-Bus method", req.Op)
	}
	return resp, err
}

// register calls Register, or RegisterWithOptions when there are options
// or the sender is the Web Push sender, whose answer has the endpoint.
func (b *busConn) register(ctx context.Context, req ipc.Request) (ipc.Response, error) {
	var resp ipc.Response
	if req.VAPID == "" && req.Sender != ipc.WebPushSender {
		var err error
		resp.Token, err = b.callString(ctx, "Register", req.App, req.Sender)
		return resp, err
	}
	options := map[string]busclient.Variant{}
	if req.VAPID != "" {
		options["vapid"] = busclient.Variant{Sig: "s", Value: req.VAPID}
	}
	body, err := b.callMethod(ctx, "RegisterWithOptions", req.App, req.Sender, options)
	if err != nil {
		return resp, err
	}
	if err := storeAll(body, &resp.Token, &resp.Endpoint); err != nil {
		return resp, fmt.Errorf("the agent's answer to RegisterWithOptions: %w", err)
	}
	return resp, nil
}

func (b *busConn) status(ctx context.Context) (ipc.Response, error) {
	body, err := b.conn.Call(ctx, ipc.DBusName, ipc.DBusPath, "org.freedesktop.DBus.Properties", "GetAll", ipc.DBusInterface)
	if err != nil {
		return ipc.Response{}, busError(err)
	}
	var props map[string]any
	if len(body) == 1 {
		props, _ = body[0].(map[string]any)
	}
	if props == nil {
		return ipc.Response{}, fmt.Errorf("the agent answered GetAll with %v, not a{sv}", body)
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
		if err := storeVariant(v, p.dst); err != nil {
			return ipc.Response{}, fmt.Errorf("the agent's property %s: %w", p.name, err)
		}
	}
	st.Apps, st.QueuedDownstream, st.PendingUpstream = int(apps), int(queued), int(pending)
	return ipc.Response{Status: &st}, nil
}

// storeVariant stores a variant's value in dst, a pointer to its Go type.
func storeVariant(v any, dst any) error {
	vv, ok := v.(busclient.Variant)
	if !ok {
		return fmt.Errorf("%v is not a variant", v)
	}
	return store(vv.Value, dst)
}

// storeAll stores a body's values in dsts, one each.
func storeAll(body []any, dsts ...any) error {
	if len(body) != len(dsts) {
		return fmt.Errorf("%d values, want %d", len(body), len(dsts))
	}
	for i, v := range body {
		if err := store(v, dsts[i]); err != nil {
			return err
		}
	}
	return nil
}

// store stores a decoded value in dst, a pointer to the type it must
// have.
func store(v any, dst any) error {
	ok := false
	switch d := dst.(type) {
	case *string:
		*d, ok = v.(string)
	case *bool:
		*d, ok = v.(bool)
	case *uint32:
		*d, ok = v.(uint32)
	case *int64:
		*d, ok = v.(int64)
	case *[]byte:
		*d, ok = v.([]byte)
	case *map[string]any:
		*d, ok = v.(map[string]any)
	case *map[string]string:
		var m map[string]any
		if m, ok = v.(map[string]any); ok {
			*d = make(map[string]string, len(m))
			for k, e := range m {
				s, isString := e.(string)
				if !isString {
					return fmt.Errorf("value %v of key %q is not a string", e, k)
				}
				(*d)[k] = s
			}
		}
	}
	if !ok {
		return fmt.Errorf("%v (a %T) does not fit a %T", v, v, dst)
	}
	return nil
}

// send sends an upstream message. With req.Wait it subscribes for the app
// first, since the outcome is a signal to the app's subscriber, and waits
// for it.
func (b *busConn) send(ctx context.Context, req ipc.Request) (ipc.Response, error) {
	options := map[string]busclient.Variant{}
	if req.TTL != nil {
		if ttl := *req.TTL; ttl >= 0 && ttl <= math.MaxUint32 {
			options["ttl"] = busclient.Variant{Sig: "u", Value: uint32(ttl)}
		} else {
			options["ttl"] = busclient.Variant{Sig: "x", Value: ttl} // for the agent to refuse
		}
	}
	if req.Priority != "" {
		options["priority"] = busclient.Variant{Sig: "s", Value: req.Priority}
	}
	data := req.Data
	if data == nil {
		data = map[string]string{}
	}
	if req.Wait {
		if err := b.subscribe(ctx, req.App); err != nil {
			return ipc.Response{}, err
		}
		defer b.callMethod(ctx, "Unsubscribe", req.App)
	}
	var resp ipc.Response
	var err error
	if resp.MessageID, err = b.callString(ctx, "Send", req.App, req.To, req.MessageID, data, options); err != nil {
		return ipc.Response{}, err
	}
	if !req.Wait {
		return resp, nil
	}
	for {
		ev, err := b.next(ctx, req.App)
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
func (b *busConn) subscribe(ctx context.Context, app string) error {
	err := b.conn.AddMatch(ctx, "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',arg0='"+ipc.DBusName+"'")
	if err != nil {
		return fmt.Errorf("watch the agent on the bus: %w", err)
	}
	// Subscribe starts the agent if the bus can activate it.
	if _, err := b.callMethod(ctx, "Subscribe", app); err != nil {
		return err
	}
	body, err := b.conn.Call(ctx, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner", ipc.DBusName)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return errAgentLeft // it answered Subscribe, so it was there
	}
	b.owner, _ = firstString(body)
	return nil
}

// errAgentLeft: the agent's connection left the bus.
var errAgentLeft = fmt.Errorf("%w: it left the bus", ErrDisconnected)

// next waits for the next of the app's events from the agent.
func (b *busConn) next(ctx context.Context, app string) (*ipc.Event, error) {
	for {
		s, err := b.conn.NextSignal(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("%w: %w", ErrDisconnected, err)
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
			return nil, fmt.Errorf("%w: the agent ended the subscription for app %q: %s", ErrDisconnected, app, ev.Error)
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
func busEvent(s *busclient.Signal) (*ipc.Event, error) {
	member, ok := strings.CutPrefix(s.Name, ipc.DBusInterface+".")
	if !ok {
		return nil, nil
	}
	bad := func(err error) error {
		return fmt.Errorf("the agent sent a %s signal of signature %s: %w", member, s.Sig, err)
	}
	var ev ipc.Event
	switch member {
	case "Message":
		var m ipc.Message
		var extras map[string]any
		if err := storeAll(s.Body, &m.App, &m.ID, &m.From, &m.CollapseKey, &m.Data, &extras); err != nil {
			return nil, bad(err)
		}
		if err := messageExtras(&m, extras); err != nil {
			return nil, bad(err)
		}
		ev = ipc.Event{Event: ipc.EventMessage, Message: &m}
	case "SendResult":
		if err := storeAll(s.Body, &ev.App, &ev.MessageID, &ev.Error); err != nil {
			return nil, bad(err)
		}
		ev.Event = ipc.EventSent
		if ev.Error != "" {
			ev.Event = ipc.EventSendError
		}
	case "DeletedMessages":
		var count uint32
		if err := storeAll(s.Body, &ev.App, &count); err != nil {
			return nil, bad(err)
		}
		ev.Event, ev.Count = ipc.EventDeletedMessages, int(count)
	case "TokenRefreshed":
		if err := storeAll(s.Body, &ev.App, &ev.Sender, &ev.Token); err != nil {
			return nil, bad(err)
		}
		ev.Event = ipc.EventTokenRefreshed
	case "SubscriptionEnded":
		var reason string
		if err := storeAll(s.Body, &ev.App, &reason); err != nil {
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
func messageExtras(m *ipc.Message, extras map[string]any) error {
	var sentTime int64
	var ttl uint32
	for _, x := range []struct {
		key string
		dst any
	}{
		{"priority", &m.Priority}, {"notification", &m.Notification}, {"topic", &m.Topic},
		{"sent_time", &sentTime}, {"ttl", &ttl}, {"raw", &m.Raw},
	} {
		if v, ok := extras[x.key]; ok {
			if err := storeVariant(v, x.dst); err != nil {
				return fmt.Errorf("%s: %w", x.key, err)
			}
		}
	}
	if _, ok := extras["sent_time"]; ok {
		m.SentTime = time.UnixMilli(sentTime).UTC()
	}
	m.TTL = int64(ttl)
	return nil
}

// busStream is a subscription on the bus. Acks are calls of their own.
type busStream struct {
	b   *busConn
	app string
}

func (l *busStream) next(ctx context.Context) (*ipc.Event, error) { return l.b.next(ctx, l.app) }
func (l *busStream) close()                                       { l.b.close() }

func (l *busStream) ack(ctx context.Context, ids []string) error {
	_, err := l.b.callMethod(ctx, "Ack", l.app, ids)
	return err
}
