// SPDX-License-Identifier: Apache-2.0

package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"tether/internal/vapidtest"
	"tether/server/store"
	"tether/wire"
)

// testOrigin is the public origin of the Web Push test servers.
const testOrigin = "https://push.example.test"

// startWebPushServer runs a server with a public URL, which Web Push
// registrations need.
func startWebPushServer(t *testing.T, mod func(*Config)) *testServer {
	t.Helper()
	return startServer(t, func(c *Config) {
		c.PublicURL = testOrigin
		if mod != nil {
			mod(c)
		}
	})
}

// registerWebPush registers app with the Web Push sender and returns the
// token, checking the endpoint.
func (d *device) registerWebPush(app, vapid string) string {
	d.t.Helper()
	d.send("wp-"+app, wire.Register{App: app, Sender: wire.WebPushSender, VAPID: vapid})
	var r wire.Registered
	d.expect(wire.TypeRegistered, "wp-"+app, &r)
	if r.Token == "" || r.Endpoint != testOrigin+"/up/"+r.Token {
		d.t.Fatalf("registered %+v, want endpoint %s/up/TOKEN", r, testOrigin)
	}
	return r.Token
}

// webPushDeviceIn checks a device in, registers app with the Web Push
// sender and opens its session anew in a power mode and on a link; it
// returns the session and the token.
func (ts *testServer) webPushDeviceIn(mode, link string) (*device, string) {
	ts.t.Helper()
	d := ts.checkIn()
	token := d.registerWebPush(app, "")
	d.conn.Close()
	return ts.hello(wire.Hello{DeviceID: d.id, DeviceSecret: d.secret, Mode: mode, Link: link}), token
}

// push POSTs body to the endpoint of token with headers.
func (ts *testServer) push(token string, headers map[string]string, body []byte) httpAnswer {
	ts.t.Helper()
	req, err := http.NewRequest(http.MethodPost, ts.base+"/up/"+token, bytes.NewReader(body))
	if err != nil {
		ts.t.Fatal(err)
	}
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	return ts.do(req)
}

// pushed pushes and expects 201; it returns the message ID.
func (ts *testServer) pushed(token string, headers map[string]string, body []byte) string {
	ts.t.Helper()
	a := ts.push(token, headers, body)
	loc, ok := strings.CutPrefix(a.header.Get("Location"), testOrigin+"/up/"+token+"/m/")
	if a.status != http.StatusCreated || !ok || loc == "" {
		ts.t.Fatalf("push: %d %q, Location %q; want 201 and a message under the endpoint", a.status, a.body, a.header.Get("Location"))
	}
	id, err := url.PathUnescape(loc)
	if err != nil {
		ts.t.Fatal(err)
	}
	return id
}

// TestWebPushDelivers: the body reaches the device's registration as the
// message's raw bytes, the Topic as its collapse key, and the answer says
// where the message is and the TTL kept.
func TestWebPushDelivers(t *testing.T) {
	ts := startWebPushServer(t, nil)
	d := ts.checkIn()
	token := d.registerWebPush(app, "")
	body := []byte{0, 1, 2, 0xfe, 0xff, '\n'}
	for _, tt := range []struct {
		name    string
		headers map[string]string
		body    []byte
		ttl     string
	}{
		{"binary body with topic", map[string]string{"TTL": "60", "Topic": "news_1-A"}, body, "60"},
		{"largest body", map[string]string{"TTL": "60"}, bytes.Repeat([]byte{0xaa}, wire.MaxRawSize), "60"},
		{"empty body", map[string]string{"TTL": "60", "Urgency": "high"}, nil, "60"},
		{"TTL over the longest kept", map[string]string{"TTL": "99999999999999999999"}, body, "2419200"},
		{"TTL 0 to a connected device", map[string]string{"TTL": "0"}, body, "0"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := ts.push(token, tt.headers, tt.body)
			if a.status != http.StatusCreated || a.header.Get("TTL") != tt.ttl {
				t.Fatalf("push: %d %q TTL %q; want 201, TTL %s", a.status, a.body, a.header.Get("TTL"), tt.ttl)
			}
			m := d.expectMessage()
			if !bytes.Equal(m.Raw, tt.body) || m.From != wire.WebPushSender || m.Token != token || m.CollapseKey != tt.headers["Topic"] || len(m.Data) != 0 {
				t.Fatalf("message %+v, want raw %d bytes, topic %q", m, len(tt.body), tt.headers["Topic"])
			}
			if !strings.HasSuffix(a.header.Get("Location"), "/m/"+url.PathEscape(m.ID)) {
				t.Fatalf("Location %q does not name message %s", a.header.Get("Location"), m.ID)
			}
			d.ack(m.ID)
		})
	}
}

