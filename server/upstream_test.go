// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"tether/internal/testwait"
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
	testwait.Until(t, "delivered message deleted", 10*time.Second, func() bool { return upstreamCount(t, ts) == 0 })

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
	testwait.Until(t, "expired upstream dropped", 10*time.Second, func() bool { return upstreamCount(t, ts) == 0 })
	// The drop is logged just after its commit.
	testwait.Until(t, "the drop logged", 10*time.Second, func() bool { return strings.Contains(ts.logs.String(), "time to live ran out") })
}

func TestUpstreamDroppedWhenTTLRunsOut(t *testing.T) {
	hook := newWebhook(t, -1) // always fails
	ts := startServer(t, nil)
	snd := ts.addSender(hook.URL)
	d := ts.checkIn()
	d.register(app, snd.ID)
	sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: "doomed", TTL: 60})
	testwait.Until(t, "a few attempts", 10*time.Second, func() bool { return hook.attemptCount() >= 2 })
	ts.clock.Advance(time.Minute)
	testwait.Until(t, "expired upstream dropped", 10*time.Second, func() bool { return upstreamCount(t, ts) == 0 })

	// TTL 0: one attempt, then dropped.
	before := hook.attemptCount()
	sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: "now-or-never", TTL: 0})
	testwait.Until(t, "ttl-0 upstream dropped", 10*time.Second, func() bool { return upstreamCount(t, ts) == 0 && hook.attemptCount() > before })
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
	testwait.Until(t, "first attempt", 10*time.Second, func() bool { return hook.attemptCount() >= 1 })
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

// upstreamAnswer sends u and returns the server's answer: "" for an ack,
// the ack's error, or "error " and the code of an error frame.
func (d *device) upstreamAnswer(u wire.Upstream) string {
	t := d.t
	t.Helper()
	d.send(u.ID, u)
	f, err := d.read()
	if err != nil {
		t.Fatalf("waiting for the answer to upstream %s: %v", u.ID, err)
	}
	switch {
	case f.Type == wire.TypeUpstreamAck && f.Ref == u.ID:
		var ack wire.UpstreamAck
		if err := f.Decode(&ack); err != nil || ack.ID != u.ID || ack.App != u.App {
			t.Fatalf("upstream ack %s for %s: %v", f.Body, u.ID, err)
		}
		return ack.Error
	case f.Type == wire.TypeError && f.Ref == u.ID:
		var e wire.Error
		if err := f.Decode(&e); err != nil {
			t.Fatal(err)
		}
		return "error " + e.Code
	}
	t.Fatalf("got %s frame ref %q (%s) for upstream %s", f.Type, f.Ref, f.Body, u.ID)
	return ""
}

// TestUpstreamTooManyMessages: an app has at most 20 upstream messages
// waiting at the server, whatever the agent says; the next is refused for
// good with TooManyMessages, a repeat of a queued one is still acked, and
// a delivery makes room again.
func TestUpstreamTooManyMessages(t *testing.T) {
	hook := newWebhook(t, -1) // down: the messages wait
	ts := startServer(t, nil)
	snd := ts.addSender(hook.URL)
	d := ts.checkIn()
	d.register(app, snd.ID)
	d.register("com.example.other", snd.ID)
	for i := range store.MaxUpstreamPerApp {
		if got := d.upstreamAnswer(wire.Upstream{App: app, To: snd.ID, ID: fmt.Sprint("m", i), TTL: 3600}); got != "" {
			t.Fatalf("message %d: %q", i+1, got)
		}
	}
	tests := []struct {
		name string
		u    wire.Upstream
		want string
	}{
		{"one more", wire.Upstream{App: app, To: snd.ID, ID: "over", TTL: 3600}, wire.UpstreamTooManyMessages},
		{"and again", wire.Upstream{App: app, To: snd.ID, ID: "over", TTL: 3600}, wire.UpstreamTooManyMessages},
		{"a repeat of a queued one", wire.Upstream{App: app, To: snd.ID, ID: "m0", TTL: 3600}, ""},
		{"another app", wire.Upstream{App: "com.example.other", To: snd.ID, ID: "over", TTL: 3600}, ""},
	}
	for _, tc := range tests {
		if got := d.upstreamAnswer(tc.u); got != tc.want {
			t.Errorf("%s: %q, want %q", tc.name, got, tc.want)
		}
	}
	if n := upstreamCount(t, ts); n != store.MaxUpstreamPerApp+1 {
		t.Errorf("%d queued, want %d", n, store.MaxUpstreamPerApp+1)
	}

	hook.setFailures(0)
	testwait.Until(t, "the queue delivered", 10*time.Second, func() bool { return upstreamCount(t, ts) == 0 })
	if got := d.upstreamAnswer(wire.Upstream{App: app, To: snd.ID, ID: "over", TTL: 3600}); got != "" {
		t.Errorf("the refused message once the app server took the others: %q", got)
	}
}

