// SPDX-License-Identifier: Apache-2.0

package wire

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
)

func TestRoundTrip(t *testing.T) {
	bodies := []struct {
		ref  string
		body Body
		into Body
	}{
		{"", &Hello{Version: 1, Heartbeat: 240, Agent: "tetherd/test"}, &Hello{}},
		{"", &Hello{Version: 1, DeviceID: "d1", DeviceSecret: "s1"}, &Hello{}},
		{"", &Welcome{Version: 1, DeviceID: "d1", DeviceSecret: "s", Heartbeat: 300}, &Welcome{}},
		{"r1", &Register{App: "com.example.app", Sender: "123456"}, &Register{}},
		{"r1", &Registered{App: "com.example.app", Sender: "123456", Token: "tok"}, &Registered{}},
		{"r2", &Unregister{App: "a", Sender: "1"}, &Unregister{}},
		{"r2", &Unregistered{App: "a", Sender: "1"}, &Unregistered{}},
		{"", &Message{ID: "0:1%ab", Token: "t", App: "a", From: "1", CollapseKey: "c", Data: map[string]string{"k": "v"}, Priority: "high", TTL: 60, SentTime: 1700000000000}, &Message{}},
		{"", &Ack{IDs: []string{"a", "b"}}, &Ack{}},
		{"u1", &Upstream{App: "a", To: "1", ID: "u1", TTL: 0, Data: map[string]string{"x": "y"}}, &Upstream{}},
		{"u1", &UpstreamAck{App: "a", ID: "u1", Error: "NotRegistered"}, &UpstreamAck{}},
		{"r3", &Error{Code: CodeInvalid, Message: "bad"}, &Error{}},
		{"", &Message{ID: "0:2%cd", Token: "t", App: "a", From: "1", TTL: 5, Topic: "news.local~1%2F",
			Notification: map[string]string{"title": "Hi", "body": "there"}}, &Message{}},
		{"s1", &Subscribe{App: "a", Sender: "1", Topic: "alerts"}, &Subscribe{}},
		{"s1", &Subscribed{App: "a", Sender: "1", Topic: "alerts"}, &Subscribed{}},
		{"s2", &Unsubscribe{App: "a", Sender: "1", Topic: "alerts"}, &Unsubscribe{}},
		{"s2", &Unsubscribed{App: "a", Sender: "1", Topic: "alerts"}, &Unsubscribed{}},
		{"tr:1", &TokenRefresh{ID: "tr:1", App: "a", Sender: "1", Token: "new"}, &TokenRefresh{}},
		{"dm:1", &DeletedMessages{ID: "dm:1", App: "a", Count: 100}, &DeletedMessages{}},
		{"", &GoAway{RetryAfter: 5, Reason: "draining", Server: "wss://node-2.push.example:8443/tether"}, &GoAway{}},
		{"w1", &Register{App: "a", Sender: WebPushSender, VAPID: "BHx2_-k"}, &Register{}},
		{"", &Hello{Version: 2, Mode: ModeBattery, Link: LinkWiFi}, &Hello{}},
		{"", &State{Mode: ModeBattery, Link: LinkOther}, &State{}},
		{"tr:2", &TokenRefresh{ID: "tr:2", App: "a", Sender: WebPushSender, Token: "new", Endpoint: "https://push.example/up/new"}, &TokenRefresh{}},
		{"w1", &Registered{App: "a", Sender: WebPushSender, Token: "t", Endpoint: "https://push.example/up/t"}, &Registered{}},
		{"", &Message{ID: "0:3%ef", Token: "t", App: "a", From: WebPushSender, TTL: 0, CollapseKey: "k", Raw: []byte{0, 1, 0xfe, 0xff}}, &Message{}},
	}
	for _, tc := range bodies {
		t.Run(string(tc.body.FrameType()), func(t *testing.T) {
			raw, err := Encode(tc.ref, tc.body)
			if err != nil {
				t.Fatalf("Encode: %v", err)
			}
			f, err := Decode(raw)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if f.Type != tc.body.FrameType() || f.Ref != tc.ref {
				t.Fatalf("envelope = %q/%q, want %q/%q", f.Type, f.Ref, tc.body.FrameType(), tc.ref)
			}
			if err := f.Decode(tc.into); err != nil {
				t.Fatalf("Frame.Decode: %v", err)
			}
			if !reflect.DeepEqual(tc.into, tc.body) {
				t.Fatalf("round trip = %+v, want %+v", tc.into, tc.body)
			}
		})
	}
}

