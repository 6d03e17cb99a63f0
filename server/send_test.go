// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"tether/wire"
)

var messageIDPattern = regexp.MustCompile(`^0:\d{16}%[0-9a-f]{16}$`)

// sendFixture is a running server with two senders, a device with a token
// of each, and a token that was unregistered.
type sendFixture struct {
	ts                  *testServer
	a, b                NewSender
	dev                 *device
	tokA, tokB, tokGone string
	appA, appB, appGone string
}

func newSendFixture(t *testing.T) *sendFixture {
	ts := startServer(t, nil)
	f := &sendFixture{ts: ts, a: ts.addSender(""), b: ts.addSender(""),
		appA: "com.example.a", appB: "com.example.b", appGone: "com.example.gone"}
	f.dev = ts.checkIn()
	f.tokA = f.dev.register(f.appA, f.a.ID)
	f.tokB = f.dev.register(f.appB, f.b.ID)
	f.tokGone = f.dev.register(f.appGone, f.a.ID)
	f.dev.send("u", wire.Unregister{App: f.appGone, Sender: f.a.ID})
	var u wire.Unregistered
	f.dev.expect(wire.TypeUnregistered, "u", &u)
	return f
}

func TestSendHTTPValidation(t *testing.T) {
	f := newSendFixture(t)
	tooMany := make([]string, 1001)
	for i := range tooMany {
		tooMany[i] = f.tokA
	}
	bigValue := strings.Repeat("x", wire.MaxDataSize) // with its key, one byte over
	js := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	const ok = "" // a result with a message ID
	tests := []struct {
		name    string
		path    string // default /gcm/send
		key     string // default sender a's key; "-" for none
		body    string
		status  int
		problem string   // substring of a non-200 body
		results []string // error names, ok for a message ID
	}{
		{name: "no key", key: "-", body: js(map[string]any{"to": f.tokA}), status: 401, problem: "Authorization: key="},
		{name: "wrong key", key: "nope", body: js(map[string]any{"to": f.tokA}), status: 401, problem: "unknown server key"},
		{name: "unparseable", body: `{"to": `, status: 400, problem: "invalid JSON"},
		{name: "not an object", body: `["a"]`, status: 400, problem: "must be a JSON object"},
		{name: "null", body: `null`, status: 400, problem: "must be a JSON object"},
		{name: "empty", body: ``, status: 400, problem: "must be a JSON object"},
		{name: "to not a string", body: `{"to": 5}`, status: 400, problem: `field "to" must be a string`},
		{name: "registration_ids not an array", body: `{"registration_ids": "x"}`, status: 400, problem: `field "registration_ids"`},
		{name: "registration_ids of numbers", body: `{"registration_ids": [1]}`, status: 400, problem: `"registration_ids`},
		{name: "ttl as a string", body: js(map[string]any{"to": f.tokA, "time_to_live": "60"}), status: 400, problem: `"time_to_live" must be a number`},
		{name: "ttl with a fraction", body: js(map[string]any{"to": f.tokA, "time_to_live": 1.5}), status: 400, problem: "whole number"},
		{name: "dry_run not a bool", body: js(map[string]any{"to": f.tokA, "dry_run": "yes"}), status: 400, problem: `field "dry_run"`},
		{name: "data not an object", body: js(map[string]any{"to": f.tokA, "data": "x"}), status: 400, problem: `"data" must be a JSON object`},
		{name: "bad priority", body: js(map[string]any{"to": f.tokA, "priority": "urgent"}), status: 400, problem: `"priority"`},
		{name: "notification not an object", body: js(map[string]any{"to": f.tokA, "notification": 5}), status: 400, problem: `"notification"`},
		{name: "collapse key too long", body: js(map[string]any{"to": f.tokA, "collapse_key": strings.Repeat("k", 1025)}), status: 400, problem: `"collapse_key"`},
		{name: "1001 tokens", body: js(map[string]any{"registration_ids": tooMany}), status: 400, problem: "1001 tokens"},
		{name: "bad topic name", body: js(map[string]any{"to": "/topics/no spaces"}), status: 400, problem: "not a topic name"},
		{name: "empty topic name", body: js(map[string]any{"to": "/topics/"}), status: 400, problem: "not a topic name"},
		{name: "topic name too long", body: js(map[string]any{"to": "/topics/" + strings.Repeat("t", 901)}), status: 400, problem: "not a topic name"},
		{name: "condition syntax", body: js(map[string]any{"condition": "'a' in topics &&"}), status: 400, problem: `"condition"`},
		{name: "condition with six topics", body: js(map[string]any{"condition": "'a' in topics || 'b' in topics || 'c' in topics || 'd' in topics || 'e' in topics || 'f' in topics"}),
			status: 400, problem: "6 topics"},
		{name: "condition and to", body: js(map[string]any{"condition": "'a' in topics", "to": f.tokA}), status: 400, problem: "cannot be combined"},
		{name: "condition and registration_ids", body: js(map[string]any{"condition": "'a' in topics", "registration_ids": []string{f.tokA}}), status: 400, problem: "cannot be combined"},
		{name: "condition not a string", body: `{"condition": true}`, status: 400, problem: `field "condition" must be a string`},
		{name: "notification empty key", body: js(map[string]any{"to": f.tokA, "notification": map[string]string{"": "x"}}), status: 400, problem: "empty key"},
		{name: "receipt not a bool", body: js(map[string]any{"to": f.tokA, "delivery_receipt_requested": "yes"}), status: 400, problem: `"delivery_receipt_requested"`},
		{name: "restricted_package_name not a string", body: js(map[string]any{"to": f.tokA, "restricted_package_name": 1}), status: 400, problem: `"restricted_package_name"`},
		{name: "content_available not a bool", body: js(map[string]any{"to": f.tokA, "content_available": 1}), status: 400, problem: `"content_available"`},
		{name: "to and registration_ids", body: js(map[string]any{"to": f.tokA, "registration_ids": []string{f.tokA}}), status: 400, problem: "cannot both"},
		{name: "body too big", body: `{"to": "` + strings.Repeat("a", maxSendBody) + `"}`, status: 413, problem: "over"},

		{name: "nothing to send to", body: `{"data": {"a": "b"}}`, results: []string{errMissingRegistration}},
		{name: "empty registration_ids", body: `{"registration_ids": []}`, results: []string{errMissingRegistration}},
		{name: "empty to", body: `{"to": ""}`, results: []string{errMissingRegistration}},
		{name: "unknown token", body: js(map[string]any{"to": "not-a-token"}), results: []string{errInvalidRegistration}},
		{name: "unregistered token", body: js(map[string]any{"to": f.tokGone}), results: []string{errNotRegistered}},
		{name: "other sender's token", body: js(map[string]any{"to": f.tokB}), results: []string{errMismatchSenderID}},
		{name: "too big", body: js(map[string]any{"registration_ids": []string{f.tokA, f.tokA}, "data": map[string]string{"k": bigValue}}),
			results: []string{errMessageTooBig, errMessageTooBig}},
		{name: "key from", body: js(map[string]any{"to": f.tokA, "data": map[string]string{"from": "x"}}), results: []string{errInvalidDataKey}},
		{name: "key gcm", body: js(map[string]any{"to": f.tokA, "data": map[string]string{"gcm": "x"}}), results: []string{errInvalidDataKey}},
		{name: "key google", body: js(map[string]any{"to": f.tokA, "data": map[string]string{"google.sent_time": "x"}}), results: []string{errInvalidDataKey}},
		{name: "ttl negative", body: js(map[string]any{"to": f.tokA, "time_to_live": -1}), results: []string{errInvalidTTL}},
		{name: "ttl over 4 weeks", body: js(map[string]any{"to": f.tokA, "time_to_live": 2419201}), results: []string{errInvalidTTL}},
		{name: "ttl beyond int64", body: `{"to": "` + f.tokA + `", "time_to_live": 99999999999999999999}`, results: []string{errInvalidTTL}},
		{name: "ttl 4 weeks", body: js(map[string]any{"to": f.tokA, "time_to_live": 2419200}), results: []string{ok}},
		{name: "ttl 0", body: js(map[string]any{"to": f.tokA, "time_to_live": 0}), results: []string{ok}},
		{name: "dry run", body: js(map[string]any{"to": f.tokA, "dry_run": true}), results: []string{ok}},
		{name: "unknown fields and unused ones", body: js(map[string]any{"to": f.tokA, "frobnicate": map[string]any{"x": 1},
			"content_available": true, "delay_while_idle": true, "restricted_package_name": "com.example.a",
			"notification": map[string]string{"title": "hi"}, "priority": "high", "collapse_key": "c",
			"delivery_receipt_requested": true}), results: []string{ok}},
		{name: "restricted_package_name of another app", body: js(map[string]any{"registration_ids": []string{f.tokA, "nope"}, "restricted_package_name": "com.example.other"}),
			results: []string{errInvalidPackageName, errInvalidRegistration}},
		{name: "notification counts toward the limit", body: js(map[string]any{"to": f.tokA, "data": map[string]string{"k": strings.Repeat("x", 2047)},
			"notification": map[string]string{"body": strings.Repeat("x", 2045)}}), results: []string{errMessageTooBig}},
		{name: "notification at the limit", body: js(map[string]any{"to": f.tokA, "data": map[string]string{"k": strings.Repeat("x", 2047)},
			"notification": map[string]string{"body": strings.Repeat("x", 2044)}}), results: []string{ok}},
		{name: "nulls", body: `{"to": "` + f.tokA + `", "data": null, "time_to_live": null, "collapse_key": null, "notification": null}`, results: []string{ok}},
		{name: "order of registration_ids", body: js(map[string]any{"registration_ids": []string{"unknown", f.tokA, f.tokB, f.tokGone, f.tokA}}),
			results: []string{errInvalidRegistration, ok, errMismatchSenderID, errNotRegistered, ok}},
		{name: "fcm path", path: "/fcm/send", body: js(map[string]any{"registration_ids": []string{f.tokA}}), results: []string{ok}},
		{name: "other sender's key", key: f.b.ServerKey, body: js(map[string]any{"registration_ids": []string{f.tokA, f.tokB}}),
			results: []string{errMismatchSenderID, ok}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, key := tt.path, tt.key
			if path == "" {
				path = "/gcm/send"
			}
			switch key {
			case "":
				key = f.a.ServerKey
			case "-":
				key = ""
			}
			ans := f.ts.post(path, key, "application/json", tt.body)
			want := tt.status
			if want == 0 {
				want = http.StatusOK
			}
			if ans.status != want {
				t.Fatalf("status %d (%s), want %d", ans.status, ans.body, want)
			}
			if want != http.StatusOK {
				if !strings.Contains(ans.body, tt.problem) {
					t.Errorf("body %q does not name the problem %q", ans.body, tt.problem)
				}
				return
			}
			checkResponse(t, ans, tt.results)
		})
	}
}

