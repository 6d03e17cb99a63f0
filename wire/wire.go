// SPDX-License-Identifier: Apache-2.0

package wire

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode"
	"unicode/utf8"
)

const (
	// Version is the highest protocol version this package speaks; it
	// speaks every version from 1 up to it. An agent sends it in Hello and
	// the server answers in Welcome with the version the session uses
	// (Negotiate).
	Version = 2
	// Path is the WebSocket endpoint on the connection server.
	Path = "/device/v1"
	// Subprotocol is the WebSocket subprotocol name both sides offer.
	Subprotocol = "tether.v1"
	// MaxFrameSize bounds one encoded frame. A downstream message carries
	// at most 4096 bytes of data (GCM's limit) plus keys and metadata.
	MaxFrameSize = 64 << 10
	// MaxAckIDs bounds the message IDs in one Ack frame.
	MaxAckIDs = 1000
	// MaxTTL is GCM's longest time to live, in seconds (4 weeks).
	MaxTTL = 2419200
	// MaxDataSize is GCM's limit on a message's data, counting keys and
	// values as delivered.
	MaxDataSize = 4096
	// MaxHeartbeat is the longest heartbeat a frame carries, in seconds; a
	// server caps what it keeps to lower (welcome).
	MaxHeartbeat = 24 * 3600
	// MaxTopicLen is GCM's longest topic name.
	MaxTopicLen = 900
	// MaxAppIDLen bounds app IDs, as Android bounds package names and D-Bus
	// bounds names: an app ID is a name, not a place for data, and each
	// registration keeps one on the device and the server.
	MaxAppIDLen = 255
	// MaxRawSize bounds a message's raw payload: a Web Push body's limit
	// (RFC 8030 push services take at least 4096 bytes).
	MaxRawSize = 4096
	// WebPushSender is the sender ID of the server's built-in Web Push
	// sender: its registrations have an endpoint URL that app servers POST
	// RFC 8030 pushes to, and no app server sends to them any other way.
	WebPushSender = "webpush"
	// MaxVAPIDKeyLen bounds a VAPID public key as a register frame
	// carries it: base64url of a P-256 point is 87 characters.
	MaxVAPIDKeyLen = 128
	// maxNameLen bounds sender IDs, message IDs, tokens and other
	// identifiers.
	maxNameLen = 1024
)

// Negotiate is the version of a session whose agent's hello offers
// offered: the highest both sides speak.
func Negotiate(offered int) int { return min(offered, Version) }

// Type names a frame.
type Type string

// Frame types. New types may be added in later versions; a receiver answers
// a type it does not know with an Error of code CodeUnknownType.
const (
	TypeHello        Type = "hello"        // agent → server, first frame
	TypeWelcome      Type = "welcome"      // server → agent, answer to hello
	TypeRegister     Type = "register"     // agent → server
	TypeRegistered   Type = "registered"   // server → agent
	TypeUnregister   Type = "unregister"   // agent → server
	TypeUnregistered Type = "unregistered" // server → agent
	TypeMessage      Type = "message"      // server → agent, downstream
	TypeAck          Type = "ack"          // agent → server, downstream persisted
	TypeUpstream     Type = "upstream"     // agent → server
	TypeUpstreamAck  Type = "upstream_ack" // server → agent, upstream persisted or refused
	TypeError        Type = "error"        // either way

	TypeSubscribe       Type = "subscribe"        // agent → server, topic subscription
	TypeSubscribed      Type = "subscribed"       // server → agent, answer to subscribe
	TypeUnsubscribe     Type = "unsubscribe"      // agent → server
	TypeUnsubscribed    Type = "unsubscribed"     // server → agent, answer to unsubscribe
	TypeTokenRefresh    Type = "token_refresh"    // server → agent, acked with ack
	TypeDeletedMessages Type = "deleted_messages" // server → agent, acked with ack

	TypeState  Type = "state"  // agent → server, power mode and heartbeat changed
	TypeGoAway Type = "goaway" // server → agent, before it closes: come back later
)

// Links a device reports in Hello and State: whether it reaches the
// server over Wi-Fi, for the urgency of Web Push messages (RFC 8030).
// Empty means the agent does not know.
const (
	LinkWiFi  = "wifi"
	LinkOther = "other"
)