func TestDecodeRejects(t *testing.T) {
	cases := []struct {
		name, frame, want string
	}{
		{"not json", `{"type":`, "bad frame"},
		{"no type", `{"body":{}}`, "no type"},
		{"array", `[1,2]`, "bad frame"},
		{"control in ref", `{"type":"ack","ref":"a\u0001"}`, "control character"},
		{"too big", `{"type":"ack","ref":"` + strings.Repeat("x", MaxFrameSize) + `"}`, "limit"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.frame))
			if !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode(%.40q) = %v, want ErrBadFrame containing %q", tc.frame, err, tc.want)
			}
		})
	}
}

func TestBodyValidation(t *testing.T) {
	big := map[string]string{"k": strings.Repeat("v", MaxDataSize)}
	cases := []struct {
		name string
		body Body
		want string
	}{
		{"hello version 0", Hello{}, "version 0"},
		{"hello id without secret", Hello{Version: 1, DeviceID: "d"}, "go together"},
		{"hello negative heartbeat", Hello{Version: 1, Heartbeat: -1}, "heartbeat"},
		{"register no app", Register{Sender: "1"}, "app is missing"},
		{"register non-numeric sender", Register{App: "a", Sender: "12a"}, "numeric"},
		{"message ttl too long", Message{ID: "i", Token: "t", App: "a", From: "1", TTL: MaxTTL + 1}, "ttl"},
		{"message negative ttl", Message{ID: "i", Token: "t", App: "a", From: "1", TTL: -1}, "ttl"},
		{"message data too big", Message{ID: "i", Token: "t", App: "a", From: "1", Data: big}, "data too big: 4097 bytes"},
		{"message bad priority", Message{ID: "i", Token: "t", App: "a", From: "1", Priority: "urgent"}, "priority"},
		{"message no token", Message{ID: "i", App: "a", From: "1"}, "token is missing"},
		{"ack empty", Ack{}, "ack of 0 ids"},
		{"ack empty id", Ack{IDs: []string{""}}, "ids[] is missing"},
		{"upstream no id", Upstream{App: "a", To: "1"}, "id is missing"},
		{"upstream empty data key", Upstream{App: "a", To: "1", ID: "x", Data: map[string]string{"": "v"}}, "empty key"},
		{"error no code", Error{}, "without code"},
		{"message data and notification too big", Message{ID: "i", Token: "t", App: "a", From: "1",
			Data: map[string]string{"k": strings.Repeat("v", 2047)}, Notification: map[string]string{"n": strings.Repeat("v", 2048)}},
			"data and notification are 4097 bytes"},
		{"message notification empty key", Message{ID: "i", Token: "t", App: "a", From: "1", Notification: map[string]string{"": "x"}}, "notification has an empty key"},
		{"message bad topic", Message{ID: "i", Token: "t", App: "a", From: "1", Topic: "a b"}, "topic"},
		{"subscribe no topic", Subscribe{App: "a", Sender: "1"}, "topic"},
		{"subscribe topic with prefix", Subscribe{App: "a", Sender: "1", Topic: "/topics/x"}, "topic"},
		{"subscribe topic too long", Subscribe{App: "a", Sender: "1", Topic: strings.Repeat("t", MaxTopicLen+1)}, "topic"},
		{"subscribed no sender", Subscribed{App: "a", Topic: "x"}, "sender is missing"},
		{"unsubscribe bad sender", Unsubscribe{App: "a", Sender: "x", Topic: "x"}, "numeric"},
		{"unsubscribed no app", Unsubscribed{Sender: "1", Topic: "x"}, "app is missing"},
		{"token refresh no token", TokenRefresh{ID: "i", App: "a", Sender: "1"}, "token is missing"},
		{"token refresh no id", TokenRefresh{App: "a", Sender: "1", Token: "t"}, "id is missing"},
		{"deleted messages zero", DeletedMessages{ID: "i", App: "a"}, "count 0"},
		{"deleted messages no app", DeletedMessages{ID: "i", Count: 1}, "app is missing"},
		{"goaway negative wait", GoAway{RetryAfter: -1}, "retry_after"},
		{"goaway server scheme", GoAway{Server: "ftp://node-2"}, "server: scheme must be ws, wss, http or https"},
		{"goaway server without host", GoAway{Server: "wss:///device"}, "server: no host"},
		{"goaway server relative", GoAway{Server: "node-2:8443"}, "server"},
		{"goaway server with user", GoAway{Server: "wss://u:p@node-2"}, "server: no user, query or fragment"},
		{"goaway server with query", GoAway{Server: "wss://node-2/?x=1"}, "server: no user, query or fragment"},
		{"goaway server with fragment", GoAway{Server: "wss://node-2#f"}, "server: no user, query or fragment"},
		{"goaway server too long", GoAway{Server: "wss://node-2/" + strings.Repeat("p", maxNameLen)}, "server is 1037 bytes, limit 1024"},
		{"register app id too long", Register{App: strings.Repeat("a", MaxAppIDLen+1), Sender: "1"}, "app is 256 bytes, limit 255"},
		{"upstream app id too long", Upstream{App: strings.Repeat("a", MaxAppIDLen+1), To: "1", ID: "x"}, "app is 256 bytes, limit 255"},
		{"goaway server with control", GoAway{Server: "wss://node-2/\n"}, "server has a control character"},
		{"hello bad link", Hello{Version: 1, Link: "lte"}, "link \"lte\", want wifi or other"},
		{"state bad link", State{Mode: ModeMains, Link: "WiFi"}, "want wifi or other"},
		{"message raw too big", Message{ID: "i", Token: "t", App: "a", From: WebPushSender, Raw: make([]byte, MaxRawSize+1)}, "raw is 4097 bytes, limit 4096"},
		{"register vapid for a numeric sender", Register{App: "a", Sender: "1", VAPID: "BHx2"}, "vapid is for sender webpush only"},
		{"register vapid too long", Register{App: "a", Sender: WebPushSender, VAPID: strings.Repeat("B", MaxVAPIDKeyLen+1)}, "vapid is 129 bytes"},
		{"registered webpush without endpoint", Registered{App: "a", Sender: WebPushSender, Token: "t"}, "without endpoint"},
		{"register sender neither numeric nor webpush", Register{App: "a", Sender: "webpush2"}, "numeric sender ID or webpush"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.body.Validate()
			if !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Validate() = %v, want ErrBadFrame containing %q", err, tc.want)
			}
			if _, err := Encode("", tc.body); !errors.Is(err, ErrBadFrame) {
				t.Fatalf("Encode accepted an invalid %s body: %v", tc.body.FrameType(), err)
			}
		})
	}
}

