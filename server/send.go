// SPDX-License-Identifier: Apache-2.0

package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	mathrand "math/rand/v2"

	"tether/server/store"
	"tether/wire"
)

// Error names in send results, as on GCM.
const (
	errMissingRegistration = "MissingRegistration"
	errInvalidRegistration = "InvalidRegistration"
	errNotRegistered       = "NotRegistered"
	errMismatchSenderID    = "MismatchSenderId"
	errInvalidPackageName  = "InvalidPackageName"
	errMessageTooBig       = "MessageTooBig"
	errInvalidDataKey      = "InvalidDataKey"
	errInvalidTTL          = "InvalidTtl"
	errUnavailable         = "Unavailable"
	errInternal            = "InternalServerError"
	errDeviceRate          = "DeviceMessageRateExceeded"
	errTopicsRate          = "TopicsMessageRateExceeded"
	// Refusals of a Web Push, which its answer's status tells.
	errVAPIDMissing  = "VAPIDMissing"
	errVAPIDMismatch = "VAPIDMismatch"
)

const (
	// maxSendBody bounds a send request: 1000 tokens and 4 KiB of data fit
	// many times over.
	maxSendBody = 1 << 20
	// maxRegistrationIDs is GCM's multicast limit.
	maxRegistrationIDs = 1000
	// retryAfter is the Retry-After of a 503, in seconds.
	retryAfter = "10"
	// maxCollapseKey is the longest collapse key the wire carries.
	maxCollapseKey = 1024
	// maxTopicDataSize is GCM's limit on the data of a topic message.
	maxTopicDataSize = 2048
	// topicsPrefix starts a topic in "to".
	topicsPrefix = "/topics/"
)

// sendRequest is a decoded downstream send: the fields of GCM's JSON or
// plain-text request that Tether acts on.
type sendRequest struct {
	tokens []string
	// topic is the name in "to": "/topics/NAME"; condition the parsed
	// "condition". A request has tokens, a topic or a condition.
	topic         string
	condition     *condition
	conditionText string
	data          map[string]string
	notification  map[string]string
	collapseKey   string
	ttl           int64 // seconds; meaningful only when ttlInRange
	ttlInRange    bool
	priority      string
	delayIdle     bool   // delay_while_idle
	restricted    string // restricted_package_name
	receipt       bool   // delivery_receipt_requested
	// originID is the app server's message_id, over XMPP.
	originID string
	dryRun   bool
	plain    bool // a plain-text request, answered in plain text
	// webPush marks a push to a Web Push endpoint (webpush.go): raw is
	// its body, urgency its Urgency, vapidKey the key of its verified
	// VAPID authorization (nil without one).
	webPush  bool
	raw      []byte
	urgency  string
	vapidKey []byte
}

// toTopics reports whether the request goes to a topic or a condition.
func (r sendRequest) toTopics() bool { return r.topic != "" || r.condition != nil }

// jsonSend mirrors GCM's JSON request. Fields Tether does not act on are
// typed all the same, so that a wrong type is a 400 as on GCM. Unknown
// fields are ignored, as GCM ignores them.
type jsonSend struct {
	To                       *string         `json:"to"`
	RegistrationIDs          []string        `json:"registration_ids"`
	Condition                string          `json:"condition"`
	CollapseKey              string          `json:"collapse_key"`
	Priority                 string          `json:"priority"`
	ContentAvailable         bool            `json:"content_available"`
	DelayWhileIdle           bool            `json:"delay_while_idle"`
	TimeToLive               json.RawMessage `json:"time_to_live"`
	RestrictedPackageName    string          `json:"restricted_package_name"`
	DryRun                   bool            `json:"dry_run"`
	DeliveryReceiptRequested bool            `json:"delivery_receipt_requested"`
	Data                     json.RawMessage `json:"data"`
	Notification             json.RawMessage `json:"notification"`
}

