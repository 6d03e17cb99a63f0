// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"tether/internal/testwait"
	"tether/server/store"
	"tether/wire"
)

func TestTopicSendAnswers(t *testing.T) {
	var fanned fanOutWaiter
	ts := startServer(t, func(c *Config) { fanned = watchFanOut(c) })
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	d.subscribe(app, snd.ID, "news")

	js := func(v map[string]any) map[string]any { return v }
	tests := []struct {
		name  string
		req   map[string]any
		error string // "" for a message_id
	}{
		{"topic", js(map[string]any{"to": "/topics/news", "data": map[string]string{"k": "v"}}), ""},
		{"topic with every character", js(map[string]any{"to": "/topics/Az09-_.~%"}), ""},
		{"condition", js(map[string]any{"condition": "'news' in topics && ('a' in topics || \"b\" in topics)"}), ""},
		{"data at the topic limit", js(map[string]any{"to": "/topics/news", "data": map[string]string{"k": strings.Repeat("x", 2047)}}), ""},
		{"data over the topic limit", js(map[string]any{"to": "/topics/news", "data": map[string]string{"k": strings.Repeat("x", 2048)}}), errMessageTooBig},
		{"notification counts", js(map[string]any{"to": "/topics/news", "data": map[string]string{"k": strings.Repeat("x", 1023)},
			"notification": map[string]string{"t": strings.Repeat("x", 1024)}}), errMessageTooBig},
		{"condition over the topic limit", js(map[string]any{"condition": "'news' in topics", "data": map[string]string{"k": strings.Repeat("x", 2048)}}), errMessageTooBig},
		{"reserved key", js(map[string]any{"to": "/topics/news", "data": map[string]string{"google.x": "1"}}), errInvalidDataKey},
		{"ttl out of range", js(map[string]any{"to": "/topics/news", "time_to_live": -1}), errInvalidTTL},
		{"dry run", js(map[string]any{"to": "/topics/news", "dry_run": true}), ""},
	}
	stored := 0
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, ans := ts.sendTopic(snd.ServerKey, tt.req)
			if ans.status != http.StatusOK || a.Error != tt.error {
				t.Fatalf("answer %d %s, want error %q", ans.status, ans.body, tt.error)
			}
			if tt.error != "" {
				return
			}
			if n, err := a.MessageID.Int64(); err != nil || n <= 0 || n > maxJSONSafeInt {
				t.Fatalf("message_id %s is not a positive integer JavaScript reads exactly", a.MessageID)
			}
			if tt.req["dry_run"] == nil {
				stored++
				fanned.wait(t, a.MessageID.String())
			}
		})
	}
	// The subscriber got the send to news and the one at the limit; the
	// condition needs a or b as well, the dry run was not stored.
	for range 2 {
		if m := d.expectMessage(); m.Topic != "news" {
			t.Errorf("topic message delivered with topic %q", m.Topic)
		}
	}
	marker(t, ts, d, snd.ServerKey, token)
	if left, _ := ts.store.TopicMessages(context.Background(), 0, 10); len(left) != 0 || stored != 4 {
		t.Errorf("%d topic messages left in the store after %d stored", len(left), stored)
	}
}

// topicFleet is a server with two senders and three devices:
//
//	d1: app1 (sender A) on news and weather; appB (sender B) on news
//	d2: app2 (sender A) on news
//	d3: app3 (sender A) on weather
type topicFleet struct {
	ts                 *testServer
	fanned             fanOutWaiter
	a, b               NewSender
	d1, d2, d3         *device
	tok1, tok2, tok3   string
	tokB               string
	app1, app2, appThr string
}

