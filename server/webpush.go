// SPDX-License-Identifier: Apache-2.0

package server

import (
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strconv"

	"tether/server/store"
	"tether/wire"
)

// The built-in Web Push sender (RFC 8030): a registration with
// store.WebPushSender has the endpoint webPushEndpoint, and app servers
// POST its messages there, with no server key. The body goes to the app
// as it came, in the message's raw payload: it is encrypted for the app
// (RFC 8291) and never decrypted here. Pushes share the legacy API's
// path through sendAll: the same lookup, caps, rate limit, store and
// time-to-live 0 rule.

// webPushPath is the route of a registration's endpoint.
const webPushPath = "/up/"

// Urgencies of RFC 8030, section 5.3.
const (
	urgencyVeryLow = "very-low"
	urgencyLow     = "low"
	urgencyNormal  = "normal"
	urgencyHigh    = "high"
)

// maxWebPushTopic is RFC 8030's limit on a Topic header, in characters of
// the URL-safe base64 alphabet.
const maxWebPushTopic = 32

// webPushEndpoint is the URL app servers push to for the registration of
// token, on a server reached at origin.
func webPushEndpoint(origin, token string) string { return origin + webPushPath + token }

// handleWebPush takes one push to a Web Push endpoint and answers as RFC
// 8030 says: 201 with the message's Location once it is stored (or handed
// to the connected device, for a TTL of 0).
func (s *Server) handleWebPush(w http.ResponseWriter, r *http.Request) {
	origin := s.PublicOrigin()
	if origin == "" {
		http.Error(w, "this server has no public URL, so no Web Push endpoints", http.StatusNotFound)
		return
	}
	req, status, problem := s.decodeWebPush(w, r, origin)
	if status != 0 {
		s.log.Debug("web push refused", "status", status, "problem", problem)
		http.Error(w, problem, status)
		return
	}
	token := r.PathValue("token")
	req.tokens = []string{token}
	results, status := s.sendAll(r.Context(), store.Sender{ID: store.WebPushSender}, []sendRequest{req})
	res := results[0][0]
	switch res.Error {
	case "":
		w.Header().Set("Location", webPushEndpoint(origin, token)+"/m/"+url.PathEscape(res.MessageID))
		w.Header().Set("TTL", strconv.FormatInt(req.ttl, 10))
		w.WriteHeader(http.StatusCreated)
		return
	case errInvalidRegistration, errMismatchSenderID:
		http.Error(w, "no such push subscription", http.StatusNotFound)
	case errNotRegistered:
		http.Error(w, "the push subscription has ended", http.StatusGone)
	case errVAPIDMissing:
		w.Header().Set("WWW-Authenticate", "vapid")
		http.Error(w, "the subscription takes only pushes with a VAPID authorization (RFC 8292)", http.StatusUnauthorized)
	case errVAPIDMismatch:
		http.Error(w, "the VAPID key is not the one the subscription was made with", http.StatusForbidden)
	case errDeviceRate:
		w.Header().Set("Retry-After", strconv.Itoa(s.deviceRetryAfter()))
		http.Error(w, "too many messages to the device; retry later", http.StatusTooManyRequests)
	default:
		setRetryAfter(w, status)
		http.Error(w, "cannot store the message now; retry later", status)
	}
}

// decodeWebPush reads a push's headers and body into a request, or says
// why not: the status and text of the answer.
func (s *Server) decodeWebPush(w http.ResponseWriter, r *http.Request, origin string) (sendRequest, int, string) {
	req := sendRequest{webPush: true, ttlInRange: true, urgency: urgencyNormal}
	ttl := r.Header.Get("TTL")
	if ttl == "" {
		return req, http.StatusBadRequest, "the TTL header is required (RFC 8030): the seconds the message may wait for the device"
	}
	n, err := strconv.ParseUint(ttl, 10, 64)
	if err != nil && !errors.Is(err, strconv.ErrRange) {
		return req, http.StatusBadRequest, fmt.Sprintf("TTL %.40q is not a whole number of seconds", ttl)
	}
	// A longer TTL is kept for the longest Tether keeps any message, and
	// the answer's TTL says so.
	req.ttl = int64(min(n, wire.MaxTTL))
	if u := r.Header.Get("Urgency"); u != "" {
		switch u {
		case urgencyVeryLow, urgencyLow, urgencyNormal, urgencyHigh:
			req.urgency = u
		default:
			return req, http.StatusBadRequest, fmt.Sprintf("Urgency %.40q is not very-low, low, normal or high", u)
		}
	}
	if req.urgency == urgencyHigh {
		req.priority = "high"
	}
	if t := r.Header.Get("Topic"); t != "" {
		if !validWebPushTopic(t) {
			return req, http.StatusBadRequest, fmt.Sprintf("Topic %.40q is not 1 to %d characters of the URL-safe base64 alphabet", t, maxWebPushTopic)
		}
		req.collapseKey = t
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, wire.MaxRawSize))
	if err != nil {
		if errors.As(err, new(*http.MaxBytesError)) {
			return req, http.StatusRequestEntityTooLarge, fmt.Sprintf("the body is over %d bytes", wire.MaxRawSize)
		}
		return req, http.StatusBadRequest, "read the body: " + err.Error()
	}
	req.raw = body
	auth, err := parseVAPIDAuth(r.Header.Get("Authorization"), r.Header.Get("Crypto-Key"))
	if err == nil && auth.key != nil {
		err = auth.verify(origin, s.now())
	}
	if err != nil {
		w.Header().Set("WWW-Authenticate", "vapid")
		return req, http.StatusUnauthorized, err.Error()
	}
	req.vapidKey = auth.key
	return req, 0, ""
}

// validWebPushTopic reports whether t is a Topic header RFC 8030 allows.
func validWebPushTopic(t string) bool {
	if len(t) > maxWebPushTopic {
		return false
	}
	for i := 0; i < len(t); i++ {
		switch c := t[i]; {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9', c == '-', c == '_':
		default:
			return false
		}
	}
	return true
}

// deviceRetryAfter is the Retry-After, in whole seconds, of a push over
// the device's rate: the time the limit gives back one message.
func (s *Server) deviceRetryAfter() int {
	per := s.deviceRate.perMinute()
	if per <= 0 {
		return 1
	}
	return max(1, int(math.Ceil(60/float64(per))))
}