// decodeJSONSend decodes a JSON send request. Its errors name the problem
// and become the text of a 400.
func decodeJSONSend(body []byte) (sendRequest, error) {
	var js jsonSend
	if err := unmarshalObject(body, &js); err != nil {
		return sendRequest{}, err
	}
	req := sendRequest{
		collapseKey: js.CollapseKey,
		priority:    js.Priority,
		delayIdle:   js.DelayWhileIdle,
		restricted:  js.RestrictedPackageName,
		receipt:     js.DeliveryReceiptRequested,
		dryRun:      js.DryRun,
		ttl:         wire.MaxTTL,
		ttlInRange:  true,
	}
	to := ""
	if js.To != nil {
		to = *js.To
	}
	switch {
	case js.Condition != "" && (to != "" || js.RegistrationIDs != nil):
		return sendRequest{}, errors.New(`"condition" cannot be combined with "to" or "registration_ids"`)
	case js.Condition != "":
		c, err := parseCondition(js.Condition)
		if err != nil {
			return sendRequest{}, fmt.Errorf(`field "condition": %w`, err)
		}
		req.condition, req.conditionText = c, js.Condition
	case to != "" && js.RegistrationIDs != nil:
		return sendRequest{}, errors.New(`"to" and "registration_ids" cannot both be set`)
	case strings.HasPrefix(to, topicsPrefix):
		req.topic = strings.TrimPrefix(to, topicsPrefix)
		if !wire.ValidTopic(req.topic) {
			return sendRequest{}, fmt.Errorf(`field "to": %.60q is not a topic name: /topics/ and 1 to %d characters of [a-zA-Z0-9-_.~%%]`, to, wire.MaxTopicLen)
		}
	case len(js.RegistrationIDs) > maxRegistrationIDs:
		return sendRequest{}, fmt.Errorf(`"registration_ids" has %d tokens, at most %d are allowed`, len(js.RegistrationIDs), maxRegistrationIDs)
	case to != "":
		req.tokens = []string{to}
	default:
		req.tokens = js.RegistrationIDs
	}
	if !isNull(js.TimeToLive) {
		if c := js.TimeToLive[0]; c != '-' && (c < '0' || c > '9') {
			return sendRequest{}, fmt.Errorf(`field "time_to_live" must be a number, not %s`, js.TimeToLive)
		}
		var err error
		if req.ttl, req.ttlInRange, err = parseTTL(string(js.TimeToLive)); err != nil {
			return sendRequest{}, err
		}
	}
	var err error
	if req.data, err = decodePayload("data", js.Data); err != nil {
		return sendRequest{}, err
	}
	if req.notification, err = decodePayload("notification", js.Notification); err != nil {
		return sendRequest{}, err
	}
	return req, req.check()
}

// unmarshalObject decodes body, which must be a JSON object, into v. Its
// errors name the problem and become the text of a 400.
func unmarshalObject(body []byte, v any) error {
	if trimmed := bytes.TrimSpace(body); len(trimmed) == 0 || trimmed[0] != '{' {
		return errors.New("the body must be a JSON object")
	}
	if err := json.Unmarshal(body, v); err != nil {
		return describeJSONError(err)
	}
	return nil
}

// decodePayload decodes a data or notification object into string values
// as delivered.
func decodePayload(field string, raw json.RawMessage) (map[string]string, error) {
	if isNull(raw) {
		return nil, nil
	}
	var obj map[string]json.RawMessage
	if raw[0] != '{' || json.Unmarshal(raw, &obj) != nil {
		return nil, fmt.Errorf("field %q must be a JSON object", field)
	}
	out := make(map[string]string, len(obj))
	for k, v := range obj {
		out[k] = dataValue(v)
	}
	return out, nil
}

func isNull(raw json.RawMessage) bool { return len(raw) == 0 || string(raw) == "null" }

// dataValue is a data value as delivered: strings as they are, anything
// else as its compact JSON text, as GCM delivers it.
func dataValue(v json.RawMessage) string {
	if v[0] == '"' {
		var s string
		if json.Unmarshal(v, &s) == nil {
			return s
		}
	}
	var b bytes.Buffer
	if json.Compact(&b, v) != nil {
		b.Reset()
		b.Write(v)
	}
	// Compact keeps bytes that are not UTF-8 inside strings; the decoder
	// turns them into U+FFFD in string values, and so does this.
	return strings.ToValidUTF8(b.String(), "\uFFFD")
}

