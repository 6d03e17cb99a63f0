// SPDX-License-Identifier: Apache-2.0

package ipc

import (
	"context"
	"errors"
	"time"
)

// Sentinel errors a Backend returns so that every door can name the problem
// to the app in its own terms (an error code on the socket, a D-Bus error
// name on the bus). Backends wrap them with %w and a sentence of context.
var (
	// ErrPermission: the caller's Unix user does not own the app ID.
	ErrPermission = errors.New("permission denied")
	// ErrUnknownApp: the app ID has never been registered on this device.
	ErrUnknownApp = errors.New("unknown app")
	// ErrNotRegistered: the (app, sender) pair has no registration token.
	ErrNotRegistered = errors.New("not registered")
	// ErrTooManyMessages: the app already has the maximum of pending
	// upstream messages (GCM's TOO_MANY_MESSAGES).
	ErrTooManyMessages = errors.New("too many pending messages")
	// ErrTooManyRegistrations: the caller's Unix user already has the most
	// registrations the device allows one user.
	ErrTooManyRegistrations = errors.New("too many registrations")
	// ErrInvalidArgument: a field of the request is missing or malformed.
	ErrInvalidArgument = errors.New("invalid argument")
	// ErrOffline: the request needs the connection server and the device
	// is not connected to it.
	ErrOffline = errors.New("not connected to the server")
	// ErrRefused: the connection server refused the request.
	ErrRefused = errors.New("refused by the server")
	// ErrStorage: the device's store could not take the request (full disk,
	// damaged file); nothing was accepted.
	ErrStorage = errors.New("storage unavailable")
	// ErrMessageTooBig: an upstream message's data is over GCM's 4096
	// bytes, counting keys and values (GCM's MessageTooBig).
	ErrMessageTooBig = errors.New("message too big")
	// ErrUnsupported: this agent or its server does not offer the request.
	ErrUnsupported = errors.New("not supported")
)

// Caller identifies the process on the other side of a door, as the kernel
// reports it (SO_PEERCRED on the socket, the bus daemon's credentials on
// D-Bus). Backends decide permissions from it; doors never trust what a
// client says about itself.
type Caller struct {
	UID uint32
	// GID is the socket peer's group; the bus does not tell it, so it is
	// 0 for D-Bus callers.
	GID uint32
	PID int32
}

// IsRoot reports whether the caller runs as the superuser.
func (c Caller) IsRoot() bool { return c.UID == 0 }

// Message is one downstream message handed to a local app.
type Message struct {
	ID          string            `json:"message_id"`
	App         string            `json:"app"`
	From        string            `json:"from"` // the sender ID
	CollapseKey string            `json:"collapse_key"`
	Data        map[string]string `json:"data"`
	Priority    string            `json:"priority,omitempty"`
	SentTime    time.Time         `json:"sent_time,omitzero"`
	// Notification is GCM's notification payload, kept apart from Data.
	Notification map[string]string `json:"notification,omitempty"`
	// Topic is the topic the app server sent the message to, if any.
	Topic string `json:"topic,omitempty"`
	// TTL is the time to live left when the agent stored the message.
	TTL int64 `json:"ttl"`
	// Raw is the binary payload, at most 4096 bytes: the body of a Web
	// Push message, exactly as the app server posted it. JSON carries it
	// in standard base64.
	Raw []byte `json:"raw,omitempty"`
}

// WebPushSender is the sender ID of the connection server's built-in Web
// Push sender. A registration with it has an endpoint URL, which app
// servers POST Web Push messages to (RFC 8030); its messages come with
// the body in Message.Raw and the Topic header as the collapse key. It is
// wire.WebPushSender, spelled out so that apps do not link the wire
// protocol.
const WebPushSender = "webpush"

// RegisterRequest asks for the registration of App with Sender.
type RegisterRequest struct {
	App    string
	Sender string
	// VAPID is, with WebPushSender only and optionally, the app server's
	// VAPID public key (RFC 8292): base64url of the uncompressed P-256
	// point. The server then takes only pushes signed with that key.
	VAPID string
}

// Registration is the outcome of a register request.
type Registration struct {
	Token string `json:"token"`
	// Endpoint is the URL app servers push to, for WebPushSender.
	Endpoint string `json:"endpoint,omitempty"`
}