// TestWebPushRefusals: each refusal has RFC 8030's status, and the
// server goes on taking pushes.
func TestWebPushRefusals(t *testing.T) {
	ts := startWebPushServer(t, nil)
	snd := ts.addSender("")
	d := ts.checkIn()
	token := d.registerWebPush(app, "")
	gone := d.registerWebPush("org.example.gone", "")
	d.send("unreg", wire.Unregister{App: "org.example.gone", Sender: wire.WebPushSender})
	d.expect(wire.TypeUnregistered, "unreg", &wire.Unregistered{})
	gcmToken := d.register("org.example.gcm", snd.ID)
	ttl := map[string]string{"TTL": "30"}
	for _, tt := range []struct {
		name    string
		token   string
		headers map[string]string
		body    []byte
		status  int
		text    string
	}{
		{"no TTL", token, nil, []byte("x"), http.StatusBadRequest, "TTL header is required"},
		{"TTL not a number", token, map[string]string{"TTL": "1h"}, nil, http.StatusBadRequest, "not a whole number"},
		{"negative TTL", token, map[string]string{"TTL": "-1"}, nil, http.StatusBadRequest, "not a whole number"},
		{"bad urgency", token, map[string]string{"TTL": "1", "Urgency": "urgent"}, nil, http.StatusBadRequest, "very-low, low, normal or high"},
		{"topic too long", token, map[string]string{"TTL": "1", "Topic": strings.Repeat("a", 33)}, nil, http.StatusBadRequest, "Topic"},
		{"topic not base64url", token, map[string]string{"TTL": "1", "Topic": "a+b"}, nil, http.StatusBadRequest, "URL-safe base64"},
		{"body too big", token, ttl, make([]byte, wire.MaxRawSize+1), http.StatusRequestEntityTooLarge, "over 4096 bytes"},
		{"unknown token", "no-such-token", ttl, nil, http.StatusNotFound, "no such push subscription"},
		{"a GCM sender's token", gcmToken, ttl, nil, http.StatusNotFound, "no such push subscription"},
		{"unregistered", gone, ttl, nil, http.StatusGone, "has ended"},
		{"bad VAPID header", token, map[string]string{"TTL": "1", "Authorization": "vapid k=BAD"}, nil, http.StatusUnauthorized, "no JWT"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			a := ts.push(tt.token, tt.headers, tt.body)
			if a.status != tt.status || !strings.Contains(a.body, tt.text) {
				t.Fatalf("push: %d %q, want %d with %q", a.status, a.body, tt.status, tt.text)
			}
			ts.pushed(token, ttl, []byte("still taken"))
			if m := d.expectMessage(); string(m.Raw) != "still taken" {
				t.Fatalf("then got %+v", m)
			}
		})
	}
	// Nobody sends to a Web Push registration through the GCM API.
	res := ts.send(snd.ServerKey, map[string]any{"to": token, "data": map[string]string{"x": "1"}})
	if res.Results[0].Error != errMismatchSenderID {
		t.Fatalf("GCM send to a Web Push token: %+v, want MismatchSenderId", res.Results)
	}
}