// parseTTL parses a time to live in whole seconds. A number out of range
// is not an error but InvalidTtl, as on GCM; a fraction is an error.
func parseTTL(s string) (ttl int64, inRange bool, err error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if errors.Is(err, strconv.ErrRange) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf(`field "time_to_live" must be a whole number of seconds, not %.40q`, s)
	}
	return n, n >= 0 && n <= wire.MaxTTL, nil
}

// check rejects what the wire cannot carry and GCM has no error name for.
func (r sendRequest) check() error {
	if _, empty := r.notification[""]; empty {
		return errors.New(`field "notification" has an empty key`)
	}
	switch r.priority {
	case "", "normal", "high":
	default:
		return fmt.Errorf(`field "priority" must be "normal" or "high", not %.40q`, r.priority)
	}
	if len(r.collapseKey) > maxCollapseKey {
		return fmt.Errorf(`field "collapse_key" is %d bytes, at most %d are allowed`, len(r.collapseKey), maxCollapseKey)
	}
	if !utf8.ValidString(r.collapseKey) || strings.IndexFunc(r.collapseKey, unicode.IsControl) >= 0 {
		return errors.New(`field "collapse_key" must be UTF-8 text without control characters`)
	}
	return nil
}

// messageError is the GCM error of the message as a whole, which every
// token gets, or "".
func (r sendRequest) messageError() string {
	if !r.ttlInRange {
		return errInvalidTTL
	}
	for k := range r.data {
		if k == "" || k == "from" || k == "gcm" || strings.HasPrefix(k, "google") {
			return errInvalidDataKey
		}
	}
	limit := wire.MaxDataSize
	if r.toTopics() {
		limit = maxTopicDataSize
	}
	if wire.DataSize(r.data)+wire.DataSize(r.notification) > limit {
		return errMessageTooBig
	}
	return ""
}

// describeJSONError turns a decoding error into the text of a 400.
func describeJSONError(err error) error {
	var typeErr *json.UnmarshalTypeError
	var syntaxErr *json.SyntaxError
	switch {
	case errors.As(err, &typeErr) && typeErr.Field == "":
		return fmt.Errorf("the body must be a JSON object, not a JSON %s", typeErr.Value)
	case errors.As(err, &typeErr):
		return fmt.Errorf("field %q must be %s, not a JSON %s", typeErr.Field, describeType(typeErr.Type), typeErr.Value)
	case errors.As(err, &syntaxErr):
		return fmt.Errorf("invalid JSON at byte %d: %v", syntaxErr.Offset, err)
	}
	return fmt.Errorf("invalid JSON: %v", err)
}

func describeType(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		return "an array of strings"
	}
	return "a " + t.String()
}

// decodeFormSend decodes GCM's plain-text request: one registration_id and
// data.KEY fields, form-encoded.
func decodeFormSend(body []byte) (sendRequest, error) {
	vals, err := url.ParseQuery(string(body))
	if err != nil {
		return sendRequest{}, fmt.Errorf("invalid form body: %v", err)
	}
	req := sendRequest{plain: true, ttl: wire.MaxTTL, ttlInRange: true}
	for k, vs := range vals {
		if len(vs) > 1 {
			return sendRequest{}, fmt.Errorf("field %.100q is given %d times; plain-text requests take one registration_id, use JSON for multicast", k, len(vs))
		}
		v := vs[0]
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			return sendRequest{}, fmt.Errorf("field %.100q is not UTF-8", k)
		}
		switch {
		case k == "registration_id" && strings.HasPrefix(v, topicsPrefix):
			return sendRequest{}, errors.New("plain-text requests take one registration token; send to topics with JSON")
		case k == "registration_id":
			if v != "" {
				req.tokens = []string{v}
			}
		case k == "restricted_package_name":
			req.restricted = v
		case k == "collapse_key":
			req.collapseKey = v
		case k == "priority":
			req.priority = v
		case k == "time_to_live":
			if req.ttl, req.ttlInRange, err = parseTTL(v); err != nil {
				return sendRequest{}, err
			}
		case k == "dry_run", k == "delay_while_idle":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return sendRequest{}, fmt.Errorf("field %q must be true or false (or 1 or 0), not %.40q", k, v)
			}
			if k == "dry_run" {
				req.dryRun = b
			} else {
				req.delayIdle = b
			}
		case strings.HasPrefix(k, "data."):
			if req.data == nil {
				req.data = make(map[string]string)
			}
			req.data[strings.TrimPrefix(k, "data.")] = v
		}
	}
	return req, req.check()
}