// checkResponse checks a 200 answer against GCM's shape exactly.
func checkResponse(t *testing.T, ans httpAnswer, want []string) {
	t.Helper()
	if ct := ans.header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		t.Errorf("Content-Type %q", ct)
	}
	var raw map[string]json.RawMessage
	if err := json.Unmarshal([]byte(ans.body), &raw); err != nil {
		t.Fatalf("answer %q: %v", ans.body, err)
	}
	if keys := slices.Sorted(maps.Keys(raw)); !slices.Equal(keys, []string{"canonical_ids", "failure", "multicast_id", "results", "success"}) {
		t.Errorf("answer has keys %v", keys)
	}
	var resp struct {
		MulticastID  int64               `json:"multicast_id"`
		Success      int                 `json:"success"`
		Failure      int                 `json:"failure"`
		CanonicalIDs int                 `json:"canonical_ids"`
		Results      []map[string]string `json:"results"`
	}
	if err := json.Unmarshal([]byte(ans.body), &resp); err != nil {
		t.Fatal(err)
	}
	if resp.MulticastID <= 0 {
		t.Errorf("multicast_id %d", resp.MulticastID)
	}
	if len(resp.Results) != len(want) {
		t.Fatalf("%d results (%s), want %d", len(resp.Results), ans.body, len(want))
	}
	success, canonical := 0, 0
	for i, res := range resp.Results {
		switch canon, isCanon := strings.CutPrefix(want[i], "="); {
		case want[i] == "":
			success++
			if len(res) != 1 || !messageIDPattern.MatchString(res["message_id"]) {
				t.Errorf("result %d = %v, want a message_id", i, res)
			}
		case isCanon:
			success++
			canonical++
			if len(res) != 2 || !messageIDPattern.MatchString(res["message_id"]) || res["registration_id"] != canon {
				t.Errorf("result %d = %v, want a message_id and registration_id %.8s...", i, res, canon)
			}
		default:
			if len(res) != 1 || res["error"] != want[i] {
				t.Errorf("result %d = %v, want error %s", i, res, want[i])
			}
		}
	}
	if resp.Success != success || resp.Failure != len(want)-success || resp.CanonicalIDs != canonical {
		t.Errorf("success %d failure %d canonical_ids %d, want %d, %d and %d", resp.Success, resp.Failure, resp.CanonicalIDs, success, len(want)-success, canonical)
	}
}