func newTopicFleet(t *testing.T, mod func(*Config)) *topicFleet {
	f := &topicFleet{app1: "com.example.one", app2: "com.example.two", appThr: "com.example.three"}
	f.ts = startServer(t, func(c *Config) {
		f.fanned = watchFanOut(c)
		if mod != nil {
			mod(c)
		}
	})
	f.a, f.b = f.ts.addSender(""), f.ts.addSender("")
	f.d1, f.d2, f.d3 = f.ts.checkIn(), f.ts.checkIn(), f.ts.checkIn()
	f.tok1 = f.d1.register(f.app1, f.a.ID)
	f.tokB = f.d1.register("com.example.b", f.b.ID)
	f.tok2 = f.d2.register(f.app2, f.a.ID)
	f.tok3 = f.d3.register(f.appThr, f.a.ID)
	f.d1.subscribe(f.app1, f.a.ID, "news")
	f.d1.subscribe(f.app1, f.a.ID, "weather")
	f.d1.subscribe("com.example.b", f.b.ID, "news")
	f.d2.subscribe(f.app2, f.a.ID, "news")
	f.d3.subscribe(f.appThr, f.a.ID, "weather")
	return f
}

// send sends a topic message as sender A and waits for its fan-out.
func (f *topicFleet) send(t *testing.T, req map[string]any) (id string, copies int) {
	t.Helper()
	a, ans := f.ts.sendTopic(f.a.ServerKey, req)
	if a.Error != "" || ans.status != http.StatusOK {
		t.Fatalf("topic send %v: %d %s", req, ans.status, ans.body)
	}
	return a.MessageID.String(), f.fanned.wait(t, a.MessageID.String())
}

// expect checks that each device got exactly the topic messages marked
// true, carrying data n, and nothing else.
func (f *topicFleet) expect(t *testing.T, n string, d1, d2, d3 bool) {
	t.Helper()
	for _, dt := range []struct {
		d     *device
		token string
		want  bool
	}{{f.d1, f.tok1, d1}, {f.d2, f.tok2, d2}, {f.d3, f.tok3, d3}} {
		if dt.want {
			m := dt.d.expectMessage()
			if m.Data["n"] != n || m.Token != dt.token || m.From != f.a.ID {
				t.Errorf("device %s got %+v, want message %s", dt.d.id, m, n)
			}
		}
		marker(t, f.ts, dt.d, f.a.ServerKey, dt.token)
	}
}

func TestTopicFanOut(t *testing.T) {
	f := newTopicFleet(t, nil)

	_, copies := f.send(t, map[string]any{"to": "/topics/news", "data": map[string]string{"n": "1"},
		"notification": map[string]any{"title": "Storm", "badge": 3}, "collapse_key": "headline", "priority": "high", "time_to_live": 600})
	m := f.d1.expectMessage()
	if m.Topic != "news" || m.App != f.app1 || m.CollapseKey != "headline" || m.Priority != "high" || m.TTL != 600 ||
		!maps.Equal(m.Notification, map[string]string{"title": "Storm", "badge": "3"}) {
		t.Errorf("topic copy delivered as %+v", m)
	}
	if m2 := f.d2.expectMessage(); m2.Topic != "news" || m2.ID == m.ID || m2.Data["n"] != "1" {
		t.Errorf("second copy %+v (first %s)", m2, m.ID)
	}
	if copies != 2 {
		t.Errorf("%d copies, want 2: sender B's subscriber is not sender A's", copies)
	}
	f.expect(t, "", false, false, false)

	tests := []struct {
		name       string
		req        map[string]any
		d1, d2, d3 bool
	}{
		{"and", map[string]any{"condition": "'news' in topics && 'weather' in topics"}, true, false, false},
		{"or: one copy each", map[string]any{"condition": "'news' in topics || 'weather' in topics"}, true, true, true},
		{"parentheses", map[string]any{"condition": "('news' in topics || 'sport' in topics) && 'weather' in topics"}, true, false, false},
		{"and binds tighter", map[string]any{"condition": "'sport' in topics && 'news' in topics || 'weather' in topics"}, true, false, true},
		{"nobody", map[string]any{"condition": "'sport' in topics"}, false, false, false},
		{"restricted to one app", map[string]any{"to": "/topics/news", "restricted_package_name": "com.example.two"}, false, true, false},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := fmt.Sprint(i + 2)
			tt.req["data"] = map[string]string{"n": n}
			_, copies := f.send(t, tt.req)
			want := 0
			for _, b := range []bool{tt.d1, tt.d2, tt.d3} {
				if b {
					want++
				}
			}
			if copies != want {
				t.Errorf("%d copies, want %d", copies, want)
			}
			f.expect(t, n, tt.d1, tt.d2, tt.d3)
		})
	}

	// Unsubscribing and unregistering end the copies.
	f.d2.send("u", wire.Unsubscribe{App: f.app2, Sender: f.a.ID, Topic: "news"})
	var u wire.Unsubscribed
	f.d2.expect(wire.TypeUnsubscribed, "u", &u)
	f.d1.send("x", wire.Unregister{App: f.app1, Sender: f.a.ID})
	var ur wire.Unregistered
	f.d1.expect(wire.TypeUnregistered, "x", &ur)
	if _, copies := f.send(t, map[string]any{"to": "/topics/news"}); copies != 0 {
		t.Errorf("%d copies after the subscribers left", copies)
	}
	if topics, _ := f.ts.store.Topics(context.Background(), f.tok1); len(topics) != 0 {
		t.Errorf("unregistered token still subscribed to %v", topics)
	}
}

