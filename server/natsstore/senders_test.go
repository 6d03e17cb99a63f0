// SPDX-License-Identifier: Apache-2.0

package natsstore_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"tether/server/natsstore"
	"tether/server/store"
)

// TestSendersGivenWebhookSecrets: senders stored before webhook signatures,
// without a secret, have one each once a server opens the state; one that
// has a secret keeps it.
func TestSendersGivenWebhookSecrets(t *testing.T) {
	s, cfg := open(t, 1)
	ctx := context.Background()
	var ids []string
	for _, key := range []string{"k1", "k2"} {
		snd, err := s.AddSender(ctx, key, "", []byte(key), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, snd.ID)
	}
	kept, err := s.AddSender(ctx, "kept", "", []byte("k3"), time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := s.UpdateSender(ctx, id, func(snd *store.Sender) error { snd.WebhookSecret = ""; return nil }); err != nil {
			t.Fatal(err)
		}
	}
	cfg.Conn = connect(t)
	reopened, err := natsstore.Open(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, id := range append(ids, kept.ID) {
		snd, err := reopened.Sender(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(snd.WebhookSecret, "whsec_") || seen[snd.WebhookSecret] {
			t.Errorf("sender %s has webhook secret %q, want one of its own", id, snd.WebhookSecret)
		}
		seen[snd.WebhookSecret] = true
		if id == kept.ID && snd.WebhookSecret != kept.WebhookSecret {
			t.Errorf("a sender's webhook secret changed on open")
		}
	}
}