// Power modes a device reports in Hello and State.
const (
	ModeMains   = "mains"   // deliver everything at once
	ModeBattery = "battery" // hold normal priority for a batch
	ModeLow     = "low"     // deliver high priority only
)

// Error codes carried by Error frames.
const (
	CodeBadFrame      = "bad_frame"      // undecodable envelope or body
	CodeUnknownType   = "unknown_type"   // a frame type the receiver does not know
	CodeUnauthorized  = "unauthorized"   // bad device credentials or enrollment key
	CodeRevoked       = "revoked"        // the device or its certificate was revoked
	CodeInvalid       = "invalid"        // a well-formed frame that is wrong at this point
	CodeNotRegistered = "not_registered" // no such registration
	CodeUnavailable   = "unavailable"    // the server cannot take it now; retry later
	CodeInternal      = "internal"       // the server failed; retry later
)

// ErrBadFrame is wrapped by every decoding and validation error.
var ErrBadFrame = errors.New("bad frame")

// ErrDataTooBig is wrapped, beside ErrBadFrame, by the validation error of
// data over MaxDataSize, so that apps can be told GCM's MessageTooBig.
var ErrDataTooBig = errors.New("data too big")

// Body is the payload of one frame type.
type Body interface {
	FrameType() Type
	// Validate reports the first field that is missing or out of limits.
	Validate() error
}

// Frame is one decoded envelope; its body is decoded on demand with Decode.
type Frame struct {
	Type Type `json:"type"`
	// Ref ties a reply to its request: a register's ref comes back on its
	// registered or error frame, an upstream's message ID on its ack.
	Ref  string          `json:"ref,omitempty"`
	Body json.RawMessage `json:"body,omitempty"`
	// decoded is the body of a compact frame, decoded and validated with
	// the frame (Codec.Decode).
	decoded Body
}

// Encode validates b and encodes it as one frame.
func Encode(ref string, b Body) ([]byte, error) {
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("encode %s frame: %w", b.FrameType(), err)
	}
	body, err := json.Marshal(b)
	if err != nil {
		return nil, fmt.Errorf("encode %s frame: %w", b.FrameType(), err)
	}
	out, err := json.Marshal(Frame{Type: b.FrameType(), Ref: ref, Body: body})
	if err != nil {
		return nil, fmt.Errorf("encode %s frame: %w", b.FrameType(), err)
	}
	if len(out) > MaxFrameSize {
		return nil, fmt.Errorf("encode %s frame: %w: %d bytes, limit %d", b.FrameType(), ErrBadFrame, len(out), MaxFrameSize)
	}
	return out, nil
}

// Decode parses an envelope. The body is left for Frame.Decode.
func Decode(data []byte) (Frame, error) {
	var f Frame
	if len(data) > MaxFrameSize {
		return f, fmt.Errorf("%w: %d bytes, limit %d", ErrBadFrame, len(data), MaxFrameSize)
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return Frame{}, fmt.Errorf("%w: %v", ErrBadFrame, err)
	}
	if f.Type == "" {
		return Frame{}, fmt.Errorf("%w: no type", ErrBadFrame)
	}
	if err := checkName("ref", f.Ref, false); err != nil {
		return Frame{}, err
	}
	return f, nil
}

// Decode decodes the frame's body into b, which must be of the frame's type,
// and validates it.
func (f Frame) Decode(b Body) error {
	if f.Type != b.FrameType() {
		return fmt.Errorf("%w: %s frame decoded as %s", ErrBadFrame, f.Type, b.FrameType())
	}
	switch dst := b.(type) {
	case *Message:
		if m, ok := f.decoded.(Message); ok {
			*dst = m
			return nil
		}
	case *Ack:
		if a, ok := f.decoded.(Ack); ok {
			*dst = a
			return nil
		}
	}
	body := f.Body
	if len(bytes.TrimSpace(body)) == 0 {
		body = []byte("{}")
	}
	if err := json.Unmarshal(body, b); err != nil {
		return fmt.Errorf("%w: %s body: %v", ErrBadFrame, f.Type, err)
	}
	if err := b.Validate(); err != nil {
		return fmt.Errorf("%s body: %w", f.Type, err)
	}
	return nil
}