// TestWebPushRateLimited: a push over the device's rate is 429 with a
// Retry-After.
func TestWebPushRateLimited(t *testing.T) {
	ts := startWebPushServer(t, func(c *Config) { c.DeviceRateLimit = 2 })
	d := ts.checkIn()
	token := d.registerWebPush(app, "")
	ttl := map[string]string{"TTL": "60"}
	ts.pushed(token, ttl, []byte("1"))
	ts.pushed(token, ttl, []byte("2"))
	a := ts.push(token, ttl, []byte("3"))
	if a.status != http.StatusTooManyRequests || a.header.Get("Retry-After") != "30" {
		t.Fatalf("third push: %d %q, Retry-After %q; want 429 with Retry-After 30", a.status, a.body, a.header.Get("Retry-After"))
	}
}

// TestWebPushVAPID: a subscription made with a VAPID key takes only
// pushes whose JWT that key signed, for this server, not expired.
func TestWebPushVAPID(t *testing.T) {
	ts := startWebPushServer(t, nil)
	d := ts.checkIn()
	key, other := vapidtest.New(t), vapidtest.New(t)
	token := d.registerWebPush(app, key.Public)
	claims := func(change func(map[string]any)) map[string]any {
		c := vapidtest.Claims(testOrigin)
		change(c)
		return c
	}
	signed := func(k vapidtest.Key, c map[string]any) string { return "vapid t=" + k.JWT(t, c) + ", k=" + k.Public }
	forged := key.JWT(t, vapidtest.Claims(testOrigin))
	forged = forged[:strings.LastIndex(forged, ".")+1] + base64.RawURLEncoding.EncodeToString(make([]byte, 64))
	for _, tt := range []struct {
		name    string
		headers map[string]string
		status  int
		text    string
	}{
		{"RFC 8292", map[string]string{"Authorization": key.Authorization(t, testOrigin)}, http.StatusCreated, ""},
		{"quoted, other order", map[string]string{"Authorization": `vapid k="` + key.Public + `",t="` + key.JWT(t, vapidtest.Claims(testOrigin)) + `"`}, http.StatusCreated, ""},
		{"padded key", map[string]string{"Authorization": "vapid t=" + key.JWT(t, vapidtest.Claims(testOrigin)) + ", k=" + key.Public + "="}, http.StatusCreated, ""},
		{"older draft", map[string]string{"Authorization": "WebPush " + key.JWT(t, vapidtest.Claims(testOrigin)), "Crypto-Key": "dh=BXYZ;p256ecdsa=" + key.Public}, http.StatusCreated, ""},
		{"none", nil, http.StatusUnauthorized, "only pushes with a VAPID authorization"},
		{"another scheme", map[string]string{"Authorization": "key=AIza"}, http.StatusUnauthorized, "only pushes with a VAPID authorization"},
		{"another key", map[string]string{"Authorization": other.Authorization(t, testOrigin)}, http.StatusForbidden, "not the one"},
		{"signed by another key", map[string]string{"Authorization": "vapid t=" + other.JWT(t, vapidtest.Claims(testOrigin)) + ", k=" + key.Public}, http.StatusUnauthorized, "does not verify"},
		{"bad signature", map[string]string{"Authorization": "vapid t=" + forged + ", k=" + key.Public}, http.StatusUnauthorized, "does not verify"},
		{"another audience", map[string]string{"Authorization": signed(key, claims(func(c map[string]any) { c["aud"] = "https://evil.example" }))}, http.StatusUnauthorized, "aud"},
		{"expired", map[string]string{"Authorization": signed(key, claims(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Minute).Unix() }))}, http.StatusUnauthorized, "expired"},
		{"too long ahead", map[string]string{"Authorization": signed(key, claims(func(c map[string]any) { c["exp"] = time.Now().Add(25 * time.Hour).Unix() }))}, http.StatusUnauthorized, "24 hours"},
		{"no exp", map[string]string{"Authorization": signed(key, claims(func(c map[string]any) { delete(c, "exp") }))}, http.StatusUnauthorized, "no exp"},
		{"no sub", map[string]string{"Authorization": signed(key, claims(func(c map[string]any) { delete(c, "sub") }))}, http.StatusUnauthorized, "no sub"},
		{"no key", map[string]string{"Authorization": "vapid t=" + key.JWT(t, vapidtest.Claims(testOrigin))}, http.StatusUnauthorized, "no public key"},
		{"key not a point", map[string]string{"Authorization": "vapid t=" + key.JWT(t, vapidtest.Claims(testOrigin)) + ", k=AAAA"}, http.StatusUnauthorized, "not an uncompressed P-256 point"},
		{"not a JWT", map[string]string{"Authorization": "vapid t=abc, k=" + key.Public}, http.StatusUnauthorized, "want header.payload.signature"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := map[string]string{"TTL": "60"}
			for k, v := range tt.headers {
				h[k] = v
			}
			a := ts.push(token, h, []byte(tt.name))
			if a.status != tt.status || !strings.Contains(a.body, tt.text) {
				t.Fatalf("push: %d %q, want %d with %q", a.status, a.body, tt.status, tt.text)
			}
			if a.status == http.StatusUnauthorized && a.header.Get("WWW-Authenticate") != "vapid" {
				t.Fatalf("401 without WWW-Authenticate: vapid")
			}
			if a.status == http.StatusCreated {
				if m := d.expectMessage(); string(m.Raw) != tt.name {
					t.Fatalf("got %+v", m)
				}
			}
		})
	}
}

