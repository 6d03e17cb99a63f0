package server

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"tether/server/store"
	"tether/wire"
)

// webhookServer records upstream deliveries; it answers failures with 500
// until it is told to accept.
type webhookServer struct {
	*httptest.Server
	mu        sync.Mutex
	failures  int // answer 500 this many more times
	attempts  int
	delivered chan webhookBody
}

func newWebhook(t *testing.T, failures int) *webhookServer {
	w := &webhookServer{failures: failures, delivered: make(chan webhookBody, 100)}
	w.Server = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		w.mu.Lock()
		w.attempts++
		fail := w.failures != 0
		if w.failures > 0 {
			w.failures--
		}
		w.mu.Unlock()
		if r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
			t.Errorf("webhook got %s with Content-Type %q", r.Method, r.Header.Get("Content-Type"))
		}
		if fail {
			http.Error(rw, "not now", http.StatusInternalServerError)
			return
		}
		var b webhookBody
		if err := json.Unmarshal(body, &b); err != nil {
			t.Errorf("webhook body %q: %v", body, err)
		}
		w.delivered <- b
		rw.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(w.Close)
	return w
}

func (w *webhookServer) setFailures(n int) {
	w.mu.Lock()
	w.failures = n
	w.mu.Unlock()
}

func (w *webhookServer) attemptCount() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.attempts
}

func (w *webhookServer) next(t *testing.T) webhookBody {
	t.Helper()
	select {
	case b := <-w.delivered:
		return b
	case <-time.After(10 * time.Second):
		t.Fatal("no webhook delivery")
		return webhookBody{}
	}
}

func sendUpstream(t testing.TB, d *device, u wire.Upstream) wire.UpstreamAck {
	t.Helper()
	d.send(u.ID, u)
	var ack wire.UpstreamAck
	d.expect(wire.TypeUpstreamAck, u.ID, &ack)
	if ack.App != u.App || ack.ID != u.ID {
		t.Fatalf("upstream ack %+v for %s", ack, u.ID)
	}
	return ack
}

func TestUpstreamWebhookRetryAndDedupe(t *testing.T) {
	hook := newWebhook(t, 2)
	ts := startServer(t, nil)
	snd := ts.addSender(hook.URL + "/tether?secret=query")
	d := ts.checkIn()
	token := d.register(app, snd.ID)

	up := wire.Upstream{App: app, To: snd.ID, ID: "up-1", TTL: 600, Data: map[string]string{"temp": "21"}}
	if ack := sendUpstream(t, d, up); ack.Error != "" {
		t.Fatalf("ack error %q", ack.Error)
	}
	got := hook.next(t)
	if got.From != token || got.Category != app || got.MessageID != "up-1" || got.Data["temp"] != "21" || got.TTL != 600 || got.SentTime <= 0 {
		t.Errorf("webhook got %+v", got)
	}
	if n := hook.attemptCount(); n != 3 {
		t.Errorf("%d attempts, want 2 failures and a success", n)
	}
	waitFor(t, "delivered message deleted", func() bool { return upstreamCount(t, ts) == 0 })

	// A repeat is acked again but not delivered twice: the next delivery is
	// the next message.
	if ack := sendUpstream(t, d, up); ack.Error != "" {
		t.Fatalf("repeat ack error %q", ack.Error)
	}
	sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: "up-2", TTL: 600})
	if got := hook.next(t); got.MessageID != "up-2" {
		t.Errorf("after the repeat the webhook got %s, want up-2", got.MessageID)
	}
	if strings.Contains(ts.logs.String(), "secret=query") {
		t.Error("the webhook URL's query is in the log")
	}
}

func TestUpstreamRefused(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	if ack := sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: "x", TTL: 60}); ack.Error != errNotRegistered {
		t.Errorf("unregistered app: ack %+v", ack)
	}
	d.register(app, snd.ID)
	if ack := sendUpstream(t, d, wire.Upstream{App: app, To: "123456789012", ID: "y", TTL: 60}); ack.Error != errNotRegistered {
		t.Errorf("unknown sender: ack %+v", ack)
	}
	if n := upstreamCount(t, ts); n != 0 {
		t.Errorf("%d refused messages stored", n)
	}
}