// Hello opens a session. Without a device ID it is a check-in: the server
// creates a device and answers with its credentials.
type Hello struct {
	Version      int    `json:"version"`
	DeviceID     string `json:"device_id,omitempty"`
	DeviceSecret string `json:"device_secret,omitempty"`
	// EnrollKey is required for a check-in when the server demands one.
	EnrollKey string `json:"enroll_key,omitempty"`
	// Heartbeat is the agent's ping interval in seconds: the agent drives
	// heartbeats and the server times the session out when it hears nothing
	// for this long plus a grace period. Zero means the server's default.
	Heartbeat int `json:"heartbeat,omitempty"`
	// Agent names the agent's software and version, for logs.
	Agent string `json:"agent,omitempty"`
	// Mode is the device's power mode; empty means ModeMains.
	Mode string `json:"mode,omitempty"`
	// Link is LinkWiFi or LinkOther when the agent knows its link.
	Link string `json:"link,omitempty"`
	// Probe marks a connection that only measures how long the network
	// keeps an idle connection: it needs credentials, carries no frames
	// after the welcome, and leaves the device's session alone.
	Probe bool `json:"probe,omitempty"`
}

func (Hello) FrameType() Type { return TypeHello }

func (h Hello) Validate() error {
	if h.Version < 1 {
		return fmt.Errorf("%w: version %d", ErrBadFrame, h.Version)
	}
	if (h.DeviceID == "") != (h.DeviceSecret == "") {
		return fmt.Errorf("%w: device_id and device_secret go together", ErrBadFrame)
	}
	if h.Probe && h.DeviceID == "" {
		return fmt.Errorf("%w: a probe needs device credentials", ErrBadFrame)
	}
	return firstErr(
		checkHeartbeat(h.Heartbeat),
		checkMode(h.Mode),
		checkLink(h.Link),
		checkName("device_id", h.DeviceID, false),
		checkName("device_secret", h.DeviceSecret, false),
		checkName("enroll_key", h.EnrollKey, false),
		checkName("agent", h.Agent, false),
	)
}

// State tells the server that the device's power mode or heartbeat
// changed during the session. It has no answer.
type State struct {
	Mode string `json:"mode"`
	// Heartbeat is the agent's new ping interval in seconds (as in Hello);
	// the server's timeout follows it at once. Zero leaves the timeout as
	// it was.
	Heartbeat int `json:"heartbeat"`
	// Link is as in Hello.
	Link string `json:"link,omitempty"`
}

func (State) FrameType() Type { return TypeState }

func (s State) Validate() error {
	if s.Mode == "" {
		return fmt.Errorf("%w: state without mode", ErrBadFrame)
	}
	return firstErr(checkMode(s.Mode), checkHeartbeat(s.Heartbeat), checkLink(s.Link))
}

// GoAway tells the agent that the server is about to close the session
// (draining, overloaded) and that it should not dial again for RetryAfter
// seconds. It comes in place of the Welcome when the server cannot take
// the connection now, and as the last frame of a session when the server
// shuts down; the close frame follows it.
type GoAway struct {
	RetryAfter int    `json:"retry_after"`
	Reason     string `json:"reason,omitempty"`
	// Server, when set, is the public URL of another node of the same
	// cluster for the agent to try next, in the form ParseServerURL takes.
	Server string `json:"server,omitempty"`
}

func (GoAway) FrameType() Type { return TypeGoAway }

func (g GoAway) Validate() error {
	if g.RetryAfter < 0 || g.RetryAfter > 24*3600 {
		return fmt.Errorf("%w: retry_after %d s out of range 0..86400", ErrBadFrame, g.RetryAfter)
	}
	if err := firstErr(checkName("reason", g.Reason, false), checkName("server", g.Server, false)); err != nil {
		return err
	}
	if g.Server != "" {
		if _, err := ParseServerURL(g.Server); err != nil {
			return fmt.Errorf("%w: server: %w", ErrBadFrame, err)
		}
	}
	return nil
}

