// SPDX-License-Identifier: Apache-2.0

package client

import (
	"context"
	"errors"
	"fmt"
	"os"

	"tether/ipc"
)

// DefaultSocket is the agent's socket unless tetherd is configured
// otherwise.
const DefaultSocket = "/run/tether/tetherd.sock"

// The types of the agent's requests and answers, as docs/ipc.md
// describes them.
type (
	// Message is a downstream message for an app.
	Message = ipc.Message
	// Event is what the agent tells a listener: a message, the outcome
	// of an upstream message, dropped messages or a new token. Event
	// names its kind (ipc.EventMessage and the others).
	Event = ipc.Event
	// Status is the agent's state.
	Status = ipc.Status
	// SendRequest is an upstream message.
	SendRequest = ipc.SendRequest
	// AgentError is the agent's refusal of a request. Its Code is one of
	// the socket's error codes (ipc.CodeNotRegistered and the others) or,
	// on D-Bus, the error's name without "org.tether.Push1.Error."
	// (docs/ipc.md has both); Message is a sentence for people.
	AgentError = ipc.ResponseError
)

var (
	// ErrUnreachable: the agent's socket, or the bus, or the agent on the
	// bus, could not be reached. The agent may be starting or stopped.
	ErrUnreachable = errors.New("cannot reach the agent")
	// ErrDisconnected: the agent ended the connection or the
	// subscription, because it stopped or restarted, or because the app
	// did not keep up with its events. Listen again: what the app did not
	// acknowledge comes again.
	ErrDisconnected = errors.New("disconnected from the agent")
	// ErrReplaced: another listener for the app, on the socket or on
	// D-Bus, took over. Listening again would take the app back from it.
	ErrReplaced = errors.New("another listener took over")
)

// Config says where the agent is.
type Config struct {
	// Socket is the agent's Unix socket. Empty means $TETHER_SOCKET, else
	// DefaultSocket.
	Socket string
	// Bus, when set, makes the client talk to the agent on D-Bus instead
	// of the socket: "system", "session", or a D-Bus address such as
	// "unix:path=/run/dbus/system_bus_socket".
	Bus string
	// Getenv reads the environment for the defaults above and for the
	// buses' addresses; nil means os.Getenv.
	Getenv func(string) string
}

// Client makes requests of the agent. It holds no connection, so it may be
// used by several goroutines at once.
type Client struct {
	socket string
	// bus is the bus's address; empty means the socket.
	bus string
}

// New returns a client of the agent that cfg describes. It connects to
// nothing yet; an error is a Bus setting that names no bus.
func New(cfg Config) (*Client, error) {
	getenv := cfg.Getenv
	if getenv == nil {
		getenv = os.Getenv
	}
	c := &Client{socket: cfg.Socket}
	if c.socket == "" {
		c.socket = getenv("TETHER_SOCKET")
	}
	if c.socket == "" {
		c.socket = DefaultSocket
	}
	if cfg.Bus != "" {
		addr, err := ipc.DBusAddress(cfg.Bus, getenv)
		if err != nil {
			return nil, err
		}
		c.bus = addr
	}
	return c, nil
}

// call makes one request on a connection of its own, to the socket or on
// the bus. A failed request returns the response as well as its
// *AgentError.
func (c *Client) call(ctx context.Context, req ipc.Request) (ipc.Response, error) {
	var resp ipc.Response
	var err error
	if c.bus != "" {
		var b *busConn
		if b, err = dialBus(ctx, c.bus); err != nil {
			return resp, err
		}
		defer b.close()
		resp, err = b.do(ctx, req)
	} else {
		var conn *socketConn
		if conn, err = dialSocket(ctx, c.socket); err != nil {
			return resp, err
		}
		defer conn.close()
		resp, err = conn.call(ctx, req)
	}
	if err != nil && ctx.Err() != nil {
		return resp, ctx.Err()
	}
	return resp, err
}

// Register returns the app's registration token with the sender (its app
// server's sender ID); the first registration of an app binds it to the
// calling Unix user. Hand the token to the app server.
func (c *Client) Register(ctx context.Context, app, sender string) (token string, err error) {
	reg, err := c.RegisterWith(ctx, app, sender, RegisterOptions{})
	return reg.Token, err
}

// RegisterOptions are the options of RegisterWith.
type RegisterOptions struct {
	// VAPID is, with ipc.WebPushSender, the app server's VAPID public key
	// (RFC 8292) as base64url of the uncompressed P-256 point: pushes to
	// the endpoint must then be signed with it.
	VAPID string
}

// Registration is what RegisterWith returns: the token and, for
// ipc.WebPushSender, the endpoint URL that app servers POST Web Push
// messages to. Messages pushed there come with the body in Message.Raw.
type Registration = ipc.Registration