func TestUpstreamWithoutWebhookKeptUntilTTL(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	d.register(app, snd.ID)
	sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: "kept", TTL: 3600})
	if n := upstreamCount(t, ts); n != 1 {
		t.Fatalf("%d queued, want 1", n)
	}
	// It expires by the server's clock and is dropped at the next look
	// (RetryMax in tests is 100 ms).
	ts.clock.Advance(2 * time.Hour)
	waitFor(t, "expired upstream dropped", func() bool { return upstreamCount(t, ts) == 0 })
	// The drop is logged just after its commit.
	waitFor(t, "the drop logged", func() bool { return strings.Contains(ts.logs.String(), "time to live ran out") })
}

func TestUpstreamDroppedWhenTTLRunsOut(t *testing.T) {
	hook := newWebhook(t, -1) // always fails
	ts := startServer(t, nil)
	snd := ts.addSender(hook.URL)
	d := ts.checkIn()
	d.register(app, snd.ID)
	sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: "doomed", TTL: 60})
	waitFor(t, "a few attempts", func() bool { return hook.attemptCount() >= 2 })
	ts.clock.Advance(time.Minute)
	waitFor(t, "expired upstream dropped", func() bool { return upstreamCount(t, ts) == 0 })

	// TTL 0: one attempt, then dropped.
	before := hook.attemptCount()
	sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: "now-or-never", TTL: 0})
	waitFor(t, "ttl-0 upstream dropped", func() bool { return upstreamCount(t, ts) == 0 && hook.attemptCount() > before })
	if n := hook.attemptCount() - before; n != 1 {
		t.Errorf("%d attempts for a ttl-0 message", n)
	}
}

func TestUpstreamSurvivesRestart(t *testing.T) {
	hook := newWebhook(t, -1)
	dir := t.TempDir()
	ts := startServerIn(t, dir, func(c *Config) { c.RetryMin, c.RetryMax = time.Hour, time.Hour })
	snd := ts.addSender(hook.URL)
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: "persist", TTL: 3600, Data: map[string]string{"a": "b"}})
	waitFor(t, "first attempt", func() bool { return hook.attemptCount() >= 1 })
	ts.stop()

	hook.setFailures(0)
	startServerIn(t, dir, nil)
	got := hook.next(t)
	if got.MessageID != "persist" || got.From != token || got.Data["a"] != "b" {
		t.Errorf("after restart the webhook got %+v", got)
	}
}

func upstreamCount(t testing.TB, ts *testServer) int {
	t.Helper()
	n := 0
	if err := ts.store.EachUpstream(context.Background(), func(store.Upstream) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestDeliveryReceipts(t *testing.T) {
	hook := newWebhook(t, 0)
	var fanned fanOutWaiter
	ts := startServer(t, func(c *Config) { fanned = watchFanOut(c) })
	snd := ts.addSender(hook.URL)
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.subscribe(app, snd.ID, "news")

	plain := ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"n": "plain"}})
	stored := ts.sendOne(snd.ServerKey, token, map[string]any{"delivery_receipt_requested": true})
	live := ts.sendOne(snd.ServerKey, token, map[string]any{"delivery_receipt_requested": true, "time_to_live": 0})
	a, _ := ts.sendTopic(snd.ServerKey, map[string]any{"to": "/topics/news", "delivery_receipt_requested": true})
	fanned.wait(t, a.MessageID.String())
	var ids []string
	for range 4 {
		ids = append(ids, d.expectMessage().ID)
	}
	if hook.attemptCount() != 0 {
		t.Fatal("a receipt went out before the device acked")
	}
	d.ack(ids...)

	got := map[string]webhookBody{}
	for range 3 {
		r := hook.next(t)
		got[r.Data["original_message_id"]] = r
	}
	for _, id := range []string{stored, live, ids[3]} {
		r, ok := got[id]
		if !ok {
			t.Errorf("no receipt for %s", id)
			continue
		}
		if r.MessageType != "receipt" || r.MessageID != "dr2:"+id || r.From != receiptFrom || r.Category != app ||
			r.Data["message_status"] != "MESSAGE_SENT_TO_DEVICE" || r.Data["device_registration_id"] != token ||
			r.Data["message_sent_timestamp"] == "" {
			t.Errorf("receipt %+v", r)
		}
	}
	if _, ok := got[plain]; ok {
		t.Error("a receipt for a message that did not ask for one")
	}
	// An app's upstream message still arrives as one, with no message_type.
	sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: "u1", TTL: 60})
	if u := hook.next(t); u.MessageType != "" || u.MessageID != "u1" || u.From != token {
		t.Errorf("upstream after the receipts: %+v", u)
	}
}