// ParseServerURL parses the URL of a connection server as a device is
// given it, in its configuration or in a GoAway: ws://, wss://, or
// http(s):// meaning ws(s)://, with a host and optionally a path prefix,
// and no user, query or fragment.
func ParseServerURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return nil, err
	}
	switch {
	case u.Scheme != "ws" && u.Scheme != "wss" && u.Scheme != "http" && u.Scheme != "https":
		return nil, errors.New("scheme must be ws, wss, http or https")
	case u.Host == "":
		return nil, errors.New("no host")
	case u.User != nil || u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return nil, errors.New("no user, query or fragment allowed")
	}
	return u, nil
}

func checkHeartbeat(seconds int) error {
	if seconds < 0 || seconds > MaxHeartbeat {
		return fmt.Errorf("%w: heartbeat %d s out of range 0..%d", ErrBadFrame, seconds, MaxHeartbeat)
	}
	return nil
}

func checkLink(link string) error {
	switch link {
	case "", LinkWiFi, LinkOther:
		return nil
	}
	return fmt.Errorf("%w: link %.40q, want wifi or other", ErrBadFrame, link)
}

func checkMode(mode string) error {
	switch mode {
	case "", ModeMains, ModeBattery, ModeLow:
		return nil
	}
	return fmt.Errorf("%w: mode %q, want mains, battery or low", ErrBadFrame, mode)
}

// Welcome accepts a session.
type Welcome struct {
	Version  int    `json:"version"`
	DeviceID string `json:"device_id"`
	// DeviceSecret is set only in the answer to a check-in; the agent
	// persists it before using the session.
	DeviceSecret string `json:"device_secret,omitempty"`
	// Heartbeat is the interval in seconds the server will hold the
	// session open without hearing from the agent, before its grace.
	Heartbeat int `json:"heartbeat"`
}

func (Welcome) FrameType() Type { return TypeWelcome }

func (w Welcome) Validate() error {
	if w.Version < 1 {
		return fmt.Errorf("%w: version %d", ErrBadFrame, w.Version)
	}
	return firstErr(
		checkName("device_id", w.DeviceID, true),
		checkName("device_secret", w.DeviceSecret, false),
	)
}

// Register asks for the registration token of (App, Sender).
type Register struct {
	App    string `json:"app"`
	Sender string `json:"sender"`
	// VAPID is, for WebPushSender only and optionally, the app server's
	// VAPID public key (RFC 8292): base64url of the uncompressed P-256
	// point. The server then takes pushes signed with that key only.
	VAPID string `json:"vapid,omitempty"`
}

func (Register) FrameType() Type { return TypeRegister }
func (r Register) Validate() error {
	if err := validAppSender(r.App, r.Sender); err != nil {
		return err
	}
	if r.VAPID != "" && r.Sender != WebPushSender {
		return fmt.Errorf("%w: vapid is for sender %s only", ErrBadFrame, WebPushSender)
	}
	if len(r.VAPID) > MaxVAPIDKeyLen {
		return fmt.Errorf("%w: vapid is %d bytes, limit %d", ErrBadFrame, len(r.VAPID), MaxVAPIDKeyLen)
	}
	return checkName("vapid", r.VAPID, false)
}

// Registered answers Register with the token.
type Registered struct {
	App    string `json:"app"`
	Sender string `json:"sender"`
	Token  string `json:"token"`
	// Endpoint is, for WebPushSender, the URL app servers POST Web Push
	// messages to (RFC 8030).
	Endpoint string `json:"endpoint,omitempty"`
}

func (Registered) FrameType() Type { return TypeRegistered }
func (r Registered) Validate() error {
	if r.Sender == WebPushSender && r.Endpoint == "" {
		return fmt.Errorf("%w: a %s registration without endpoint", ErrBadFrame, WebPushSender)
	}
	return firstErr(validAppSender(r.App, r.Sender), checkName("token", r.Token, true), checkName("endpoint", r.Endpoint, false))
}

// Unregister drops the registration of (App, Sender); later sends to its
// token answer NotRegistered.
type Unregister struct {
	App    string `json:"app"`
	Sender string `json:"sender"`
}

func (Unregister) FrameType() Type   { return TypeUnregister }
func (u Unregister) Validate() error { return validAppSender(u.App, u.Sender) }