func TestTopicTimeToLiveZero(t *testing.T) {
	f := newTopicFleet(t, nil)
	f.d2.conn.Close()
	testwait.Until(t, "d2 gone", 10*time.Second, func() bool { return f.ts.hub.session(f.d2.id) == nil })
	f.send(t, map[string]any{"to": "/topics/news", "time_to_live": 0, "data": map[string]string{"n": "live"}})
	if m := f.d1.expectMessage(); m.Data["n"] != "live" || m.TTL != 0 {
		t.Errorf("connected subscriber got %+v", m)
	}
	f.d2 = f.ts.reconnect(f.d2)
	f.expect(t, "", false, false, false)
	if left, _, _ := f.ts.store.Pending(context.Background(), f.d2.id, 0, 0, nil); len(left) != 0 {
		t.Errorf("a time-to-live-0 topic message was stored for an offline device")
	}
}

func TestTopicFanOutInBatches(t *testing.T) {
	var fanned fanOutWaiter
	ts := startServer(t, func(c *Config) { fanned = watchFanOut(c); c.FanOutBatch = 3 })
	snd := ts.addSender("")
	d := ts.checkIn()
	var apps []string
	for i := range 10 {
		a := fmt.Sprintf("com.example.app%d", i)
		d.register(a, snd.ID)
		d.subscribe(a, snd.ID, "all")
		apps = append(apps, a)
	}
	a, _ := ts.sendTopic(snd.ServerKey, map[string]any{"to": "/topics/all"})
	if copies := fanned.wait(t, a.MessageID.String()); copies != 10 {
		t.Errorf("%d copies, want 10", copies)
	}
	var got []string
	for range apps {
		m := d.expectMessage()
		got = append(got, m.App)
		d.ack(m.ID)
	}
	slices.Sort(got)
	if !slices.Equal(got, apps) {
		t.Errorf("copies went to %v, want one to each of %v", got, apps)
	}
}