// canonical is the want of checkResponse for a result that names token
// as the canonical registration ID.
func canonical(token string) string { return "=" + token }

func TestSendPlainText(t *testing.T) {
	f := newSendFixture(t)
	form := "application/x-www-form-urlencoded;charset=UTF-8"
	tests := []struct {
		body   string
		status int
		want   string // prefix of a 200 answer, substring of a 400
	}{
		{"registration_id=" + f.tokA + "&data.temp=21&collapse_key=t&time_to_live=60", 200, "id=0:"},
		// What the old gcm-server Java library sends for one token.
		{"registration_id=" + f.tokA + "&collapse_key=t&delay_while_idle=0&time_to_live=60&data.temp=22", 200, "id=0:"},
		{"data.temp=21", 200, "Error=MissingRegistration"},
		{"registration_id=" + f.tokGone, 200, "Error=NotRegistered"},
		{"registration_id=" + f.tokB, 200, "Error=MismatchSenderId"},
		{"registration_id=nope", 200, "Error=InvalidRegistration"},
		{"registration_id=" + f.tokA + "&data.from=x", 200, "Error=InvalidDataKey"},
		{"registration_id=" + f.tokA + "&time_to_live=-5", 200, "Error=InvalidTtl"},
		{"registration_id=" + f.tokA + "&restricted_package_name=com.example.a", 200, "id=0:"},
		{"registration_id=" + f.tokA + "&restricted_package_name=com.example.b", 200, "Error=InvalidPackageName"},
		{"registration_id=/topics/news", 400, "send to topics with JSON"},
		{"registration_id=" + f.tokA + "&time_to_live=soon", 400, `"time_to_live"`},
		{"registration_id=" + f.tokA + "&dry_run=perhaps", 400, `"dry_run"`},
		{"registration_id=" + f.tokA + "&registration_id=" + f.tokA, 400, "use JSON for multicast"},
		{"registration_id=" + f.tokA + "&data.x=%ff", 400, "not UTF-8"},
		{"registration_id=%zz", 400, "invalid form body"},
	}
	for _, tt := range tests {
		ans := f.ts.post("/gcm/send", f.a.ServerKey, form, tt.body)
		matches := strings.HasPrefix(ans.body, tt.want)
		if tt.status != http.StatusOK {
			matches = strings.Contains(ans.body, tt.want)
		}
		if ans.status != tt.status || !matches {
			t.Errorf("%s: %d %q, want %d %q...", tt.body, ans.status, ans.body, tt.status, tt.want)
		}
	}
	for _, temp := range []string{"21", "22", ""} {
		m := f.dev.expectMessage()
		if temp == "" {
			continue // the restricted one
		}
		if m.Token != f.tokA || m.Data["temp"] != temp || m.CollapseKey != "t" || m.TTL != 60 || m.App != f.appA || m.From != f.a.ID {
			t.Errorf("plain-text message delivered as %+v", m)
		}
	}
}

