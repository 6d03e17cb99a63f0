// SPDX-License-Identifier: Apache-2.0

package server

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"time"

	"tether/server/store"
	"tether/wire"
)

// Errors of the Instance ID API's topic management, as Google names them.
const (
	iidNotFound         = "NOT_FOUND"
	iidInvalidArgument  = "INVALID_ARGUMENT"
	iidPermissionDenied = "PERMISSION_DENIED"
	iidTooManyTopics    = "TOO_MANY_TOPICS"
	iidInternal         = "INTERNAL"
)

// iidBatch is the body of batchAdd and batchRemove.
type iidBatch struct {
	To     string   `json:"to"`
	Tokens []string `json:"registration_tokens"`
}

type iidResult struct {
	Error string `json:"error,omitempty"`
}

// handleBatchSubscriptions serves the Instance ID API's
// POST /iid/v1:batchAdd and :batchRemove, with which app servers subscribe
// their registrations to topics (or unsubscribe them), up to 1000 at a time.
func (s *Server) handleBatchSubscriptions(subscribe bool) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		snd, ok := s.authenticateOrRefuse(w, r)
		if !ok {
			return
		}
		body, ok := readBody(w, r)
		if !ok {
			return
		}
		var req iidBatch
		if err := json.Unmarshal(body, &req); err != nil {
			http.Error(w, describeJSONError(err).Error(), http.StatusBadRequest)
			return
		}
		topic, ok := strings.CutPrefix(req.To, topicsPrefix)
		switch {
		case !ok || !wire.ValidTopic(topic):
			http.Error(w, fmt.Sprintf(`field "to" must be /topics/ and a topic name, not %.60q`, req.To), http.StatusBadRequest)
			return
		case len(req.Tokens) == 0 || len(req.Tokens) > maxRegistrationIDs:
			http.Error(w, fmt.Sprintf(`"registration_tokens" has %d tokens, want 1 to %d`, len(req.Tokens), maxRegistrationIDs), http.StatusBadRequest)
			return
		}
		outcomes, err := s.store.ChangeSubscriptions(r.Context(), snd.ID, topic, req.Tokens, subscribe, s.now())
		if err != nil {
			s.log.Error("change topic subscriptions", "sender", snd.ID, "err", err)
			_, status := storeFailure(err)
			results := make([]iidResult, len(req.Tokens))
			for i := range results {
				results[i].Error = iidInternal
			}
			writeSendAnswer(w, status, map[string]any{"results": results})
			return
		}
		results := make([]iidResult, len(outcomes))
		for i, o := range outcomes {
			results[i].Error = iidError(o)
		}
		s.log.Debug("topic subscriptions changed", "sender", snd.ID, "subscribe", subscribe, "tokens", len(req.Tokens))
		writeJSON(w, http.StatusOK, map[string]any{"results": results})
	}
}

// handleSubscribeOne serves POST /iid/v1/TOKEN/rel/topics/TOPIC, which
// subscribes one registration.
func (s *Server) handleSubscribeOne(w http.ResponseWriter, r *http.Request) {
	snd, ok := s.authenticateOrRefuse(w, r)
	if !ok {
		return
	}
	token, topic := r.PathValue("token"), r.PathValue("topic")
	if !wire.ValidTopic(topic) {
		writeJSON(w, http.StatusBadRequest, iidResult{Error: iidInvalidArgument})
		return
	}
	outcomes, err := s.store.ChangeSubscriptions(r.Context(), snd.ID, topic, []string{token}, true, s.now())
	if err != nil {
		s.log.Error("subscribe to topic", "sender", snd.ID, "err", err)
		_, status := storeFailure(err)
		writeSendAnswer(w, status, iidResult{Error: iidInternal})
		return
	}
	switch o := outcomes[0]; o {
	case store.SubscriptionDone:
		writeJSON(w, http.StatusOK, struct{}{})
	case store.SubscriptionNotFound:
		writeJSON(w, http.StatusNotFound, iidResult{Error: iidError(o)})
	case store.SubscriptionWrongSender:
		writeJSON(w, http.StatusForbidden, iidResult{Error: iidError(o)})
	default:
		writeJSON(w, http.StatusBadRequest, iidResult{Error: iidError(o)})
	}
}

// authenticateOrRefuse finds the sender of the request's server key, or
// answers the request and returns false.
func (s *Server) authenticateOrRefuse(w http.ResponseWriter, r *http.Request) (store.Sender, bool) {
	snd, status, problem := s.authenticate(r)
	if status != 0 {
		setRetryAfter(w, status)
		http.Error(w, problem, status)
		return store.Sender{}, false
	}
	return snd, true
}

func iidError(o store.SubscriptionOutcome) string {
	switch o {
	case store.SubscriptionNotFound:
		return iidNotFound
	case store.SubscriptionWrongSender:
		return iidPermissionDenied
	case store.SubscriptionTooManyTopics:
		return iidTooManyTopics
	}
	return ""
}

// iidNoInfo is Instance ID's answer for a token it does not know.
const iidNoInfo = "No information found about this instance id."

// iidInfo is Instance ID's answer to GET /iid/info/TOKEN.
type iidInfo struct {
	Application      string   `json:"application"`
	AuthorizedEntity string   `json:"authorizedEntity"`
	Platform         string   `json:"platform"`
	Rel              *iidRels `json:"rel,omitempty"`
}

type iidRels struct {
	Topics map[string]iidTopic `json:"topics"`
}

type iidTopic struct {
	AddDate string `json:"addDate,omitempty"`
}

// handleInfo serves GET /iid/info/TOKEN[?details=true], Instance ID's
// description of a registration: its app, its sender and, with details,
// its topics and the day each subscription was made (UTC). Tether's
// registrations are of Linux apps named as Android's are, so the platform
// is ANDROID, which GCM's libraries know.
func (s *Server) handleInfo(w http.ResponseWriter, r *http.Request) {
	snd, ok := s.authenticateOrRefuse(w, r)
	if !ok {
		return
	}
	details := r.URL.Query().Get("details") == "true"
	resolved, err := s.store.ResolveTokens(r.Context(), []string{r.PathValue("token")}, s.now())
	var subs []store.Subscription
	if err == nil && resolved[0].Reg.Token != "" && resolved[0].Given.Sender == snd.ID && details {
		subs, err = s.store.Subscriptions(r.Context(), resolved[0].Reg.Token)
	}
	if err != nil {
		s.log.Error("read instance info", "sender", snd.ID, "err", err)
		_, status := storeFailure(err)
		writeSendAnswer(w, status, iidResult{Error: iidInternal})
		return
	}
	res := resolved[0]
	switch {
	case res.Reg.Token == "":
		writeJSON(w, http.StatusNotFound, iidResult{Error: iidNoInfo})
		return
	case res.Given.Sender != snd.ID:
		writeJSON(w, http.StatusForbidden, iidResult{Error: iidPermissionDenied})
		return
	}
	info := iidInfo{Application: res.Reg.App, AuthorizedEntity: snd.ID, Platform: "ANDROID"}
	if details {
		info.Rel = &iidRels{Topics: make(map[string]iidTopic, len(subs))}
		for _, sub := range subs {
			var t iidTopic
			if !sub.Added.IsZero() {
				t.AddDate = sub.Added.UTC().Format(time.DateOnly)
			}
			info.Rel.Topics[sub.Topic] = t
		}
	}
	writeJSON(w, http.StatusOK, info)
}
