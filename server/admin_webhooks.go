// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"tether/server/store"
)

// The administration of senders' webhooks: their URL, changed in place,
// and the secret their POSTs are signed with.

// RotatedWebhookSecret is a sender's new webhook secret, the one time it
// is shown. The old one signs beside it until OldSecretUntil.
type RotatedWebhookSecret struct {
	ID             string    `json:"sender_id"`
	WebhookSecret  string    `json:"webhook_secret"`
	OldSecretUntil time.Time `json:"old_secret_until,omitzero"`
}

// MaxWebhookSecretGrace bounds how long a replaced webhook secret keeps
// signing.
const MaxWebhookSecretGrace = 30 * 24 * time.Hour

// updateSender applies change to sender id, naming ErrNoSender when there
// is none.
func updateSender(ctx context.Context, st store.Backend, id, what string, change store.SenderChange) (store.Sender, error) {
	snd, err := st.UpdateSender(ctx, id, change)
	if errors.Is(err, store.ErrNotFound) {
		return store.Sender{}, fmt.Errorf("%s of sender %.40s: %w", what, id, ErrNoSender)
	}
	return snd, err
}

// setSenderWebhook points sender id's upstream messages at webhook, or at
// none when it is empty.
func setSenderWebhook(ctx context.Context, st store.Backend, id, webhook string) (SenderInfo, error) {
	if err := checkWebhook(webhook); err != nil {
		return SenderInfo{}, err
	}
	snd, err := updateSender(ctx, st, id, "change webhook", func(snd *store.Sender) error {
		snd.Webhook = webhook
		return nil
	})
	if err != nil {
		return SenderInfo{}, err
	}
	return SenderInfo{ID: snd.ID, Name: snd.Name, Webhook: snd.Webhook, Created: snd.Created}, nil
}

// rotateWebhookSecret gives sender id a new webhook secret; the old one
// signs beside it for grace more, and one replaced before stops at once.
func rotateWebhookSecret(ctx context.Context, st store.Backend, id string, grace time.Duration, now time.Time) (RotatedWebhookSecret, error) {
	if grace < 0 || grace > MaxWebhookSecretGrace {
		return RotatedWebhookSecret{}, fmt.Errorf("%w: %v, want 0 to %v", errBadGrace, grace, MaxWebhookSecretGrace)
	}
	secret := store.NewWebhookSecret()
	snd, err := updateSender(ctx, st, id, "rotate webhook secret", func(snd *store.Sender) error {
		snd.OldWebhookSecret, snd.OldWebhookSecretUntil = "", time.Time{}
		if grace > 0 && snd.WebhookSecret != "" {
			snd.OldWebhookSecret, snd.OldWebhookSecretUntil = snd.WebhookSecret, now.Add(grace).UTC()
		}
		snd.WebhookSecret = secret
		return nil
	})
	if err != nil {
		return RotatedWebhookSecret{}, err
	}
	return RotatedWebhookSecret{ID: snd.ID, WebhookSecret: secret, OldSecretUntil: snd.OldWebhookSecretUntil}, nil
}

type webhookRequest struct {
	Webhook string `json:"webhook"`
}

type graceRequest struct {
	GraceSeconds int64 `json:"grace_seconds"`
}

// adminWebhookRoutes adds the webhook requests to the admin socket's mux.
func (s *Server) adminWebhookRoutes(mux *http.ServeMux) {
	mux.HandleFunc("PUT /senders/{id}/webhook", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		var req webhookRequest
		if !decodeAdminRequest(w, r, &req) {
			return
		}
		info, err := setSenderWebhook(r.Context(), s.store, id, req.Webhook)
		if err != nil {
			s.failAdmin(w, "change sender webhook", err, "sender", id)
			return
		}
		// The URL may carry a secret in its query: only whether there is
		// one is logged.
		s.log.Info("sender webhook changed", "sender", id, "webhook", req.Webhook != "")
		// Messages waiting for a retry go to the new URL now.
		s.up.routeAppeared(id)
		writeJSON(w, http.StatusOK, info)
	})
	mux.HandleFunc("POST /senders/{id}/webhook-secret", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		var req graceRequest
		if !decodeAdminRequest(w, r, &req) {
			return
		}
		rotated, err := rotateWebhookSecret(r.Context(), s.store, id, secondsDuration(req.GraceSeconds), s.now())
		if err != nil {
			s.failAdmin(w, "rotate webhook secret", err, "sender", id)
			return
		}
		s.log.Info("sender webhook secret rotated", "sender", id, "old_secret_until", rotated.OldSecretUntil)
		writeJSON(w, http.StatusOK, rotated)
	})
}

// SetSenderWebhook changes where sender id's upstream messages are
// POSTed, in place: its ID, key and registrations stay. An empty webhook
// removes it. A running server on the data directory makes its next
// attempt at once, to the new URL; the nodes of a cluster use it from
// each message's next attempt, after the backoff it waits. It wraps
// ErrNoSender when there is no such sender.
func (a *Admin) SetSenderWebhook(ctx context.Context, id, webhook string) (SenderInfo, error) {
	if a.store != nil {
		return setSenderWebhook(ctx, a.store, id, webhook)
	}
	body, _ := json.Marshal(webhookRequest{Webhook: webhook})
	var info SenderInfo
	if err := a.call(ctx, http.MethodPut, "/senders/"+url.PathEscape(id)+"/webhook", body, http.StatusOK, &info); err != nil {
		return SenderInfo{}, fmt.Errorf("change webhook of sender %.40s: %w", id, err)
	}
	return info, nil
}

// RotateWebhookSecret gives sender id a new webhook secret and returns
// it; the old one signs beside it for grace (0: it stops at once). It
// wraps ErrNoSender when there is no such sender.
func (a *Admin) RotateWebhookSecret(ctx context.Context, id string, grace time.Duration) (RotatedWebhookSecret, error) {
	if a.store != nil {
		return rotateWebhookSecret(ctx, a.store, id, grace, a.now())
	}
	body, _ := json.Marshal(graceRequest{GraceSeconds: int64(grace / time.Second)})
	var rotated RotatedWebhookSecret
	if err := a.call(ctx, http.MethodPost, "/senders/"+url.PathEscape(id)+"/webhook-secret", body, http.StatusOK, &rotated); err != nil {
		return RotatedWebhookSecret{}, fmt.Errorf("rotate webhook secret of sender %.40s: %w", id, err)
	}
	return rotated, nil
}