// TestWebPushRegister: what a server answers to Web Push registrations.
func TestWebPushRegister(t *testing.T) {
	key, other := vapidtest.New(t), vapidtest.New(t)
	t.Run("no public URL", func(t *testing.T) {
		ts := startServer(t, nil)
		d := ts.checkIn()
		d.send("r", wire.Register{App: app, Sender: wire.WebPushSender})
		if e := d.expectError("r", wire.CodeInvalid); !strings.Contains(e.Message, "--public-url") {
			t.Fatalf("error %q does not name --public-url", e.Message)
		}
		if a := ts.push("anything", map[string]string{"TTL": "1"}, nil); a.status != http.StatusNotFound {
			t.Fatalf("push to a server without public URL: %d", a.status)
		}
	})
	ts := startWebPushServer(t, nil)
	d := ts.checkIn()
	for _, tt := range []struct {
		name, vapid, text string
	}{
		{"key not base64url", "not base64!", "not base64url"},
		{"key not a point", base64.RawURLEncoding.EncodeToString([]byte{4, 1, 2}), "P-256"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d.send("r", wire.Register{App: app, Sender: wire.WebPushSender, VAPID: tt.vapid})
			if e := d.expectError("r", wire.CodeInvalid); !strings.Contains(e.Message, tt.text) {
				t.Fatalf("error %q, want %q", e.Message, tt.text)
			}
		})
	}
	token := d.registerWebPush(app, key.Public)
	if again := d.registerWebPush(app, key.Public); again != token {
		t.Fatalf("registering again gave %s, want %s", again, token)
	}
	d.send("r", wire.Register{App: app, Sender: wire.WebPushSender, VAPID: other.Public})
	if e := d.expectError("r", wire.CodeInvalid); !strings.Contains(e.Message, "another VAPID key") {
		t.Fatalf("error %q", e.Message)
	}
	reg, err := ts.store.ActiveRegistration(t.Context(), d.id, app, wire.WebPushSender)
	if err != nil || reg.VAPID != key.Public {
		t.Fatalf("stored %+v, %v; want VAPID %s", reg, err, key.Public)
	}
}