func TestValidTopic(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"a", true},
		{"news", true},
		{"Az09-_.~%", true},
		{strings.Repeat("x", MaxTopicLen), true},
		{"", false},
		{strings.Repeat("x", MaxTopicLen+1), false},
		{"a b", false},
		{"a/b", false},
		{"ä", false},
		{"'x'", false},
	} {
		if got := ValidTopic(tc.name); got != tc.ok {
			t.Errorf("ValidTopic(%.20q) = %v, want %v", tc.name, got, tc.ok)
		}
	}
}

func TestFrameDecodeWrongType(t *testing.T) {
	raw, err := Encode("", Ack{IDs: []string{"x"}})
	if err != nil {
		t.Fatal(err)
	}
	f, err := Decode(raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Decode(&Message{}); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("decoding an ack frame as a message = %v, want ErrBadFrame", err)
	}
}

func TestUnknownTypeDecodes(t *testing.T) {
	f, err := Decode([]byte(`{"type":"device_state","body":{"idle":true}}`))
	if err != nil {
		t.Fatalf("a frame type from a later version must decode: %v", err)
	}
	if f.Type != "device_state" {
		t.Fatalf("type = %q", f.Type)
	}
}

func TestUnknownFieldsIgnored(t *testing.T) {
	f, err := Decode([]byte(`{"type":"ack","body":{"ids":["a"],"later_field":1},"later":true}`))
	if err != nil {
		t.Fatal(err)
	}
	var a Ack
	if err := f.Decode(&a); err != nil {
		t.Fatalf("fields from a later version must be ignored: %v", err)
	}
}