// SendRequest is an upstream message from a local app.
type SendRequest struct {
	App string
	// To is the sender ID the message goes to.
	To string
	// ID is the app's message ID; empty asks the backend to make one.
	ID string
	// TTL in seconds; nil means the default (GCM's maximum, 4 weeks).
	// Zero means "now or never": it fails at once when the device is offline.
	TTL      *int64
	Priority string
	Data     map[string]string
}

// SendResult is the outcome of an upstream message: Err is empty once the
// connection server has acknowledged it, else it names why it was given up.
type SendResult struct {
	App string `json:"app"`
	ID  string `json:"message_id"`
	Err string `json:"error,omitempty"`
}

// Status is the agent's state as shown to apps and to tetherctl.
type Status struct {
	Connected        bool   `json:"connected"`
	Server           string `json:"server"`
	DeviceID         string `json:"device_id"`
	QueuedDownstream int    `json:"queued_downstream"`
	PendingUpstream  int    `json:"pending_upstream"`
	Apps             int    `json:"apps"`
	// PowerMode is how the agent spends power: "mains", "battery" or "low".
	PowerMode string `json:"power_mode"`
	// Heartbeat is the seconds between pings on the connection.
	Heartbeat int `json:"heartbeat"`
	// Network identifies the network the device reaches the server by,
	// when the agent watches the network.
	Network string `json:"network,omitempty"`
	// HeartbeatHeld and HeartbeatFailed are what the agent learned about
	// this network's idle timeout: the longest interval, in seconds, that a
	// connection survived, and the shortest after which one died silently
	// (zero when none has).
	HeartbeatHeld   int `json:"heartbeat_held,omitempty"`
	HeartbeatFailed int `json:"heartbeat_failed,omitempty"`
	// LastConnect and LastDisconnect say why the connection was last made
	// and last lost ("route-up", "backoff", "heartbeat timeout", ...).
	LastConnect    string `json:"last_connect,omitempty"`
	LastDisconnect string `json:"last_disconnect,omitempty"`
	Reconnects     uint64 `json:"reconnects"`
	Heartbeats     uint64 `json:"heartbeats"`
}

// Listener is one app's live subscription, implemented by a door for one
// connected app. The backend calls it from its own goroutines; every method
// must return promptly (a door queues, and drops a client that falls too far
// behind: what was not acked is delivered again on its next Listen).
type Listener interface {
	// Deliver hands one downstream message to the app.
	Deliver(Message)
	// SendResult tells the app the outcome of one of its upstream messages.
	SendResult(SendResult)
	// DeletedMessages tells the app that count messages for it were dropped
	// before delivery (GCM's deleted_messages).
	DeletedMessages(count int)
	// TokenRefreshed tells the app that the server replaced its token for
	// sender; the old one stops working after a grace period.
	TokenRefreshed(sender, token string)
	// Replaced tells the app that another listener took over its app ID;
	// the door closes this subscription. The backend sends nothing more.
	Replaced()
}

// Backend is what a door needs from the agent. Every method checks that
// the caller may act for the app before doing anything.
type Backend interface {
	// Register returns the registration of (req.App, req.Sender), from
	// the store when known, else from the connection server.
	Register(ctx context.Context, c Caller, req RegisterRequest) (Registration, error)
	// Unregister drops the registration for (app, sender).
	Unregister(ctx context.Context, c Caller, app, sender string) error
	// Listen makes l the app's only listener (an earlier one is Replaced)
	// and starts delivering what is stored for the app, at most a window of
	// unacked messages at a time. The subscription ends when cancel is
	// called or the listener is replaced.
	Listen(ctx context.Context, c Caller, app string, l Listener) (cancel func(), err error)
	// Ack marks messages as handled by the app. It returns once the acks
	// are persisted: acked messages are not delivered again, unless the
	// server delivers one again after the agent let go of its ID (a
	// duplicate, docs/protocol.md).
	Ack(ctx context.Context, c Caller, app string, ids []string) error
	// Send persists an upstream message and returns its ID. The outcome
	// goes to the app's listener and, once, to the returned channel
	// (buffered; the caller may ignore it).
	Send(ctx context.Context, c Caller, req SendRequest) (id string, result <-chan SendResult, err error)
	// SubscribeTopic subscribes the app's registration for sender to a
	// topic, so that the sender's sends to /topics/NAME reach it.
	SubscribeTopic(ctx context.Context, c Caller, app, sender, topic string) error
	// UnsubscribeTopic undoes SubscribeTopic.
	UnsubscribeTopic(ctx context.Context, c Caller, app, sender, topic string) error
	// Status reports the agent's state.
	Status(ctx context.Context) (Status, error)
}