// TestTopicFanOutResumesAfterCrash stores a topic message whose fan-out
// stopped part of the way, as a crash leaves it, and starts a server on
// it: every subscriber gets exactly one copy.
func TestTopicFanOutResumesAfterCrash(t *testing.T) {
	dir := t.TempDir()
	if err := prepareDataDir(dir); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(filepath.Join(dir, storeFile), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	snd, err := addSender(context.Background(), st, "crashy", "", now)
	if err != nil {
		t.Fatal(err)
	}
	dev, err := st.AddDevice(context.Background(), store.Device{SecretHash: hashSecret("secret"), Created: now})
	if err != nil {
		t.Fatal(err)
	}
	const subscribers = 9
	for i := range subscribers {
		reg, err := st.Register(context.Background(), dev.ID, fmt.Sprintf("com.example.app%d", i), snd.ID, "", now)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := st.ChangeSubscriptions(context.Background(), snd.ID, "news", []string{reg.Token}, true, now); err != nil {
			t.Fatal(err)
		}
	}
	tm := store.TopicMessage{ID: "42", Sender: snd.ID, Topic: "news", Topics: []string{"news"}, Sent: now, Expiry: now.Add(time.Hour)}
	if err := st.PutTopicMessage(context.Background(), &tm); err != nil {
		t.Fatal(err)
	}
	first, err := st.FanOut(context.Background(), tm.Seq, store.FanOutStep{Limit: 4, Now: now, NewID: func() string { return newMessageID(time.Now()) }})
	if err != nil || first.Done || first.Copies != 4 {
		t.Fatalf("first step: %+v, %v", first, err)
	}
	st.Close()

	var fanned fanOutWaiter
	ts := startServerIn(t, dir, func(c *Config) { fanned = watchFanOut(c) })
	if copies := fanned.wait(t, "42"); copies != subscribers {
		t.Errorf("fan-out counted %d copies in all, want %d", copies, subscribers)
	}
	queued, _, err := ts.store.Pending(context.Background(), dev.ID, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	perApp := map[string]int{}
	for _, m := range queued {
		perApp[m.App]++
	}
	if len(queued) != subscribers || len(perApp) != subscribers {
		t.Errorf("%d copies queued for %d apps, want one for each of %d", len(queued), len(perApp), subscribers)
	}
}

func TestTopicRateLimit(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.TopicRateLimit = 2 })
	snd := ts.addSender("")
	send := func(req map[string]any) string {
		t.Helper()
		a, _ := ts.sendTopic(snd.ServerKey, req)
		return a.Error
	}
	news := map[string]any{"to": "/topics/news"}
	for i, want := range []string{"", "", errTopicsRate} {
		if got := send(news); got != want {
			t.Errorf("send %d: error %q, want %q", i, got, want)
		}
	}
	if got := send(map[string]any{"to": "/topics/news", "dry_run": true}); got != "" {
		t.Errorf("a dry run over the rate: %q", got)
	}
	if got := send(map[string]any{"to": "/topics/weather"}); got != "" {
		t.Errorf("another topic: %q", got)
	}
	if got := send(map[string]any{"condition": "'news' in topics"}); got != "" {
		t.Errorf("a condition: %q", got)
	}
	ts.clock.Advance(30 * time.Second)
	if got := send(news); got != "" {
		t.Errorf("after half a minute: %q", got)
	}
	if got := send(news); got != errTopicsRate {
		t.Errorf("a second one after half a minute: %q", got)
	}
}

func TestSubscribeFrames(t *testing.T) {
	ts := startServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, snd.ID)

	d.send("s1", wire.Subscribe{App: "com.example.none", Sender: snd.ID, Topic: "news"})
	d.expectError("s1", wire.CodeNotRegistered)
	d.sendRaw([]byte(`{"type":"subscribe","ref":"s2","body":{"app":"` + app + `","sender":"` + snd.ID + `","topic":"/topics/news"}}`))
	d.expectError("s2", wire.CodeBadFrame)
	d.send("s3", wire.Unsubscribe{App: app, Sender: snd.ID, Topic: "never"})
	var u wire.Unsubscribed
	d.expect(wire.TypeUnsubscribed, "s3", &u)

	d.subscribe(app, snd.ID, "news")
	d.subscribe(app, snd.ID, "news") // again: no change, same answer
	d.subscribe(app, snd.ID, "weather")
	if topics, err := ts.store.Topics(context.Background(), token); err != nil || !slices.Equal(topics, []string{"news", "weather"}) {
		t.Errorf("subscriptions %v, %v", topics, err)
	}
	marker(t, ts, d, snd.ServerKey, token)
}