func TestSendDataValuesAsDelivered(t *testing.T) {
	f := newSendFixture(t)
	body := `{"to": "` + f.tokA + `", "priority": "high", "data": {"s": "x", "n": 1.50, "b": true, "o": {"a": [1, 2], "t": "x y"}, "z": null}}`
	ans := f.ts.post("/gcm/send", f.a.ServerKey, "application/json", body)
	checkResponse(t, ans, []string{""})
	m := f.dev.expectMessage()
	want := map[string]string{"s": "x", "n": "1.50", "b": "true", "o": `{"a":[1,2],"t":"x y"}`, "z": "null"}
	if !maps.Equal(m.Data, want) || m.Priority != "high" || m.TTL != wire.MaxTTL {
		t.Errorf("delivered %+v, want data %v", m, want)
	}

	// The limit counts keys and values as delivered: [1, 2] is 5 bytes.
	fill := func(n int) string { return strings.Repeat("v", n) }
	fits := fmt.Sprintf(`{"to": %q, "data": {"k": [1, 2], "f": %q}}`, f.tokA, fill(wire.MaxDataSize-1-5-1))
	over := fmt.Sprintf(`{"to": %q, "data": {"k": [1, 2], "f": %q}}`, f.tokA, fill(wire.MaxDataSize-1-5))
	checkResponse(t, f.ts.post("/gcm/send", f.a.ServerKey, "application/json", fits), []string{""})
	checkResponse(t, f.ts.post("/gcm/send", f.a.ServerKey, "application/json", over), []string{errMessageTooBig})
	if m := f.dev.expectMessage(); wire.DataSize(m.Data) != wire.MaxDataSize || m.Data["k"] != "[1,2]" {
		t.Errorf("message at the limit delivered with %d bytes", wire.DataSize(m.Data))
	}
}

