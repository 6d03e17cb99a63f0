// SPDX-License-Identifier: Apache-2.0

package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode"

	"tether/wire"
)

// The FCM HTTP v1 API: POST /v1/projects/{project}/messages:send with an
// access token from /token. A v1 message becomes the same sendRequest as
// a legacy one and goes the same way, so that caps, collapse keys, times
// to live and priorities hold alike; only its form and its errors differ.

// FCM v1's error codes (FcmError.errorCode).
const (
	fcmInvalidArgument  = "INVALID_ARGUMENT"
	fcmUnregistered     = "UNREGISTERED"
	fcmSenderIDMismatch = "SENDER_ID_MISMATCH"
	fcmQuotaExceeded    = "QUOTA_EXCEEDED"
	fcmUnavailable      = "UNAVAILABLE"
	fcmInternal         = "INTERNAL"
)

// fcmErrorType is the @type of FCM's error details.
const fcmErrorType = "type.googleapis.com/google.firebase.fcm.v1.FcmError"

// v1Request is the body of messages:send.
type v1Request struct {
	Message      *v1Message `json:"message"`
	ValidateOnly bool       `json:"validate_only"`
}

// v1Message is FCM v1's Message. apns and webpush are for other
// platforms: taken, so that a message for every platform is not refused,
// and ignored.
type v1Message struct {
	Name         string            `json:"name"` // output only: ignored
	Token        string            `json:"token"`
	Topic        string            `json:"topic"`
	Condition    string            `json:"condition"`
	Data         map[string]string `json:"data"`
	Notification *v1Notification   `json:"notification"`
	Android      *v1Android        `json:"android"`
	Webpush      json.RawMessage   `json:"webpush"`
	APNS         json.RawMessage   `json:"apns"`
	FCMOptions   *v1Options        `json:"fcm_options"`
}

type v1Notification struct {
	Title string `json:"title"`
	Body  string `json:"body"`
	Image string `json:"image"`
}

type v1Android struct {
	CollapseKey           string            `json:"collapse_key"`
	Priority              string            `json:"priority"`
	TTL                   string            `json:"ttl"`
	RestrictedPackageName string            `json:"restricted_package_name"`
	Data                  map[string]string `json:"data"`
	// Notification has more fields than the top level's, all delivered
	// as strings, as the legacy API delivers its notification.
	Notification json.RawMessage `json:"notification"`
	FCMOptions   *v1Options      `json:"fcm_options"`
	DirectBootOK bool            `json:"direct_boot_ok"`
}

type v1Options struct {
	AnalyticsLabel string `json:"analytics_label"`
}

// decodeV1Send decodes a messages:send body into a send request. Field
// names are taken in snake_case or lowerCamelCase, as Google takes them.
// Its errors name the problem and become the message of a 400.
func decodeV1Send(body []byte) (sendRequest, error) {
	var generic map[string]any
	if err := unmarshalObject(body, &generic); err != nil {
		return sendRequest{}, err
	}
	snaked, _ := json.Marshal(snakeKeys(generic))
	dec := json.NewDecoder(bytes.NewReader(snaked))
	dec.DisallowUnknownFields()
	var v1 v1Request
	if err := dec.Decode(&v1); err != nil {
		return sendRequest{}, describeJSONError(err)
	}
	m := v1.Message
	if m == nil {
		return sendRequest{}, errors.New(`field "message" is required`)
	}
	req := sendRequest{data: m.Data, dryRun: v1.ValidateOnly, ttl: wire.MaxTTL, ttlInRange: true}
	targets := 0
	for _, t := range []string{m.Token, m.Topic, m.Condition} {
		if t != "" {
			targets++
		}
	}
	if targets != 1 {
		return sendRequest{}, errors.New(`the message must have exactly one of "token", "topic" and "condition"`)
	}
	switch {
	case m.Token != "":
		req.tokens = []string{m.Token}
	case m.Topic != "":
		req.topic = strings.TrimPrefix(m.Topic, topicsPrefix)
		if !wire.ValidTopic(req.topic) {
			return sendRequest{}, fmt.Errorf(`field "message.topic": %.60q is not a topic name: 1 to %d characters of [a-zA-Z0-9-_.~%%]`, m.Topic, wire.MaxTopicLen)
		}
	default:
		c, err := parseCondition(m.Condition)
		if err != nil {
			return sendRequest{}, fmt.Errorf(`field "message.condition": %w`, err)
		}
		req.condition, req.conditionText = c, m.Condition
	}
	if n := m.Notification; n != nil {
		req.notification = map[string]string{}
		for k, v := range map[string]string{"title": n.Title, "body": n.Body, "image": n.Image} {
			if v != "" {
				req.notification[k] = v
			}
		}
	}
	if a := m.Android; a != nil {
		if err := a.apply(&req); err != nil {
			return sendRequest{}, err
		}
	}
	return req, req.check()
}