// TestWebPushTokenRotation: a rotated Web Push registration's token
// refresh carries its new endpoint, and the old endpoint reaches the new
// token during the grace period.
func TestWebPushTokenRotation(t *testing.T) {
	ts := startWebPushServer(t, nil)
	d := ts.checkIn()
	old := d.registerWebPush(app, "")
	d.conn.Close()
	rotated, err := ts.store.RotateToken(t.Context(), old, time.Hour, ts.now())
	if err != nil {
		t.Fatal(err)
	}
	d = ts.reconnect(d)
	n := d.expectRefresh()
	if n.Token != rotated.Token || n.Endpoint != testOrigin+"/up/"+rotated.Token {
		t.Fatalf("token refresh %+v, want token %s and its endpoint", n, rotated.Token)
	}
	d.ack(n.ID)
	ts.pushed(old, map[string]string{"TTL": "60"}, []byte("to the old endpoint"))
	if m := d.expectMessage(); m.Token != rotated.Token || string(m.Raw) != "to the old endpoint" {
		t.Fatalf("got %+v", m)
	}
}

// TestWebPushUrgency: RFC 8030's urgency decides what goes at once in
// each power mode: high always, normal on mains and battery, low on mains
// and on battery over Wi-Fi, very-low on mains only; held ones go behind
// the next message that goes at once on battery, and on mains from low.
func TestWebPushUrgency(t *testing.T) {
	tests := []struct {
		mode, link, urgency string
		atOnce              bool
	}{
		{wire.ModeMains, "", urgencyVeryLow, true},
		{wire.ModeMains, "", urgencyLow, true},
		{wire.ModeMains, "", "", true},
		{wire.ModeBattery, "", urgencyVeryLow, false},
		{wire.ModeBattery, wire.LinkWiFi, urgencyVeryLow, false},
		{wire.ModeBattery, "", urgencyLow, false},
		{wire.ModeBattery, wire.LinkOther, urgencyLow, false},
		{wire.ModeBattery, wire.LinkWiFi, urgencyLow, true},
		{wire.ModeBattery, "", urgencyNormal, true},
		{wire.ModeBattery, "", "", true},
		{wire.ModeBattery, "", urgencyHigh, true},
		{wire.ModeLow, "", urgencyLow, false},
		{wire.ModeLow, wire.LinkWiFi, urgencyLow, false},
		{wire.ModeLow, "", urgencyNormal, false},
		{wire.ModeLow, "", urgencyHigh, true},
	}
	ts := startWebPushServer(t, nil)
	for _, tt := range tests {
		t.Run(tt.mode+"/"+tt.link+"/"+tt.urgency, func(t *testing.T) {
			d, token := ts.webPushDeviceIn(tt.mode, tt.link)
			h := map[string]string{"TTL": "3600"}
			if tt.urgency != "" {
				h["Urgency"] = tt.urgency
			}
			id := ts.pushed(token, h, []byte("m"))
			marker := func() {
				t.Helper()
				mid := ts.pushed(token, map[string]string{"TTL": "0", "Urgency": urgencyHigh}, []byte("marker"))
				if m := d.expectMessage(); m.ID != mid {
					t.Fatalf("got %s %q, want only the marker %s", m.ID, m.Raw, mid)
				}
			}
			switch {
			case tt.atOnce:
				d.expectMessages(id)
				marker()
			case tt.mode == wire.ModeBattery:
				marker()
				d.expectMessages(id)
			default:
				marker()
				d.state(wire.ModeMains, 0)
				d.expectMessages(id)
			}
		})
	}
}

// TestWebPushWiFiReleases: low-urgency messages held on battery go once
// the device reports Wi-Fi.
func TestWebPushWiFiReleases(t *testing.T) {
	ts := startWebPushServer(t, nil)
	d, token := ts.webPushDeviceIn(wire.ModeBattery, wire.LinkOther)
	id := ts.pushed(token, map[string]string{"TTL": "3600", "Urgency": urgencyLow}, []byte("low"))
	mid := ts.pushed(token, map[string]string{"TTL": "0", "Urgency": urgencyNormal, "Topic": "marker"}, []byte("marker"))
	if m := d.expectMessage(); m.ID != mid {
		t.Fatalf("got %s %q, want the marker first", m.ID, m.Raw)
	}
	// The marker woke the radio on battery: the held message goes behind it.
	d.expectMessages(id)
	id = ts.pushed(token, map[string]string{"TTL": "3600", "Urgency": urgencyLow}, []byte("low again"))
	d.send("", wire.State{Mode: wire.ModeBattery, Link: wire.LinkWiFi})
	d.expectMessages(id)
}

