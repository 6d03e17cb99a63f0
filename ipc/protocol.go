package ipc

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
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
}

// Response answers one Request. OK tells success from failure; the other
// fields are set by the ops that produce them.
type Response struct {
	ID        json.RawMessage `json:"id,omitempty"`
	OK        bool            `json:"ok"`
	Token     string          `json:"token,omitempty"`
	MessageID string          `json:"message_id,omitempty"`
	Sent      bool            `json:"sent,omitempty"`
	Status    *Status         `json:"status,omitempty"`
	Error     *ResponseError  `json:"error,omitempty"`
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

var sentinelCodes = []struct {
	err  error
	code string
}{
	{ErrPermission, CodePermissionDenied},
	{ErrUnknownApp, CodeUnknownApp},
	{ErrNotRegistered, CodeNotRegistered},
	{ErrTooManyMessages, CodeTooManyMessages},
	{ErrTooManyRegistrations, CodeTooManyRegistrations},
	{ErrInvalidArgument, CodeInvalidArgument},
	{ErrOffline, CodeOffline},
	{ErrRefused, CodeRefused},
	{ErrStorage, CodeStorageUnavailable},
	{ErrMessageTooBig, CodeMessageTooBig},
	{ErrUnsupported, CodeUnsupported},
}

// backendError turns an error from a Backend into what the app sees: the
// code of the sentinel it wraps (Internal if none) and its full text.
func backendError(err error) *ResponseError {
	for _, s := range sentinelCodes {
		if errors.Is(err, s.err) {
			return &ResponseError{Code: s.code, Message: err.Error()}
		}
	}
	return &ResponseError{Code: CodeInternal, Message: err.Error()}
}

// wireRequest is Request as decoded: data values stay raw so that a
// non-string value can be reported by key.
type wireRequest struct {
	Request
	Data map[string]json.RawMessage `json:"data,omitempty"`
}

// decodeRequest parses one request line. On failure it still returns
// whatever ID could be read, so that the error response can echo it.
func decodeRequest(line []byte) (Request, *ResponseError) {
	var w wireRequest
	if err := json.Unmarshal(line, &w); err != nil {
		var typeErr *json.UnmarshalTypeError
		if !errors.As(err, &typeErr) {
			return Request{}, &ResponseError{Code: CodeBadRequest, Message: "invalid JSON: " + strings.TrimPrefix(err.Error(), "json: ")}
		}
		if typeErr.Field == "" {
			return Request{}, &ResponseError{Code: CodeBadRequest, Message: "a request must be a JSON object, not " + typeErr.Value}
		}
		// The path runs through the embedded Request; the app knows
		// the field by its own name.
		field := strings.TrimPrefix(typeErr.Field, "Request.")
		return Request{ID: w.ID}, &ResponseError{
			Code:    CodeInvalidArgument,
			Message: fmt.Sprintf("field %q must be %s, not %s", field, fieldKind(field), typeErr.Value),
		}
	}
	req := w.Request
	if req.Op == "" {
		return Request{ID: req.ID}, &ResponseError{Code: CodeBadRequest, Message: `the request has no "op"`}
	}
	if w.Data != nil {
		req.Data = make(map[string]string, len(w.Data))
		// Sorted, so that of several bad values the same one is named
		// every time.
		for _, key := range slices.Sorted(maps.Keys(w.Data)) {
			raw := bytes.TrimSpace(w.Data[key])
			if len(raw) == 0 || raw[0] != '"' {
				return Request{ID: req.ID}, &ResponseError{
					Code:    CodeInvalidArgument,
					Message: fmt.Sprintf("data value for key %q is %s; data values must be strings", key, jsonKind(raw)),
				}
			}
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return Request{ID: req.ID}, &ResponseError{Code: CodeBadRequest, Message: fmt.Sprintf("data value for key %q: %v", key, err)}
			}
			req.Data[key] = s
		}
	}
	return req, nil
}

// fieldKind says what a request field must hold, for error messages.
func fieldKind(field string) string {
	switch field {
	case "ttl":
		return "an integer number of seconds"
	case "wait":
		return "true or false"
	case "ids":
		return "an array of strings"
	case "data":
		return "an object of string values"
	default:
		return "a string"
	}
}

// jsonKind names the type of a raw JSON value by its first byte.
func jsonKind(raw []byte) string {
	if len(raw) == 0 {
		return "empty"
	}
	switch raw[0] {
	case '{':
		return "an object"
	case '[':
		return "an array"
	case 't', 'f':
		return "a boolean"
	case 'n':
		return "null"
	default:
		return "a number"
	}
}
