// SPDX-License-Identifier: Apache-2.0

package socketdoor

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"tether/ipc"
)

var sentinelCodes = []struct {
	err  error
	code string
}{
	{ipc.ErrPermission, ipc.CodePermissionDenied},
	{ipc.ErrUnknownApp, ipc.CodeUnknownApp},
	{ipc.ErrNotRegistered, ipc.CodeNotRegistered},
	{ipc.ErrTooManyMessages, ipc.CodeTooManyMessages},
	{ipc.ErrTooManyRegistrations, ipc.CodeTooManyRegistrations},
	{ipc.ErrInvalidArgument, ipc.CodeInvalidArgument},
	{ipc.ErrOffline, ipc.CodeOffline},
	{ipc.ErrRefused, ipc.CodeRefused},
	{ipc.ErrStorage, ipc.CodeStorageUnavailable},
	{ipc.ErrMessageTooBig, ipc.CodeMessageTooBig},
	{ipc.ErrUnsupported, ipc.CodeUnsupported},
}

// backendError turns an error from a Backend into what the app sees: the
// code of the sentinel it wraps (Internal if none) and its full text.
func backendError(err error) *ipc.ResponseError {
	for _, s := range sentinelCodes {
		if errors.Is(err, s.err) {
			return &ipc.ResponseError{Code: s.code, Message: err.Error()}
		}
	}
	return &ipc.ResponseError{Code: ipc.CodeInternal, Message: err.Error()}
}

// wireRequest is Request as decoded: data values stay raw so that a
// non-string value can be reported by key.
type wireRequest struct {
	ipc.Request
	Data map[string]json.RawMessage `json:"data,omitempty"`
}

// decodeRequest parses one request line. On failure it still returns
// whatever ID could be read, so that the error response can echo it.
func decodeRequest(line []byte) (ipc.Request, *ipc.ResponseError) {
	var w wireRequest
	if err := json.Unmarshal(line, &w); err != nil {
		var typeErr *json.UnmarshalTypeError
		if !errors.As(err, &typeErr) {
			return ipc.Request{}, &ipc.ResponseError{Code: ipc.CodeBadRequest, Message: "invalid JSON: " + strings.TrimPrefix(err.Error(), "json: ")}
		}
		if typeErr.Field == "" {
			return ipc.Request{}, &ipc.ResponseError{Code: ipc.CodeBadRequest, Message: "a request must be a JSON object, not " + typeErr.Value}
		}
		// The path runs through the embedded Request; the app knows
		// the field by its own name.
		field := strings.TrimPrefix(typeErr.Field, "Request.")
		return ipc.Request{ID: w.ID}, &ipc.ResponseError{
			Code:    ipc.CodeInvalidArgument,
			Message: fmt.Sprintf("field %q must be %s, not %s", field, fieldKind(field), typeErr.Value),
		}
	}
	req := w.Request
	if req.Op == "" {
		return ipc.Request{ID: req.ID}, &ipc.ResponseError{Code: ipc.CodeBadRequest, Message: `the request has no "op"`}
	}
	if w.Data != nil {
		req.Data = make(map[string]string, len(w.Data))
		// Sorted, so that of several bad values the same one is named
		// every time.
		for _, key := range slices.Sorted(maps.Keys(w.Data)) {
			raw := bytes.TrimSpace(w.Data[key])
			if len(raw) == 0 || raw[0] != '"' {
				return ipc.Request{ID: req.ID}, &ipc.ResponseError{
					Code:    ipc.CodeInvalidArgument,
					Message: fmt.Sprintf("data value for key %q is %s; data values must be strings", key, jsonKind(raw)),
				}
			}
			var s string
			if err := json.Unmarshal(raw, &s); err != nil {
				return ipc.Request{ID: req.ID}, &ipc.ResponseError{Code: ipc.CodeBadRequest, Message: fmt.Sprintf("data value for key %q: %v", key, err)}
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