// sendResult is one entry of the results array.
type sendResult struct {
	MessageID string `json:"message_id,omitempty"`
	// RegistrationID is the canonical token when the message went to a
	// newer token of the registration than the one given.
	RegistrationID string `json:"registration_id,omitempty"`
	Error          string `json:"error,omitempty"`
}

type sendResponse struct {
	MulticastID  int64        `json:"multicast_id"`
	Success      int          `json:"success"`
	Failure      int          `json:"failure"`
	CanonicalIDs int          `json:"canonical_ids"`
	Results      []sendResult `json:"results"`
}

// topicResponse is GCM's answer to a topic or condition send: a numeric
// message ID or an error.
type topicResponse struct {
	MessageID int64  `json:"message_id,omitempty"`
	Error     string `json:"error,omitempty"`
}

func (s *Server) handleSend(w http.ResponseWriter, r *http.Request) {
	snd, status, problem := s.authenticate(r)
	if status != 0 {
		s.metrics.sent(apiHTTP, requestRefusal(status))
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", retryAfter)
		}
		http.Error(w, problem, status)
		return
	}
	body, ok := readBody(w, r)
	if !ok {
		s.metrics.sent(apiHTTP, requestRefusal(http.StatusBadRequest))
		return
	}
	decode := decodeJSONSend
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt == "application/x-www-form-urlencoded" {
		decode = decodeFormSend
	}
	req, err := decode(body)
	if err != nil {
		s.log.Debug("bad send request", "sender", snd.ID, "err", err)
		s.metrics.sent(apiHTTP, requestRefusal(http.StatusBadRequest))
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if req.toTopics() {
		resp, status := s.sendTopic(r.Context(), snd, req)
		s.metrics.sent(apiHTTP, resp.Error)
		writeSendAnswer(w, status, resp)
		return
	}
	results, status := s.send(r.Context(), snd, req)
	for _, res := range results {
		s.metrics.sent(apiHTTP, res.Error)
	}
	if req.plain {
		res := results[0]
		setRetryAfter(w, status)
		w.Header().Set("Content-Type", "text/plain; charset=UTF-8")
		w.WriteHeader(status)
		switch {
		case res.Error != "":
			io.WriteString(w, "Error="+res.Error+"\n")
		case res.RegistrationID != "":
			io.WriteString(w, "id="+res.MessageID+"\nregistration_id="+res.RegistrationID+"\n")
		default:
			io.WriteString(w, "id="+res.MessageID+"\n")
		}
		return
	}
	resp := sendResponse{MulticastID: mathrand.Int64N(maxJSONSafeInt) + 1, Results: results}
	for _, res := range results {
		if res.Error == "" {
			resp.Success++
		} else {
			resp.Failure++
		}
		if res.RegistrationID != "" {
			resp.CanonicalIDs++
		}
	}
	writeSendAnswer(w, status, resp)
}

// requestRefusal names, for the metrics, a send refused as a whole with an
// HTTP status before any message was looked at.
func requestRefusal(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "Unauthorized"
	case http.StatusTooManyRequests:
		return "TooManyRequests"
	case http.StatusServiceUnavailable:
		return errUnavailable
	default:
		return "BadRequest"
	}
}

// maxJSONSafeInt bounds numeric IDs so that JavaScript reads them exactly.
const maxJSONSafeInt = 1<<53 - 1