// Unregistered answers Unregister.
type Unregistered struct {
	App    string `json:"app"`
	Sender string `json:"sender"`
}

func (Unregistered) FrameType() Type   { return TypeUnregistered }
func (u Unregistered) Validate() error { return validAppSender(u.App, u.Sender) }

// Message is one downstream message. The agent persists it and then acks
// its ID; the server delivers it again until it is acked or expires.
type Message struct {
	ID    string `json:"id"`
	Token string `json:"token"`
	App   string `json:"app"`
	// From is the sender ID of the app server that sent it.
	From        string            `json:"from"`
	CollapseKey string            `json:"collapse_key,omitempty"`
	Data        map[string]string `json:"data,omitempty"`
	Priority    string            `json:"priority,omitempty"`
	// TTL is the time to live left, in seconds, when the frame was sent:
	// always relative, because devices without a real-time clock boot in 1970.
	TTL int64 `json:"ttl"`
	// SentTime is when the app server sent it, in Unix milliseconds by the
	// server's clock; informational.
	SentTime int64 `json:"sent_time,omitempty"`
	// Notification is GCM's notification payload, delivered to the app
	// apart from Data. Data and Notification together carry at most
	// MaxDataSize bytes, counting keys and values.
	Notification map[string]string `json:"notification,omitempty"`
	// Topic names the topic the app server sent it to (without the
	// "/topics/" prefix) when it was sent to one.
	Topic string `json:"topic,omitempty"`
	// Raw is a binary payload of at most MaxRawSize bytes, apart from
	// Data: the body of a Web Push message. JSON carries it in standard
	// base64.
	Raw []byte `json:"raw,omitempty"`
}

func (Message) FrameType() Type { return TypeMessage }

func (m Message) Validate() error {
	err := firstErr(
		checkName("id", m.ID, true),
		checkName("token", m.Token, true),
		validAppSender(m.App, m.From),
		checkName("collapse_key", m.CollapseKey, false),
		checkPriority(m.Priority),
		checkTTL(m.TTL),
		checkData("data", m.Data),
		checkData("notification", m.Notification),
	)
	if err != nil {
		return err
	}
	if n := DataSize(m.Data) + DataSize(m.Notification); n > MaxDataSize {
		return fmt.Errorf("%w: %w: data and notification are %d bytes, limit %d", ErrBadFrame, ErrDataTooBig, n, MaxDataSize)
	}
	if m.Topic != "" && !ValidTopic(m.Topic) {
		return fmt.Errorf("%w: topic %.40q is not a topic name", ErrBadFrame, m.Topic)
	}
	return CheckRaw(m.Raw)
}

// CheckRaw reports a raw payload over MaxRawSize, wrapping ErrDataTooBig.
func CheckRaw(raw []byte) error {
	if len(raw) > MaxRawSize {
		return fmt.Errorf("%w: %w: raw is %d bytes, limit %d", ErrBadFrame, ErrDataTooBig, len(raw), MaxRawSize)
	}
	return nil
}

// Ack tells the server that the agent has persisted these downstream
// messages, or acted on these notices (TokenRefresh, DeletedMessages): the
// IDs are the messages' and notices' ID fields.
type Ack struct {
	IDs []string `json:"ids"`
}

func (Ack) FrameType() Type { return TypeAck }

func (a Ack) Validate() error {
	if len(a.IDs) == 0 || len(a.IDs) > MaxAckIDs {
		return fmt.Errorf("%w: ack of %d ids, want 1..%d", ErrBadFrame, len(a.IDs), MaxAckIDs)
	}
	for _, id := range a.IDs {
		if err := checkName("ids[]", id, true); err != nil {
			return err
		}
	}
	return nil
}

// Upstream is a message from a local app to its app server. The server
// drops a repeat of the same (device, App, ID) within its TTL, so the agent
// may resend until it gets the UpstreamAck.
type Upstream struct {
	App string `json:"app"`
	// To is the sender ID of the app server it goes to.
	To       string            `json:"to"`
	ID       string            `json:"id"`
	TTL      int64             `json:"ttl"`
	Priority string            `json:"priority,omitempty"`
	Data     map[string]string `json:"data,omitempty"`
}