func FuzzDecodeSend(f *testing.F) {
	for _, seed := range []string{
		`{"to": "abc", "data": {"a": "b", "n": 1, "o": {"x": [1, 2]}}, "time_to_live": 60, "collapse_key": "k", "priority": "high"}`,
		`{"registration_ids": ["a", "b"], "dry_run": true, "notification": {"title": "t"}}`,
		`{"to": 5}`, `{"time_to_live": 1e3}`, `{"time_to_live": -1}`, `{"data": "x"}`, `[]`, `null`, ``, `{"to": "/topics/x"}`,
		`{"registration_ids": null, "data": null}`, `{"to": "a", "time_to_live": 99999999999999999999999}`,
		`{"collapse_key": "\u0000"}`, `{"data": {"": "x", "google.x": 1}}`,
		`{"to": "/topics/news", "notification": {"title": "t", "badge": 2}}`, `{"condition": "'a' in topics && ('b' in topics || 'c' in topics)"}`,
		`{"to": "/topics/", "restricted_package_name": "x", "delivery_receipt_requested": true}`, `{"notification": {"": "x"}}`,
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		req, err := decodeJSONSend([]byte(body))
		if err != nil {
			if err.Error() == "" {
				t.Fatal("error without text")
			}
			return
		}
		checkDecoded(t, req)
	})
}

func FuzzDecodeFormSend(f *testing.F) {
	for _, seed := range []string{
		"registration_id=abc&data.x=1&collapse_key=k&time_to_live=60&dry_run=1",
		"registration_id=a&registration_id=b", "data.=x", "time_to_live=-1", "%zz", "priority=high&delay_while_idle=true",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, body string) {
		req, err := decodeFormSend([]byte(body))
		if err != nil {
			return
		}
		if !req.plain || len(req.tokens) > 1 {
			t.Fatalf("plain-text request decoded as %+v", req)
		}
		checkDecoded(t, req)
	})
}

// checkDecoded checks what an accepted request promises the rest of the
// server: everything fits the wire once messageError is empty.
func checkDecoded(t *testing.T, req sendRequest) {
	t.Helper()
	if len(req.tokens) > maxRegistrationIDs {
		t.Fatalf("%d tokens accepted", len(req.tokens))
	}
	if req.toTopics() && (len(req.tokens) > 0 || req.topic != "" && req.condition != nil) {
		t.Fatalf("request to tokens %v, topic %q and condition %v at once", req.tokens, req.topic, req.condition != nil)
	}
	if err := req.check(); err != nil {
		t.Fatalf("accepted request fails check: %v", err)
	}
	if req.messageError() != "" {
		return
	}
	if req.ttl < 0 || req.ttl > wire.MaxTTL {
		t.Fatalf("ttl %d accepted", req.ttl)
	}
	for k, v := range req.data {
		if !utf8.ValidString(k) || !utf8.ValidString(v) {
			t.Fatalf("data %q=%q is not UTF-8", k, v)
		}
	}
	m := wire.Message{ID: "0:1%0", Token: "t", App: "a", From: "1", CollapseKey: req.collapseKey,
		Data: req.data, Notification: req.notification, Topic: req.topic, Priority: req.priority, TTL: req.ttl}
	if _, err := wire.Encode("", m); err != nil {
		t.Fatalf("accepted request cannot be delivered: %v", err)
	}
}

func TestConcurrentSendsAllStored(t *testing.T) {
	f := newSendFixture(t)
	f.dev.conn.Close()
	const senders, each = 16, 5
	ids := make(chan string, senders*each)
	var wg sync.WaitGroup
	for range senders {
		wg.Go(func() {
			for range each {
				resp := f.ts.send(f.a.ServerKey, map[string]any{"to": f.tokA, "data": map[string]string{"k": "v"}})
				if resp.Success != 1 {
					t.Errorf("send: %+v", resp)
					return
				}
				ids <- resp.Results[0].MessageID
			}
		})
	}
	wg.Wait()
	close(ids)
	want := map[string]bool{}
	for id := range ids {
		want[id] = true
	}
	queued, _, err := f.ts.store.Pending(context.Background(), f.dev.id, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, m := range queued {
		got[m.ID] = true
	}
	if len(want) != senders*each || !maps.Equal(got, want) {
		t.Errorf("%d distinct IDs answered, %d queued; want %d of each, the same", len(want), len(got), senders*each)
	}
}