// apply sets what the android block says on req: it overrides the
// message's data and adds to its notification.
func (a *v1Android) apply(req *sendRequest) error {
	req.collapseKey, req.restricted = a.CollapseKey, a.RestrictedPackageName
	switch strings.ToUpper(a.Priority) {
	case "":
	case "NORMAL":
		req.priority = "normal"
	case "HIGH":
		req.priority = "high"
	default:
		return fmt.Errorf(`field "message.android.priority" must be "NORMAL" or "HIGH", not %.40q`, a.Priority)
	}
	if a.TTL != "" {
		ttl, err := parseDuration(a.TTL)
		if err != nil {
			return fmt.Errorf(`field "message.android.ttl": %w`, err)
		}
		req.ttl, req.ttlInRange = ttl, ttl <= wire.MaxTTL
	}
	if a.Data != nil {
		req.data = a.Data
	}
	extra, err := decodePayload("message.android.notification", a.Notification)
	if err != nil {
		return err
	}
	if len(extra) > 0 && req.notification == nil {
		req.notification = map[string]string{}
	}
	for k, v := range extra {
		req.notification[k] = v
	}
	return nil
}

// parseDuration parses a protobuf Duration in its JSON form ("3.5s",
// "86400s") into whole seconds, a fraction rounded up so that a message
// never lives shorter than asked.
func parseDuration(s string) (int64, error) {
	num, ok := strings.CutSuffix(s, "s")
	whole, frac, _ := strings.Cut(num, ".")
	bad := !ok || whole == "" || len(frac) > 9 || strings.ContainsFunc(whole+frac, func(r rune) bool { return r < '0' || r > '9' })
	if bad {
		return 0, fmt.Errorf("%.40q is not a duration such as \"3.5s\": seconds, with at most 9 decimals, and an s", s)
	}
	n, err := strconv.ParseInt(whole, 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%.40q is out of range", s)
	}
	if strings.Trim(frac, "0") != "" {
		n++
	}
	return n, nil
}

// snakeKeys turns the object keys of a decoded JSON value from
// lowerCamelCase into snake_case, but not those inside data maps, which
// are the app's own.
func snakeKeys(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, val := range v {
			k = snakeCase(k)
			if k != "data" {
				val = snakeKeys(val)
			}
			out[k] = val
		}
		return out
	case []any:
		for i := range v {
			v[i] = snakeKeys(v[i])
		}
	}
	return v
}

func snakeCase(s string) string {
	if !strings.ContainsFunc(s, unicode.IsUpper) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsUpper(r) {
			b.WriteByte('_')
			r = unicode.ToLower(r)
		}
		b.WriteRune(r)
	}
	return b.String()
}

// fcmStatus is google.rpc.Status as Google's APIs answer errors with it.
type fcmStatus struct {
	Error fcmStatusBody `json:"error"`
}

type fcmStatusBody struct {
	Code    int              `json:"code"`
	Message string           `json:"message"`
	Status  string           `json:"status"`
	Details []fcmErrorDetail `json:"details,omitempty"`
}

type fcmErrorDetail struct {
	Type      string `json:"@type"`
	ErrorCode string `json:"errorCode"`
}

// canonicalStatus is google.rpc.Code's name for an HTTP status.
func canonicalStatus(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "INVALID_ARGUMENT"
	case http.StatusUnauthorized:
		return "UNAUTHENTICATED"
	case http.StatusForbidden:
		return "PERMISSION_DENIED"
	case http.StatusNotFound:
		return "NOT_FOUND"
	case http.StatusTooManyRequests:
		return "RESOURCE_EXHAUSTED"
	case http.StatusServiceUnavailable:
		return "UNAVAILABLE"
	}
	return "INTERNAL"
}