func TestInstanceIDTopicManagement(t *testing.T) {
	var fanned fanOutWaiter
	ts := startServer(t, func(c *Config) { fanned = watchFanOut(c) })
	f := &sendFixture{ts: ts, a: ts.addSender(""), b: ts.addSender(""), appA: "com.example.a", appB: "com.example.b", appGone: "com.example.gone"}
	f.dev = ts.checkIn()
	f.tokA = f.dev.register(f.appA, f.a.ID)
	f.tokB = f.dev.register(f.appB, f.b.ID)
	f.tokGone = f.dev.register(f.appGone, f.a.ID)
	f.dev.send("u", wire.Unregister{App: f.appGone, Sender: f.a.ID})
	var u wire.Unregistered
	f.dev.expect(wire.TypeUnregistered, "u", &u)

	batch := func(path, key string, body any) httpAnswer {
		t.Helper()
		b, _ := json.Marshal(body)
		return ts.post(path, key, "application/json", string(b))
	}
	tokens := []string{f.tokA, "unknown", f.tokB, f.tokGone}
	ans := batch("/iid/v1:batchAdd", f.a.ServerKey, map[string]any{"to": "/topics/news", "registration_tokens": tokens})
	if want := `{"results":[{},{"error":"NOT_FOUND"},{"error":"PERMISSION_DENIED"},{"error":"NOT_FOUND"}]}`; ans.status != 200 || strings.TrimSpace(ans.body) != want {
		t.Fatalf("batchAdd: %d %s, want %s", ans.status, ans.body, want)
	}
	sendNews := func() int {
		a, _ := ts.sendTopic(f.a.ServerKey, map[string]any{"to": "/topics/news"})
		return fanned.wait(t, a.MessageID.String())
	}
	if n := sendNews(); n != 1 {
		t.Errorf("%d copies after batchAdd, want 1", n)
	}
	f.dev.expectMessage()
	ans = batch("/iid/v1:batchRemove", f.a.ServerKey, map[string]any{"to": "/topics/news", "registration_tokens": []string{f.tokA}})
	if ans.status != 200 || strings.TrimSpace(ans.body) != `{"results":[{}]}` {
		t.Fatalf("batchRemove: %d %s", ans.status, ans.body)
	}
	if n := sendNews(); n != 0 {
		t.Errorf("%d copies after batchRemove", n)
	}

	for _, tt := range []struct {
		name, path, key string
		body            any
		status          int
		want            string
	}{
		{"no key", "/iid/v1:batchAdd", "", map[string]any{"to": "/topics/x", "registration_tokens": []string{f.tokA}}, 401, "Unauthorized"},
		{"not a topic", "/iid/v1:batchAdd", f.a.ServerKey, map[string]any{"to": "news", "registration_tokens": []string{f.tokA}}, 400, `"to"`},
		{"no tokens", "/iid/v1:batchAdd", f.a.ServerKey, map[string]any{"to": "/topics/x"}, 400, "0 tokens"},
		{"tokens not strings", "/iid/v1:batchRemove", f.a.ServerKey, map[string]any{"to": "/topics/x", "registration_tokens": []int{1}}, 400, "registration_tokens"},
		{"one", "/iid/v1/" + f.tokA + "/rel/topics/weather", f.a.ServerKey, nil, 200, "{}"},
		{"one unknown", "/iid/v1/nope/rel/topics/weather", f.a.ServerKey, nil, 404, "NOT_FOUND"},
		{"one of another sender", "/iid/v1/" + f.tokB + "/rel/topics/weather", f.a.ServerKey, nil, 403, "PERMISSION_DENIED"},
		{"one bad topic", "/iid/v1/" + f.tokA + "/rel/topics/a%20b", f.a.ServerKey, nil, 400, "INVALID_ARGUMENT"},
	} {
		ans := batch(tt.path, tt.key, tt.body)
		if ans.status != tt.status || !strings.Contains(ans.body, tt.want) {
			t.Errorf("%s: %d %q, want %d with %q", tt.name, ans.status, ans.body, tt.status, tt.want)
		}
	}
	if topics, _ := ts.store.Topics(context.Background(), f.tokA); !slices.Equal(topics, []string{"weather"}) {
		t.Errorf("token's topics %v, want [weather]", topics)
	}
}