// readBody reads a request body of at most maxSendBody bytes, or answers
// the request and returns false.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxSendBody))
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			http.Error(w, fmt.Sprintf("request body is over %d bytes", maxSendBody), http.StatusRequestEntityTooLarge)
			return nil, false
		}
		http.Error(w, "read request body: "+err.Error(), http.StatusBadRequest)
		return nil, false
	}
	return body, true
}

func setRetryAfter(w http.ResponseWriter, status int) {
	if status >= 500 {
		w.Header().Set("Retry-After", retryAfter)
	}
}

func writeSendAnswer(w http.ResponseWriter, status int, v any) {
	setRetryAfter(w, status)
	writeJSON(w, status, v)
}

// storeFailure is the GCM error and HTTP status for a store that failed:
// a damaged record is the server's fault, anything else (a full disk, a
// store being closed) passes.
func storeFailure(err error) (code string, status int) {
	if errors.Is(err, store.ErrCorrupt) {
		return errInternal, http.StatusInternalServerError
	}
	return errUnavailable, http.StatusServiceUnavailable
}

// send stores and delivers one request to registration tokens and returns
// the results in the order of its tokens and the HTTP status: 200, or 5xx
// when the store failed and the sender should retry.
func (s *Server) send(ctx context.Context, snd store.Sender, req sendRequest) (results []sendResult, status int) {
	all, status := s.sendAll(ctx, snd, []sendRequest{req})
	return all[0], status
}

// sendAll stores and delivers requests to registration tokens in one store
// transaction, so that many messages cost one commit, and returns each
// request's results in the order of its tokens. The status is 200, or 5xx
// when the store failed: then every stored result is an error.
func (s *Server) sendAll(ctx context.Context, snd store.Sender, reqs []sendRequest) (results [][]sendResult, status int) {
	results = make([][]sendResult, len(reqs))
	var tokens []string
	for i, req := range reqs {
		if len(req.tokens) == 0 {
			results[i] = []sendResult{{Error: errMissingRegistration}}
			continue
		}
		results[i] = make([]sendResult, len(req.tokens))
		if code := req.messageError(); code != "" {
			for j := range results[i] {
				results[i][j].Error = code
			}
			continue
		}
		tokens = append(tokens, req.tokens...)
	}
	if len(tokens) == 0 {
		return results, http.StatusOK
	}
	now := s.now()
	resolved, err := s.store.ResolveTokens(ctx, tokens, now)
	if err != nil {
		s.log.Error("look up tokens", "sender", snd.ID, "err", err)
		code, status := storeFailure(err)
		for _, rs := range results {
			for j := range rs {
				if rs[j].Error == "" {
					rs[j].Error = code
				}
			}
		}
		return results, status
	}
	type at struct{ req, token int } // where a message's result goes
	var queue, live []store.Message
	var queueAt []at
	for i, req := range reqs {
		if len(req.tokens) == 0 || results[i][0].Error != "" {
			continue // refused as a whole above
		}
		for j := range req.tokens {
			res := resolved[0]
			resolved = resolved[1:]
			result := &results[i][j]
			reg := res.Reg
			switch {
			case res.Given.Token == "":
				result.Error = errInvalidRegistration
				continue
			case res.Given.Sender != snd.ID:
				result.Error = errMismatchSenderID
				continue
			case reg.Token == "":
				result.Error = errNotRegistered
				continue
			case req.restricted != "" && req.restricted != reg.App:
				result.Error = errInvalidPackageName
				continue
			case req.webPush && reg.VAPID != "" && req.vapidKey == nil:
				result.Error = errVAPIDMissing
				continue
			case req.webPush && reg.VAPID != "" && !sameVAPIDKey(reg.VAPID, req.vapidKey):
				result.Error = errVAPIDMismatch
				continue
			case !req.dryRun && !s.deviceRate.allow(ctx, reg.Device):
				result.Error = errDeviceRate
				continue
			}
			m := store.Message{
				ID: newMessageID(now), Device: reg.Device, Token: reg.Token, App: reg.App, Sender: snd.ID,
				CollapseKey: req.collapseKey, Priority: req.priority, DelayWhileIdle: req.delayIdle,
				Data: req.data, Notification: req.notification, Receipt: req.receipt, OriginID: req.originID,
				Raw: req.raw, Urgency: req.urgency, Sent: now, Expiry: now.Add(secondsDuration(req.ttl)),
			}
			result.MessageID = m.ID
			if res.Canonical() {
				result.RegistrationID = reg.Token
			}
			switch {
			case req.dryRun:
			case req.ttl == 0:
				live = append(live, m)
			default:
				queue = append(queue, m)
				queueAt = append(queueAt, at{i, j})
			}
		}
	}
	if len(queue) > 0 {
		queued, err := s.store.Enqueue(ctx, queue, s.hub)
		if err != nil {
			s.log.Error("store downstream messages", "sender", snd.ID, "count", len(queue), "err", err)
			code, status := storeFailure(err)
			for _, a := range queueAt {
				results[a.req][a.token] = sendResult{Error: code}
			}
			return results, status
		}
		for k, ok := range queued {
			m := queue[k]
			if !ok {
				results[queueAt[k].req][queueAt[k].token] = sendResult{Error: errNotRegistered}
				continue
			}
			s.log.Debug("message queued", "sender", snd.ID, "device", m.Device, "message_id", m.ID)
			s.hub.notify(m.Device)
		}
	}
	for _, m := range live {
		if !s.hub.deliverNow(m) {
			s.log.Debug("time-to-live 0 message dropped: device not connected or idle", "sender", snd.ID, "device", m.Device, "message_id", m.ID)
		}
	}
	return results, http.StatusOK
}