// FuzzDecode feeds arbitrary bytes through the envelope decoder and every
// body decoder: none may panic, and whatever decodes cleanly must encode
// again to something that decodes to the same value.
func FuzzDecode(f *testing.F) {
	seeds := []string{
		`{"type":"hello","body":{"version":1,"heartbeat":240}}`,
		`{"type":"message","body":{"id":"0:1%a","token":"t","app":"a","from":"1","data":{"k":"v"},"ttl":10}}`,
		`{"type":"ack","body":{"ids":["a","b"]}}`,
		`{"type":"upstream","ref":"x","body":{"app":"a","to":"1","id":"x","ttl":0}}`,
		`{"type":"error","body":{"code":"invalid"}}`,
		`{"type":"registered","ref":"r","body":{"app":"a","sender":"1","token":"t"}}`,
		`{"type":"x"}`,
		`{"type":"message","body":{"id":"i","token":"t","app":"a","from":"1","ttl":1,"topic":"n","notification":{"title":"t"}}}`,
		`{"type":"subscribe","ref":"s","body":{"app":"a","sender":"1","topic":"news"}}`,
		`{"type":"token_refresh","ref":"tr:1","body":{"id":"tr:1","app":"a","sender":"1","token":"t"}}`,
		`{"type":"deleted_messages","ref":"dm:1","body":{"id":"dm:1","app":"a","count":3}}`,
		`{"type":"state","body":{"mode":"battery","heartbeat":600}}`,
		`{"type":"state","body":{"mode":"battery","heartbeat":0,"link":"wifi"}}`,
		`{"type":"goaway","body":{"retry_after":30,"reason":"draining"}}`,
		`{"type":"goaway","body":{"retry_after":0,"server":"wss://node-2:8443"}}`,
		`{"type":"ack","body":null}`,
		`{"type":"register","ref":"r","body":{"app":"a","sender":"webpush","vapid":"BAx_-"}}`,
		`{"type":"registered","ref":"r","body":{"app":"a","sender":"webpush","token":"t","endpoint":"https://push.example/up/t"}}`,
		`{"type":"message","body":{"id":"i","token":"t","app":"a","from":"webpush","ttl":0,"raw":"AAEC/w=="}}`,
		`{}`,
		`null`,
	}
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		fr, err := Decode(data)
		if err != nil {
			return
		}
		for _, b := range []Body{&Hello{}, &Welcome{}, &Register{}, &Registered{}, &Unregister{}, &Unregistered{}, &Message{}, &Ack{}, &Upstream{}, &UpstreamAck{}, &Error{},
			&Subscribe{}, &Subscribed{}, &Unsubscribe{}, &Unsubscribed{}, &TokenRefresh{}, &DeletedMessages{}, &State{}, &GoAway{}} {
			if fr.Type != b.FrameType() {
				continue
			}
			if err := fr.Decode(b); err != nil {
				return
			}
			again, err := Encode(fr.Ref, b)
			if err != nil {
				t.Fatalf("a valid %s body does not encode: %v", fr.Type, err)
			}
			fr2, err := Decode(again)
			if err != nil {
				t.Fatalf("re-encoded frame does not decode: %v", err)
			}
			b2 := reflect.New(reflect.TypeOf(b).Elem()).Interface().(Body)
			if err := fr2.Decode(b2); err != nil {
				t.Fatalf("re-encoded body does not decode: %v", err)
			}
			j1, _ := json.Marshal(b)
			j2, _ := json.Marshal(b2)
			if string(j1) != string(j2) {
				t.Fatalf("round trip changed the body: %s != %s", j1, j2)
			}
		}
	})
}