// TestUpstreamRateLimit: a device stores at most its rate of upstream
// messages a minute; over it, a frame is answered unavailable, which the
// agent sends again later, and repeats and refusals do not count.
func TestUpstreamRateLimit(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.UpstreamRateLimit = 3 })
	snd := ts.addSender("")
	d := ts.checkIn()
	d.register(app, snd.ID)
	other := ts.checkIn()
	other.register(app, snd.ID)
	up := func(id string) wire.Upstream { return wire.Upstream{App: app, To: snd.ID, ID: id, TTL: 3600} }
	steps := []struct {
		name string
		d    *device
		u    wire.Upstream
		want string
	}{
		{"first", d, up("a"), ""},
		{"a repeat", d, up("a"), ""},
		{"not registered", d, wire.Upstream{App: "com.example.none", To: snd.ID, ID: "x", TTL: 60}, wire.UpstreamNotRegistered},
		{"second", d, up("b"), ""},
		{"third", d, up("c"), ""},
		{"fourth", d, up("d"), "error " + wire.CodeUnavailable},
		{"a repeat over the rate", d, up("a"), "error " + wire.CodeUnavailable},
		{"another device", other, up("d"), ""},
	}
	for _, s := range steps {
		if got := s.d.upstreamAnswer(s.u); got != s.want {
			t.Errorf("%s: %q, want %q", s.name, got, s.want)
		}
	}
	ts.clock.Advance(20 * time.Second) // a third of a minute: one more
	if got := d.upstreamAnswer(up("d")); got != "" {
		t.Errorf("the fourth after 20 s: %q", got)
	}
	if got := d.upstreamAnswer(up("e")); got != "error "+wire.CodeUnavailable {
		t.Errorf("a fifth after 20 s: %q", got)
	}
}

// gatedWebhook is a slow webhook that records which device's messages
// come, in the order they come, and holds each until the gate opens.
type gatedWebhook struct {
	*httptest.Server
	gate chan struct{}
	mu   sync.Mutex
	from []string // the "from" token of each request, in order
}

func newGatedWebhook(t *testing.T, delay time.Duration) *gatedWebhook {
	w := &gatedWebhook{gate: make(chan struct{})}
	w.Server = httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var b webhookBody
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil {
			t.Errorf("webhook body: %v", err)
		}
		w.mu.Lock()
		w.from = append(w.from, b.From)
		w.mu.Unlock()
		<-w.gate
		time.Sleep(delay)
		rw.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(w.Close)
	t.Cleanup(w.open) // a failed test must not leave requests held
	return w
}

func (w *gatedWebhook) open() {
	w.mu.Lock()
	defer w.mu.Unlock()
	select {
	case <-w.gate:
	default:
		close(w.gate)
	}
}

func (w *gatedWebhook) requests() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.from)
}

