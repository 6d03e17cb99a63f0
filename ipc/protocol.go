// SPDX-License-Identifier: Apache-2.0

package ipc

import (
	"encoding/json"
	"fmt"
)

// MaxLineSize is the longest request line the socket door reads, without
// its newline. A longer line is answered with LineTooLong and the
// connection is closed, since the rest of it cannot be told from the next
// request.
const MaxLineSize = 64 << 10

// Request is one line from an app on the socket. Which fields an op reads
// is listed in docs/ipc.md; the others are ignored.
type Request struct {
	// ID is any JSON value; the door echoes it in the response.
	ID        json.RawMessage   `json:"id,omitempty"`
	Op        string            `json:"op"`
	App       string            `json:"app,omitempty"`
	Sender    string            `json:"sender,omitempty"`
	Topic     string            `json:"topic,omitempty"`
	To        string            `json:"to,omitempty"`
	MessageID string            `json:"message_id,omitempty"`
	TTL       *int64            `json:"ttl,omitempty"`
	Priority  string            `json:"priority,omitempty"`
	Data      map[string]string `json:"data,omitempty"`
	Wait      bool              `json:"wait,omitempty"`
	IDs       []string          `json:"ids,omitempty"`
	// VAPID is the app server's VAPID public key of a register with
	// WebPushSender (RegisterRequest.VAPID).
	VAPID string `json:"vapid,omitempty"`
}

// Response answers one Request. OK tells success from failure; the other
// fields are set by the ops that produce them.
type Response struct {
	ID    json.RawMessage `json:"id,omitempty"`
	OK    bool            `json:"ok"`
	Token string          `json:"token,omitempty"`
	// Endpoint answers a register with WebPushSender: the URL app servers
	// POST Web Push messages to.
	Endpoint  string         `json:"endpoint,omitempty"`
	MessageID string         `json:"message_id,omitempty"`
	Sent      bool           `json:"sent,omitempty"`
	Status    *Status        `json:"status,omitempty"`
	Error     *ResponseError `json:"error,omitempty"`
}

// ResponseError names why a request failed: Code is a stable CamelCase
// name to branch on, Message a sentence for people.
type ResponseError struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

func (e *ResponseError) Error() string { return fmt.Sprintf("%s (%s)", e.Message, e.Code) }

// Event is a line the door pushes to a listening connection without being
// asked. It has no id; Event names its kind and the kind decides which of
// the other fields are set.
type Event struct {
	Event     string   `json:"event"`
	App       string   `json:"app,omitempty"`
	MessageID string   `json:"message_id,omitempty"`
	Message   *Message `json:"message,omitempty"`
	Error     string   `json:"error,omitempty"`
	Count     int      `json:"count,omitempty"`
	Sender    string   `json:"sender,omitempty"`
	Token     string   `json:"token,omitempty"`
}

// Event kinds.
const (
	EventMessage         = "message"
	EventSent            = "sent"
	EventSendError       = "send_error"
	EventDeletedMessages = "deleted_messages"
	EventReplaced        = "replaced"
	EventTokenRefreshed  = "token_refreshed"
)

// Error codes on the socket. The first group mirrors the Backend's sentinel
// errors, the second is the door's own.
const (
	CodePermissionDenied     = "PermissionDenied"
	CodeUnknownApp           = "UnknownApp"
	CodeNotRegistered        = "NotRegistered"
	CodeTooManyMessages      = "TooManyMessages"
	CodeTooManyRegistrations = "TooManyRegistrations"
	CodeInvalidArgument      = "InvalidArgument"
	CodeOffline              = "Offline"
	CodeRefused              = "Refused"
	CodeStorageUnavailable   = "StorageUnavailable"
	CodeMessageTooBig        = "MessageTooBig"
	CodeUnsupported          = "Unsupported"

	CodeBadRequest  = "BadRequest"
	CodeUnknownOp   = "UnknownOp"
	CodeLineTooLong = "LineTooLong"
	// CodeTooManyConnections refuses a connection over the caller's
	// limit; the connection is closed.
	CodeTooManyConnections = "TooManyConnections"
	CodeAlreadyListening   = "AlreadyListening"
	CodeSendError          = "SendError"
	CodeInternal           = "Internal"
)

// MaxQueuedEvents is how many events a door keeps for a slow app. It holds
// a full delivery window (100 messages) plus the results of the app's
// pending upstream messages (20) with room to spare; an app that lets it
// fill up is dropped rather than stall the backend.
const MaxQueuedEvents = 256