// sendTopic stores a message to a topic or a condition for fan-out, and
// answers once it is stored.
func (s *Server) sendTopic(ctx context.Context, snd store.Sender, req sendRequest) (topicResponse, int) {
	if code := req.messageError(); code != "" {
		return topicResponse{Error: code}, http.StatusOK
	}
	tm := store.TopicMessage{
		ID: strconv.FormatInt(mathrand.Int64N(maxJSONSafeInt)+1, 10), Sender: snd.ID,
		Topic: req.topic, RestrictedPackage: req.restricted, CollapseKey: req.collapseKey, Priority: req.priority,
		DelayWhileIdle: req.delayIdle, Data: req.data, Notification: req.notification, Receipt: req.receipt, Live: req.ttl == 0,
		OriginID: req.originID,
	}
	rateKey := snd.ID + "\x00" + req.topic
	if req.condition != nil {
		tm.Condition, tm.Topics = req.conditionText, req.condition.topics
		rateKey = snd.ID + "\x00" + req.conditionText
	} else {
		tm.Topics = []string{req.topic}
	}
	if !req.dryRun && !s.topicRate.allow(ctx, rateKey) {
		return topicResponse{Error: errTopicsRate}, http.StatusOK
	}
	id, _ := strconv.ParseInt(tm.ID, 10, 64)
	if req.dryRun {
		return topicResponse{MessageID: id}, http.StatusOK
	}
	tm.Sent = s.now()
	tm.Expiry = tm.Sent.Add(secondsDuration(req.ttl))
	if tm.Live {
		// Now or never: copies go to the devices connected while it is
		// fanned out, which may take a while for many subscribers.
		tm.Expiry = tm.Sent.Add(liveFanOutWindow)
	}
	if err := s.store.PutTopicMessage(ctx, &tm); err != nil {
		s.log.Error("store topic message", "sender", snd.ID, "err", err)
		code, status := storeFailure(err)
		return topicResponse{Error: code}, status
	}
	s.log.Debug("topic message stored", "sender", snd.ID, "message_id", tm.ID, "topics", len(tm.Topics))
	if s.node != nil {
		s.node.topicQueued(snd.ID)
	} else {
		s.fan.wakeUp()
	}
	return topicResponse{MessageID: id}, http.StatusOK
}

// newMessageID makes an ID in GCM's form: 0:MICROSECONDS%RANDOM_HEX.
func newMessageID(now time.Time) string {
	return fmt.Sprintf("0:%d%%%016x", now.UnixMicro(), mathrand.Uint64())
}

func secondsDuration(n int64) time.Duration { return time.Duration(n) * time.Second }