// writeFCMError answers with FCM v1's error form; with code "" it has no
// FcmError, as for errors of authentication.
func writeFCMError(w http.ResponseWriter, status int, code, message string) {
	body := fcmStatusBody{Code: status, Message: message, Status: canonicalStatus(status)}
	if code != "" {
		body.Details = []fcmErrorDetail{{Type: fcmErrorType, ErrorCode: code}}
	}
	if status == http.StatusTooManyRequests {
		w.Header().Set("Retry-After", "60")
	}
	writeSendAnswer(w, status, fcmStatus{Error: body})
}

// fcmErrors are the HTTP status, FCM error code and message of each
// legacy error a v1 send may get.
var fcmErrors = map[string]struct {
	status  int
	code    string
	message string
}{
	errMissingRegistration: {http.StatusBadRequest, fcmInvalidArgument, "The message has no registration token."},
	errInvalidRegistration: {http.StatusBadRequest, fcmInvalidArgument, "The registration token is not a valid registration token."},
	errNotRegistered:       {http.StatusNotFound, fcmUnregistered, "Requested entity was not found: the registration token is not registered."},
	errMismatchSenderID:    {http.StatusForbidden, fcmSenderIDMismatch, "The registration token belongs to another sender."},
	errInvalidPackageName:  {http.StatusBadRequest, fcmInvalidArgument, "The registration token is not for android.restricted_package_name."},
	errMessageTooBig:       {http.StatusBadRequest, fcmInvalidArgument, "The message's data and notification are over the size limit."},
	errInvalidDataKey:      {http.StatusBadRequest, fcmInvalidArgument, "A data key is empty, is \"from\" or \"gcm\", or starts with \"google\"."},
	errInvalidTTL:          {http.StatusBadRequest, fcmInvalidArgument, "android.ttl must be 0s to 2419200s."},
	errDeviceRate:          {http.StatusTooManyRequests, fcmQuotaExceeded, "Too many messages to this device."},
	errTopicsRate:          {http.StatusTooManyRequests, fcmQuotaExceeded, "Too many messages to this topic."},
	errUnavailable:         {http.StatusServiceUnavailable, fcmUnavailable, "The server is unavailable; retry later."},
	errInternal:            {http.StatusInternalServerError, fcmInternal, "Internal error."},
}

// handleSendV1 serves POST /v1/projects/{project}/messages:send.
func (s *Server) handleSendV1(w http.ResponseWriter, r *http.Request) {
	snd, err := s.bearerSender(r)
	switch {
	case errors.Is(err, errBadAccessToken):
		writeFCMError(w, http.StatusUnauthorized, "", "Request had invalid authentication credentials. Expected an OAuth 2 access token from the service account's token_uri.")
		return
	case errors.Is(err, errAuthThrottled):
		writeFCMError(w, http.StatusTooManyRequests, "", errAuthThrottled.Error())
		return
	case err != nil:
		s.log.Error("authenticate sender", "err", err)
		writeFCMError(w, http.StatusServiceUnavailable, fcmUnavailable, "Cannot read the sender store; retry later.")
		return
	}
	if project := r.PathValue("project"); project != snd.ID {
		writeFCMError(w, http.StatusForbidden, "", fmt.Sprintf("The access token is for project %s, not %.40q.", snd.ID, project))
		return
	}
	body, ok := readBody(w, r)
	if !ok {
		return
	}
	req, err := decodeV1Send(body)
	if err != nil {
		s.log.Debug("bad v1 send request", "sender", snd.ID, "err", err)
		writeFCMError(w, http.StatusBadRequest, fcmInvalidArgument, err.Error())
		return
	}
	var id, failure string
	if req.toTopics() {
		resp, _ := s.sendTopic(r.Context(), snd, req)
		id, failure = strconv.FormatInt(resp.MessageID, 10), resp.Error
	} else {
		results, _ := s.send(r.Context(), snd, req)
		id, failure = results[0].MessageID, results[0].Error
	}
	if failure != "" {
		e, ok := fcmErrors[failure]
		if !ok {
			e.status, e.code, e.message = http.StatusInternalServerError, fcmInternal, failure
		}
		writeFCMError(w, e.status, e.code, e.message)
		return
	}
	writeJSON(w, http.StatusOK, map[string]string{"name": "projects/" + snd.ID + "/messages/" + id})
}