func (Upstream) FrameType() Type { return TypeUpstream }

func (u Upstream) Validate() error {
	return firstErr(
		validAppSender(u.App, u.To),
		checkName("id", u.ID, true),
		checkTTL(u.TTL),
		checkPriority(u.Priority),
		checkData("data", u.Data),
	)
}

// UpstreamAck answers Upstream once the server has persisted it, or refused
// it for good (Error names why: the agent stops retrying and tells the app).
// A temporary failure comes as an Error frame instead, and the agent retries.
type UpstreamAck struct {
	App   string `json:"app"`
	ID    string `json:"id"`
	Error string `json:"error,omitempty"`
}

// Errors of an UpstreamAck, GCM's names for them.
const (
	// UpstreamNotRegistered: the app has no registration for the sender,
	// or there is no such sender.
	UpstreamNotRegistered = "NotRegistered"
	// UpstreamTooManyMessages: the app has 20 upstream messages waiting at
	// the server for their app server already (GCM's TOO_MANY_MESSAGES).
	UpstreamTooManyMessages = "TooManyMessages"
)

func (UpstreamAck) FrameType() Type { return TypeUpstreamAck }

func (u UpstreamAck) Validate() error {
	return firstErr(checkApp(u.App), checkName("id", u.ID, true))
}

// Error reports a problem with the frame named by the envelope's Ref, or
// with the session when Ref is empty.
type Error struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (Error) FrameType() Type { return TypeError }

func (e Error) Validate() error {
	if e.Code == "" {
		return fmt.Errorf("%w: error without code", ErrBadFrame)
	}
	return nil
}

func (e Error) String() string { return e.Code + ": " + e.Message }

// Subscribe asks the server to subscribe the registration of (App, Sender)
// to Topic, so that the sender's messages to /topics/Topic, and its
// conditions that the subscriptions satisfy, reach the app. The answer is
// Subscribed, or an Error of code CodeNotRegistered when there is no such
// registration.
type Subscribe struct {
	App    string `json:"app"`
	Sender string `json:"sender"`
	// Topic is the name without the "/topics/" prefix.
	Topic string `json:"topic"`
}

func (Subscribe) FrameType() Type   { return TypeSubscribe }
func (s Subscribe) Validate() error { return validSubscription(s.App, s.Sender, s.Topic) }

// Subscribed answers Subscribe.
type Subscribed struct {
	App    string `json:"app"`
	Sender string `json:"sender"`
	Topic  string `json:"topic"`
}

func (Subscribed) FrameType() Type   { return TypeSubscribed }
func (s Subscribed) Validate() error { return validSubscription(s.App, s.Sender, s.Topic) }

// Unsubscribe ends a subscription; ending one that does not exist succeeds.
type Unsubscribe struct {
	App    string `json:"app"`
	Sender string `json:"sender"`
	Topic  string `json:"topic"`
}

func (Unsubscribe) FrameType() Type   { return TypeUnsubscribe }
func (u Unsubscribe) Validate() error { return validSubscription(u.App, u.Sender, u.Topic) }

// Unsubscribed answers Unsubscribe.
type Unsubscribed struct {
	App    string `json:"app"`
	Sender string `json:"sender"`
	Topic  string `json:"topic"`
}

func (Unsubscribed) FrameType() Type   { return TypeUnsubscribed }
func (u Unsubscribed) Validate() error { return validSubscription(u.App, u.Sender, u.Topic) }

// TokenRefresh tells the agent that the server replaced the registration
// token of (App, Sender) with Token. The agent stores the new token, tells
// the app, and then acks ID with an Ack frame; until then the server sends
// it again in every session. The old token keeps working for a grace
// period, answered with the new one as its canonical ID.
type TokenRefresh struct {
	ID     string `json:"id"`
	App    string `json:"app"`
	Sender string `json:"sender"`
	Token  string `json:"token"`
	// Endpoint is, for WebPushSender, the registration's new endpoint.
	Endpoint string `json:"endpoint,omitempty"`
}

func (TokenRefresh) FrameType() Type { return TypeTokenRefresh }