// TestWebPushTTLZeroHeld: a push with TTL 0 that the device's power mode
// holds is dropped, as GCM drops one for an idle device, and answered 201.
func TestWebPushTTLZeroHeld(t *testing.T) {
	ts := startWebPushServer(t, nil)
	d, token := ts.webPushDeviceIn(wire.ModeLow, "")
	ts.pushed(token, map[string]string{"TTL": "0"}, []byte("dropped"))
	mid := ts.pushed(token, map[string]string{"TTL": "0", "Urgency": urgencyHigh}, []byte("marker"))
	if m := d.expectMessage(); m.ID != mid {
		t.Fatalf("got %s %q, want only the marker", m.ID, m.Raw)
	}
}

// FuzzParseVAPIDAuth feeds arbitrary headers to the VAPID parser and
// verifier: neither may panic, and every refusal wraps errVAPID.
func FuzzParseVAPIDAuth(f *testing.F) {
	k := vapidtest.New(f)
	f.Add(k.Authorization(f, testOrigin), "")
	f.Add("WebPush "+k.JWT(f, vapidtest.Claims(testOrigin)), "p256ecdsa="+k.Public)
	f.Add(`vapid t="a.b.c", k=""`, "")
	f.Add("vapid ,,,=,t", "")
	f.Add("key=AIza", "")
	f.Add("vapid t=eyJhbGciOiJFUzI1NiJ9.e30.AAAA, k="+k.Public, "")
	now := time.Now()
	f.Fuzz(func(t *testing.T, authorization, cryptoKey string) {
		a, err := parseVAPIDAuth(authorization, cryptoKey)
		if err == nil && a.key != nil {
			err = a.verify(testOrigin, now)
		}
		if err != nil && !errors.Is(err, errVAPID) {
			t.Fatalf("error %v does not wrap errVAPID", err)
		}
	})
}

// BenchmarkWebPush: pushes of 3 KB bodies from 8 concurrent app server
// connections, round robin over 1000 offline devices' Web Push
// registrations, without VAPID and with a VAPID JWT to verify on each.
func BenchmarkWebPush(b *testing.B) {
	ts := benchServer(b, func(c *Config) { c.PublicURL = testOrigin })
	body := bytes.Repeat([]byte{0xa5}, 3072)
	key := vapidtest.New(b)
	for _, bb := range []struct {
		name, vapid string
	}{{"plain", ""}, {"vapid", key.Public}} {
		b.Run(bb.name, func(b *testing.B) {
			var tokens []string
			if bb.vapid == "" {
				tokens = benchTokens(b, ts.store, store.WebPushSender, 1000)
			} else {
				// Registered with the key: each push's JWT is verified.
				tokens = make([]string, 1000)
				for i := range tokens {
					dev, err := ts.store.AddDevice(context.Background(), store.Device{SecretHash: make([]byte, 32), Created: time.Now()})
					if err == nil {
						var reg store.Registration
						reg, err = ts.store.Register(context.Background(), dev.ID, "com.example.bench", store.WebPushSender, bb.vapid, time.Now())
						tokens[i] = reg.Token
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			}
			auth := key.Authorization(b, testOrigin)
			benchParallel(b, 4, "msgs/s", func(client *http.Client, i int) {
				req, _ := http.NewRequest(http.MethodPost, ts.base+"/up/"+tokens[i%len(tokens)], bytes.NewReader(body))
				req.Header.Set("TTL", "3600")
				req.Header.Set("Authorization", auth)
				benchDo(b, client, req, http.StatusCreated)
			})
		})
	}
}
