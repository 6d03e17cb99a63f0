// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"time"

	"tether/wire"
)

// noticeMemory is how long the agent remembers a notice's ID, so that the
// server's repeats of a notice whose ack was lost are applied once. The
// server repeats it in the next sessions, which come well within this.
const noticeMemory = 7 * 24 * time.Hour

// tokenRefreshed stores a token the server rotated, for the app's listener
// to be told, and acks the notice.
func (r *sessionRun) tokenRefreshed(ctx context.Context, f wire.Frame) {
	a := r.a
	var n wire.TokenRefresh
	if err := f.Decode(&n); err != nil {
		r.reject(ctx, f.Ref, wire.CodeBadFrame, err)
		return
	}
	changed, err := a.store.RefreshToken(n.App, n.Sender, n.Token, n.Endpoint, n.ID, a.now().Add(noticeMemory))
	if err != nil {
		// Not acked: the server sends it again in the next session.
		a.log.Error("token refresh not stored", "app", n.App, "sender", n.Sender, "err", err)
		return
	}
	r.send(ctx, "", wire.Ack{IDs: []string{n.ID}})
	if changed {
		a.log.Info("token refreshed", "app", n.App, "sender", n.Sender)
		a.inbox.forget(n.App, nil, true) // the listener tells the app
	}
}

// deletedMessages counts messages the server dropped for an app, acks the
// notice, and lets the app's listener know.
func (r *sessionRun) deletedMessages(ctx context.Context, f wire.Frame) {
	a := r.a
	var n wire.DeletedMessages
	if err := f.Decode(&n); err != nil {
		r.reject(ctx, f.Ref, wire.CodeBadFrame, err)
		return
	}
	added, err := a.store.AddDeleted(n.App, n.ID, n.Count, a.now().Add(noticeMemory))
	if err != nil {
		a.log.Error("deleted-messages notice not stored", "app", n.App, "err", err)
		return
	}
	r.send(ctx, "", wire.Ack{IDs: []string{n.ID}})
	if added {
		a.log.Info("server dropped messages", "app", n.App, "count", n.Count)
		a.inbox.forget(n.App, nil, true) // the listener reports the count
	}
}

// goAway obeys a server that is about to close the session and asked not
// to be dialled again for a while, maybe naming another node to dial.
func (r *sessionRun) goAway(f wire.Frame) {
	var g wire.GoAway
	if err := f.Decode(&g); err != nil {
		r.reject(context.Background(), f.Ref, wire.CodeBadFrame, err)
		return
	}
	d := time.Duration(g.RetryAfter) * time.Second
	log := r.a.log
	if g.Server != "" {
		log = log.With("next_server", g.Server)
	}
	log.Info("server going away", "retry_after", d, "reason", g.Reason)
	r.a.link.GoAway(d, g.Server)
}