func (r TokenRefresh) Validate() error {
	return firstErr(checkName("id", r.ID, true), validAppSender(r.App, r.Sender), checkName("token", r.Token, true), checkName("endpoint", r.Endpoint, false))
}

// DeletedMessages tells the agent that the server dropped Count messages
// for App before it could deliver them (GCM's deleted_messages: more than
// 100 stored, or a fifth collapse key). The agent stores the notice, tells
// the app once, and then acks ID with an Ack frame; until then the server
// sends the same notice, ID and Count, again in every session.
type DeletedMessages struct {
	ID    string `json:"id"`
	App   string `json:"app"`
	Count int    `json:"count"`
}

func (DeletedMessages) FrameType() Type { return TypeDeletedMessages }

func (d DeletedMessages) Validate() error {
	if d.Count < 1 {
		return fmt.Errorf("%w: deleted_messages count %d, want at least 1", ErrBadFrame, d.Count)
	}
	return firstErr(checkName("id", d.ID, true), checkApp(d.App))
}

// ValidTopic reports whether name is a topic name as GCM defines them:
// 1 to MaxTopicLen characters of [a-zA-Z0-9-_.~%].
func ValidTopic(name string) bool {
	if name == "" || len(name) > MaxTopicLen {
		return false
	}
	for i := 0; i < len(name); i++ {
		switch c := name[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		case c == '-', c == '_', c == '.', c == '~', c == '%':
		default:
			return false
		}
	}
	return true
}

func validSubscription(app, sender, topic string) error {
	if err := validAppSender(app, sender); err != nil {
		return err
	}
	if !ValidTopic(topic) {
		return fmt.Errorf("%w: topic %.40q is not 1 to %d characters of [a-zA-Z0-9-_.~%%]", ErrBadFrame, topic, MaxTopicLen)
	}
	return nil
}

func validAppSender(app, sender string) error {
	if err := checkApp(app); err != nil {
		return err
	}
	if err := checkName("sender", sender, true); err != nil {
		return err
	}
	if sender == WebPushSender {
		return nil
	}
	for _, r := range sender {
		if r < '0' || r > '9' {
			return fmt.Errorf("%w: sender %q is not a numeric sender ID or %s", ErrBadFrame, sender, WebPushSender)
		}
	}
	return nil
}

func checkName(field, v string, required bool) error {
	switch {
	case v == "" && required:
		return fmt.Errorf("%w: %s is missing", ErrBadFrame, field)
	case len(v) > maxNameLen:
		return fmt.Errorf("%w: %s is %d bytes, limit %d", ErrBadFrame, field, len(v), maxNameLen)
	case !utf8.ValidString(v):
		return fmt.Errorf("%w: %s is not UTF-8", ErrBadFrame, field)
	case strings.IndexFunc(v, unicode.IsControl) >= 0:
		return fmt.Errorf("%w: %s has a control character", ErrBadFrame, field)
	}
	return nil
}

func checkApp(app string) error {
	if len(app) > MaxAppIDLen {
		return fmt.Errorf("%w: app is %d bytes, limit %d", ErrBadFrame, len(app), MaxAppIDLen)
	}
	return checkName("app", app, true)
}

func checkPriority(p string) error {
	switch p {
	case "", "normal", "high":
		return nil
	}
	return fmt.Errorf("%w: priority %q, want normal or high", ErrBadFrame, p)
}

func checkTTL(ttl int64) error {
	if ttl < 0 || ttl > MaxTTL {
		return fmt.Errorf("%w: ttl %d s out of range 0..%d", ErrBadFrame, ttl, MaxTTL)
	}
	return nil
}

// DataSize is the size of data as GCM counts it: keys and values.
func DataSize(data map[string]string) int {
	n := 0
	for k, v := range data {
		n += len(k) + len(v)
	}
	return n
}

func checkData(field string, data map[string]string) error {
	if n := DataSize(data); n > MaxDataSize {
		return fmt.Errorf("%w: %w: %d bytes, limit %d", ErrBadFrame, ErrDataTooBig, n, MaxDataSize)
	}
	for k := range data {
		if k == "" {
			return fmt.Errorf("%w: %s has an empty key", ErrBadFrame, field)
		}
	}
	return nil
}

func firstErr(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}