// RegisterWith is Register with options; it returns the whole
// registration. Registering with ipc.WebPushSender makes a Web Push
// subscription: hand the Endpoint to the app server.
func (c *Client) RegisterWith(ctx context.Context, app, sender string, opt RegisterOptions) (Registration, error) {
	resp, err := c.call(ctx, ipc.Request{Op: "register", App: app, Sender: sender, VAPID: opt.VAPID})
	return Registration{Token: resp.Token, Endpoint: resp.Endpoint}, err
}

// Unregister drops the app's registration with the sender.
func (c *Client) Unregister(ctx context.Context, app, sender string) error {
	_, err := c.call(ctx, ipc.Request{Op: "unregister", App: app, Sender: sender})
	return err
}

// SubscribeTopic subscribes the app's registration with the sender to
// one of the sender's topics. It needs the agent to be connected to its
// server.
func (c *Client) SubscribeTopic(ctx context.Context, app, sender, topic string) error {
	_, err := c.call(ctx, ipc.Request{Op: "subscribe_topic", App: app, Sender: sender, Topic: topic})
	return err
}

// UnsubscribeTopic ends that subscription.
func (c *Client) UnsubscribeTopic(ctx context.Context, app, sender, topic string) error {
	_, err := c.call(ctx, ipc.Request{Op: "unsubscribe_topic", App: app, Sender: sender, Topic: topic})
	return err
}

// Send stores an upstream message in the agent and returns its message
// ID (the agent makes one when m.ID is empty). The agent sends it as soon
// as it can; its outcome comes as an event to the app's listener.
func (c *Client) Send(ctx context.Context, m SendRequest) (messageID string, err error) {
	return c.send(ctx, m, false)
}

// SendWait is Send, returning once the connection server has the message.
// When the message was given up, the error is an *AgentError with the
// code ipc.CodeSendError and the reason as its message; the message ID
// comes with it. On D-Bus it subscribes for the app while it waits,
// taking over from the app's listener.
func (c *Client) SendWait(ctx context.Context, m SendRequest) (messageID string, err error) {
	return c.send(ctx, m, true)
}

func (c *Client) send(ctx context.Context, m SendRequest, wait bool) (string, error) {
	resp, err := c.call(ctx, ipc.Request{
		Op: "send", App: m.App, To: m.To, MessageID: m.ID, TTL: m.TTL, Priority: m.Priority, Data: m.Data, Wait: wait,
	})
	if err == nil && wait && !resp.Sent {
		err = errors.New("the agent answered a send with wait with neither its outcome nor an error")
	}
	return resp.MessageID, err
}

// Status returns the agent's state. Anyone may ask for it.
func (c *Client) Status(ctx context.Context) (Status, error) {
	resp, err := c.call(ctx, ipc.Request{Op: "status"})
	if err != nil {
		return Status{}, err
	}
	if resp.Status == nil {
		return Status{}, errors.New("the agent sent no status")
	}
	return *resp.Status, nil
}

// Listener is an app's listener: the agent's events for the app come to
// it, starting with what is stored for the app. Next and Ack may be
// called from different goroutines.
type Listener struct {
	app string
	s   stream
}

// stream is a listening connection through one of the doors.
type stream interface {
	// next returns the app's next event.
	next(ctx context.Context) (*ipc.Event, error)
	// ack acknowledges messages, returning once the acks are on disk.
	ack(ctx context.Context, ids []string) error
	close()
}

// Listen makes a new connection the app's listener, replacing the app's
// listener if it has one. ctx bounds the setting up, not the Listener.
func (c *Client) Listen(ctx context.Context, app string) (*Listener, error) {
	var s stream
	var err error
	if c.bus != "" {
		s, err = listenBus(ctx, c.bus, app)
	} else {
		s, err = listenSocket(ctx, c.socket, app)
	}
	if err != nil {
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return &Listener{app: app, s: s}, nil
}

// App returns the app the listener listens for.
func (l *Listener) App() string { return l.app }

// Next waits for the app's next event. A message event has Message set.
// Next fails with ErrDisconnected when the agent ends the connection and
// with ErrReplaced when another listener takes the app over; the Listener
// is done then. When ctx ends, Next returns its error and the Listener may
// be used again.
func (l *Listener) Next(ctx context.Context) (Event, error) {
	ev, err := l.s.next(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return Event{}, ctx.Err()
		}
		return Event{}, err
	}
	switch {
	case ev.Event == ipc.EventReplaced:
		return Event{}, fmt.Errorf("app %q: %w", l.app, ErrReplaced)
	case ev.Event == ipc.EventMessage && ev.Message == nil:
		return Event{}, errors.New("the agent sent a message event without a message")
	}
	return *ev, nil
}

// Ack tells the agent that the app has handled the messages with these
// IDs. It returns once the acks are on disk: the messages are never
// delivered again.
func (l *Listener) Ack(ctx context.Context, ids ...string) error {
	if err := l.s.ack(ctx, ids); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("ack %q: %w", ids, err)
	}
	return nil
}

// Close ends the listener. Messages it did not acknowledge come again to
// the app's next listener.
func (l *Listener) Close() error {
	l.s.close()
	return nil
}
