// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"strings"
	"time"

	"tether/server/internal/clientip"
	"tether/server/store"
)

// Why an app server's credentials were refused.
var (
	errUnknownKey = errors.New("unknown server key")
	// errAuthThrottled refuses a wrong key from an address that failed
	// too often lately.
	errAuthThrottled = errors.New("too many failed authentications from this address; retry in a minute")
)

// throttledFailureDelay is how long the answer to a failure waits, from an
// address over its budget of failures.
const throttledFailureDelay = time.Second

// checkKey authenticates an app server's server key, sent from the IP
// address remote. With senderID set (XMPP's SASL user) the key must be that
// sender's. A right key is always taken: app servers behind one proxy
// share its address, and one of them guessing must not lock out the rest.
// Failures count against remote; past Config.AuthFailureLimit a minute its
// failures are slowed and answered errAuthThrottled.
func (s *Server) checkKey(ctx context.Context, remote, senderID, key string) (store.Sender, error) {
	hash := hashSecret(key)
	var snd store.Sender
	var err error
	if senderID != "" {
		snd, err = s.store.Sender(ctx, senderID)
	} else {
		snd, err = s.store.SenderByKeyHash(ctx, hash)
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
	case err != nil:
		return store.Sender{}, fmt.Errorf("read senders: %w", err)
	case snd.KeyValid(hash, s.now()):
		return snd, nil
	}
	if s.authFailed(ctx, remote, "app server refused: unknown server key", "sender", senderID) {
		return store.Sender{}, errAuthThrottled
	}
	return store.Sender{}, errUnknownKey
}

// authFailed counts a failed authentication of an app server from the
// address remote, logged quietly as msg with attrs, and reports whether
// remote is over Config.AuthFailureLimit: then it has waited
// throttledFailureDelay, so that guessing is slow.
func (s *Server) authFailed(ctx context.Context, remote, msg string, attrs ...any) (throttled bool) {
	throttled = !s.authFailures.allow(ctx, remote)
	s.refusals.refused(remote, msg, append(attrs, "throttled", throttled)...)
	if !throttled {
		return false
	}
	t := time.NewTimer(throttledFailureDelay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
	return true
}

// authenticate finds the sender of the request's server key. A status
// other than 0 refuses the request with problem as its text.
func (s *Server) authenticate(r *http.Request) (snd store.Sender, status int, problem string) {
	key, ok := strings.CutPrefix(r.Header.Get("Authorization"), "key=")
	key = strings.TrimSpace(key)
	if !ok || key == "" {
		return snd, http.StatusUnauthorized, "Unauthorized: send the server key in an Authorization: key=SERVER_KEY header"
	}
	snd, err := s.checkKey(r.Context(), clientip.Key(s.clientAddr(r)).String(), "", key)
	switch {
	case errors.Is(err, errUnknownKey):
		return snd, http.StatusUnauthorized, "Unauthorized: unknown server key"
	case errors.Is(err, errAuthThrottled):
		return snd, http.StatusTooManyRequests, "Too Many Requests: " + err.Error()
	case err != nil:
		s.log.Error("authenticate sender", "err", err)
		return snd, http.StatusServiceUnavailable, "Unavailable: cannot read the sender store"
	}
	return snd, 0, ""
}

// ParseTrustedProxies reads networks (CIDR) or single addresses for
// Config.TrustedProxies.
func ParseTrustedProxies(cidrs []string) ([]netip.Prefix, error) {
	return clientip.ParseTrusted(cidrs)
}

// clientAddr is the address a request comes from: its peer's, or behind
// a trusted proxy the client's.
func (s *Server) clientAddr(r *http.Request) netip.Addr {
	return clientip.FromRequest(r, s.cfg.TrustedProxies)
}