// TestUpstreamFairAcrossDevices: a device that queues all it may, over
// many apps, and keeps sending what is refused, delays another device's
// message to the same slow webhook by the attempts in progress and one
// turn, not by its backlog.
func TestUpstreamFairAcrossDevices(t *testing.T) {
	hook := newGatedWebhook(t, 20*time.Millisecond)
	// No rate: the cap alone lets one device queue this much.
	ts := startServer(t, func(c *Config) { c.UpstreamRateLimit = -1 })
	snd := ts.addSender(hook.URL)
	flood := ts.checkIn()
	const apps = 5
	for a := range apps {
		flood.register(fmt.Sprint("com.example.flood", a), snd.ID)
	}
	for i := range store.MaxUpstreamPerApp + 3 {
		for a := range apps {
			u := wire.Upstream{App: fmt.Sprint("com.example.flood", a), To: snd.ID, ID: fmt.Sprint("f", i), TTL: 3600, Data: map[string]string{"pad": strings.Repeat("x", 3000)}}
			want := ""
			if i >= store.MaxUpstreamPerApp {
				want = wire.UpstreamTooManyMessages
			}
			if got := flood.upstreamAnswer(u); got != want {
				t.Fatalf("flood %s of %s: %q, want %q", u.ID, u.App, got, want)
			}
		}
	}
	testwait.Until(t, "the flood's first attempts", 10*time.Second, func() bool { return len(hook.requests()) == (webhook{}).parallel() })

	quiet := ts.checkIn()
	token := quiet.register(app, snd.ID)
	if got := quiet.upstreamAnswer(wire.Upstream{App: app, To: snd.ID, ID: "q", TTL: 3600}); got != "" {
		t.Fatalf("the quiet device's message: %q", got)
	}
	before := len(hook.requests())
	hook.open()
	testwait.Until(t, "the quiet device's message at the webhook", 10*time.Second, func() bool { return slices.Contains(hook.requests(), token) })
	got := hook.requests()
	ahead := slices.Index(got, token) - before
	// The attempts in progress end, and the flood has at most its turn.
	if limit := (webhook{}).parallel() + 1; ahead > limit {
		t.Errorf("%d of the flood's messages reached the webhook before the quiet device's, want at most %d", ahead, limit)
	}
	if n := upstreamCount(t, ts); n < apps*store.MaxUpstreamPerApp-10 {
		t.Errorf("only %d of the flood left: it went first, the test shows nothing", n)
	}
}

// TestUpstreamLaneWindow: of a device's many messages to a webhook that is
// down, the dispatcher holds and retries only the first few; the rest
// wait in the store, and all arrive when it is back.
func TestUpstreamLaneWindow(t *testing.T) {
	var mu sync.Mutex
	down := true
	tried := map[string]int{} // attempts of each message ID
	hook := httptest.NewServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		var b webhookBody
		if err := json.NewDecoder(r.Body).Decode(&b); err != nil {
			t.Errorf("webhook body: %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		tried[b.Category+"/"+b.MessageID]++
		if down {
			http.Error(rw, "not now", http.StatusServiceUnavailable)
		}
	}))
	defer hook.Close()
	snapshot := func() map[string]int {
		mu.Lock()
		defer mu.Unlock()
		return maps.Clone(tried)
	}
	ts := startServer(t, func(c *Config) { c.UpstreamRateLimit = -1 })
	snd := ts.addSender(hook.URL)
	d := ts.checkIn()
	const apps = 2 // 40 messages in one lane
	for a := range apps {
		d.register(fmt.Sprint("com.example.app", a), snd.ID)
	}
	for i := range store.MaxUpstreamPerApp {
		for a := range apps {
			if got := d.upstreamAnswer(wire.Upstream{App: fmt.Sprint("com.example.app", a), To: snd.ID, ID: fmt.Sprint("m", i), TTL: 3600}); got != "" {
				t.Fatalf("queue: %q", got)
			}
		}
	}
	testwait.Until(t, "retries", 10*time.Second, func() bool {
		n := 0
		for _, c := range snapshot() {
			n += c
		}
		return n >= 4*laneWindow
	})
	if got := snapshot(); len(got) > laneWindow {
		t.Errorf("%d messages of one lane attempted while the webhook was down, want at most %d", len(got), laneWindow)
	}

	mu.Lock()
	down = false
	mu.Unlock()
	testwait.Until(t, "the lane delivered", 10*time.Second, func() bool { return upstreamCount(t, ts) == 0 })
	if got := snapshot(); len(got) != apps*store.MaxUpstreamPerApp {
		t.Errorf("%d messages reached the webhook, want %d", len(got), apps*store.MaxUpstreamPerApp)
	}
}
