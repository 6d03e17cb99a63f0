// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"net/http"
	"net/url"
	"strings"
	"testing"

	"tether/wire"
)

const testPublicURL = "https://push.example:8443"

// serviceAccount is a sender with a service-account file, made through
// the running server's admin socket.
type serviceAccount struct {
	ts      *testServer
	snd     NewSender
	account ServiceAccount
	key     *rsa.PrivateKey
}

func newServiceAccount(t testing.TB, ts *testServer) *serviceAccount {
	t.Helper()
	snd := ts.addSender("")
	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	account, err := admin.AddServiceAccount(context.Background(), snd.ID, testPublicURL)
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode([]byte(account.PrivateKey))
	if block == nil || block.Type != "PRIVATE KEY" {
		t.Fatalf("private_key is not a PKCS#8 PEM: %.40q", account.PrivateKey)
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return &serviceAccount{ts: ts, snd: snd, account: account, key: key.(*rsa.PrivateKey)}
}

// claims are a grant's claims as Google's libraries make them.
func (sa *serviceAccount) claims() map[string]any {
	now := sa.ts.now().Unix()
	return map[string]any{
		"iss": sa.account.ClientEmail, "aud": sa.account.TokenURI, "iat": now, "exp": now + 3600,
		"scope": "https://www.googleapis.com/auth/cloud-platform https://www.googleapis.com/auth/firebase.messaging",
	}
}

// signJWT signs claims with key under header kid, RS256.
func signJWT(t testing.TB, key *rsa.PrivateKey, kid string, claims map[string]any) string {
	return signJWTWith(t, base64.RawURLEncoding, key, kid, claims)
}

// signJWTWith is signJWT with the parts in the encoding enc: padded, as
// python3-google-auth 1.x pads them, with base64.URLEncoding.
func signJWTWith(t testing.TB, enc *base64.Encoding, key *rsa.PrivateKey, kid string, claims map[string]any) string {
	t.Helper()
	h, _ := json.Marshal(map[string]string{"alg": "RS256", "typ": "JWT", "kid": kid})
	c, _ := json.Marshal(claims)
	signed := enc.EncodeToString(h) + "." + enc.EncodeToString(c)
	digest := sha256.Sum256([]byte(signed))
	sig, err := rsa.SignPKCS1v15(rand.Reader, key, crypto.SHA256, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	return signed + "." + enc.EncodeToString(sig)
}

// grant posts a JWT bearer grant to /token.
func (sa *serviceAccount) grant(grantType, assertion string) httpAnswer {
	form := url.Values{"grant_type": {grantType}, "assertion": {assertion}}
	return sa.ts.post("/token", "", "application/x-www-form-urlencoded", form.Encode())
}

// token gets an access token.
func (sa *serviceAccount) token(t testing.TB) string {
	t.Helper()
	ans := sa.grant(jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, sa.claims()))
	var tok tokenResponse
	if ans.status != http.StatusOK || json.Unmarshal([]byte(ans.body), &tok) != nil || tok.TokenType != "Bearer" || tok.ExpiresIn != 3600 || tok.AccessToken == "" {
		t.Fatalf("token grant answered %d %s", ans.status, ans.body)
	}
	return tok.AccessToken
}

// sendV1 posts body to project's messages:send with the bearer token.
func (sa *serviceAccount) sendV1(t *testing.T, token, project, body string) (int, fcmStatusBody, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, sa.ts.base+"/v1/projects/"+project+"/messages:send", strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var answer struct {
		Name  string        `json:"name"`
		Error fcmStatusBody `json:"error"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		t.Fatalf("messages:send answer: %v", err)
	}
	return resp.StatusCode, answer.Error, answer.Name
}

func TestServiceAccountFile(t *testing.T) {
	ts := startServer(t, nil)
	sa := newServiceAccount(t, ts)
	a := sa.account
	if a.Type != "service_account" || a.ProjectID != sa.snd.ID || a.ClientEmail != sa.snd.ID+"@push.example" ||
		a.TokenURI != testPublicURL+"/token" || len(a.PrivateKeyID) != 40 || sa.key.N.BitLen() != 2048 {
		t.Fatalf("service account %+v", a)
	}
	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	keys, err := admin.ServiceKeys(context.Background(), sa.snd.ID)
	if err != nil || len(keys) != 1 || keys[0].ID != a.PrivateKeyID || keys[0].Email != a.ClientEmail {
		t.Fatalf("service keys %+v, %v", keys, err)
	}
	if strings.Contains(ts.logs.String(), "PRIVATE KEY") {
		t.Error("the server logged a private key")
	}
	for _, tc := range []struct {
		name, id, url string
		want          error
	}{
		{"no such sender", "999999999999", testPublicURL, ErrNoSender},
		{"no public URL", sa.snd.ID, "", errBadServiceKey},
		{"not a URL", sa.snd.ID, "ftp://x", errBadServiceKey},
	} {
		if _, err := admin.AddServiceAccount(context.Background(), tc.id, tc.url); err == nil || (tc.want == ErrNoSender && !errors.Is(err, tc.want)) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
	if err := admin.RevokeServiceKey(context.Background(), sa.snd.ID, "no-such-key"); !errors.Is(err, ErrNoServiceKey) {
		t.Errorf("revoke an unknown key: %v, want ErrNoServiceKey", err)
	}
}

func TestTokenGrant(t *testing.T) {
	ts := startServer(t, nil)
	sa := newServiceAccount(t, ts)
	other, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	// with is sa.claims() with the claims of the pairs key, value set,
	// or removed for a nil value.
	with := func(kv ...any) map[string]any {
		c := sa.claims()
		for i := 0; i < len(kv); i += 2 {
			if kv[i+1] == nil {
				delete(c, kv[i].(string))
			} else {
				c[kv[i].(string)] = kv[i+1]
			}
		}
		return c
	}
	// claims() sets exp an hour after iat: these change one of them.
	now := sa.claims()["iat"].(int64)
	for _, tc := range []struct {
		name      string
		grantType string
		assertion string
		wantError string
	}{
		{"google's claims", jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, sa.claims()), ""},
		{"no kid", jwtBearerGrant, signJWT(t, sa.key, "", sa.claims()), ""},
		{"padded base64, as google-auth 1.x makes", jwtBearerGrant, signJWTWith(t, base64.URLEncoding, sa.key, sa.account.PrivateKeyID, sa.claims()), ""},
		{"messaging scope alone", jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, with("scope", "https://www.googleapis.com/auth/firebase.messaging")), ""},
		{"another grant type", "client_credentials", signJWT(t, sa.key, sa.account.PrivateKeyID, sa.claims()), "unsupported_grant_type"},
		{"no assertion", jwtBearerGrant, "", "invalid_grant"},
		{"not a JWT", jwtBearerGrant, "a.b", "invalid_grant"},
		{"another key", jwtBearerGrant, signJWT(t, other, sa.account.PrivateKeyID, sa.claims()), "invalid_grant"},
		{"unknown kid", jwtBearerGrant, signJWT(t, sa.key, "0123", sa.claims()), "invalid_grant"},
		{"another issuer", jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, with("iss", sa.snd.ID+"@elsewhere.example")), "invalid_grant"},
		{"unknown sender", jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, with("iss", "999999999999@push.example")), "invalid_grant"},
		{"google's token endpoint", jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, with("aud", "https://accounts.google.com/o/oauth2/token")), ""},
		{"another audience", jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, with("aud", "https://push.example:8443/other")), "invalid_grant"},
		{"expired", jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, with("iat", now-3600, "exp", now-1)), "invalid_grant"},
		{"over an hour", jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, with("iat", now-1)), "invalid_grant"},
		{"no iat", jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, with("iat", nil)), "invalid_grant"},
		{"issued in the future", jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, with("iat", now+3600)), "invalid_grant"},
		{"iat a string", jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, with("iat", "soon")), "invalid_grant"},
		{"no sending scope", jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, with("scope", "https://www.googleapis.com/auth/userinfo.email")), "invalid_scope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ans := sa.grant(tc.grantType, tc.assertion)
			if ans.header.Get("Cache-Control") != "no-store" {
				t.Errorf("Cache-Control %q, want no-store", ans.header.Get("Cache-Control"))
			}
			if tc.wantError == "" {
				var tok tokenResponse
				if ans.status != http.StatusOK || json.Unmarshal([]byte(ans.body), &tok) != nil || tok.AccessToken == "" || tok.TokenType != "Bearer" || tok.ExpiresIn != 3600 {
					t.Fatalf("answered %d %s", ans.status, ans.body)
				}
				return
			}
			var e oauthError
			if ans.status != http.StatusBadRequest || json.Unmarshal([]byte(ans.body), &e) != nil || e.Code != tc.wantError || e.Description == "" {
				t.Fatalf("answered %d %s, want 400 %s with a description", ans.status, ans.body, tc.wantError)
			}
		})
	}
}

func TestTokenGrantFailuresThrottled(t *testing.T) {
	ts := startServer(t, func(c *Config) { c.AuthFailureLimit = 2 })
	sa := newServiceAccount(t, ts)
	bad := signJWT(t, sa.key, sa.account.PrivateKeyID, map[string]any{"iss": sa.account.ClientEmail})
	for range 2 {
		if ans := sa.grant(jwtBearerGrant, bad); ans.status != http.StatusBadRequest {
			t.Fatalf("a bad grant answered %d %s", ans.status, ans.body)
		}
	}
	if ans := sa.grant(jwtBearerGrant, bad); ans.status != http.StatusTooManyRequests || !strings.Contains(ans.body, "slow_down") {
		t.Fatalf("a bad grant over the limit answered %d %s, want 429 slow_down", ans.status, ans.body)
	}
	// A right grant is never refused.
	sa.token(t)
}

func TestSendV1(t *testing.T) {
	ts := startServer(t, nil)
	sa := newServiceAccount(t, ts)
	stranger := ts.addSender("")
	d := ts.checkIn()
	token := d.register(app, sa.snd.ID)
	foreign := d.register("com.example.other", stranger.ID)
	access := sa.token(t)

	status, e, name := sa.sendV1(t, access, sa.snd.ID, `{"message": {"token": "`+token+`", "data": {"setpoint": "19.5"},
		"notification": {"title": "Heating", "body": "on"},
		"android": {"collapse_key": "setpoint", "priority": "HIGH", "ttl": "3.5s", "restricted_package_name": "`+app+`",
			"notification": {"click_action": "OPEN", "body": "on, 19.5"}, "fcm_options": {"analytics_label": "x"}, "direct_boot_ok": true},
		"apns": {"headers": {"apns-priority": "10"}}, "webpush": {"headers": {"TTL": "60"}}, "fcm_options": {"analytics_label": "y"}}}`)
	if status != http.StatusOK || !strings.HasPrefix(name, "projects/"+sa.snd.ID+"/messages/0:") {
		t.Fatalf("send answered %d %+v %q", status, e, name)
	}
	m := d.expectMessage()
	if "projects/"+sa.snd.ID+"/messages/"+m.ID != name || m.CollapseKey != "setpoint" || m.Priority != "high" || m.Data["setpoint"] != "19.5" ||
		m.Notification["title"] != "Heating" || m.Notification["body"] != "on, 19.5" || m.Notification["click_action"] != "OPEN" || m.TTL < 1 || m.TTL > 4 {
		t.Fatalf("delivered %+v for %s", m, name)
	}
	d.ack(m.ID)

	// lowerCamelCase, as protobuf's JSON allows; android.data overrides data.
	status, e, name = sa.sendV1(t, access, sa.snd.ID, `{"validateOnly": false, "message": {"token": "`+token+`", "data": {"a": "1"},
		"android": {"collapseKey": "ck", "restrictedPackageName": "`+app+`", "data": {"camelKey": "2"}}}}`)
	if status != http.StatusOK {
		t.Fatalf("camelCase send answered %d %+v", status, e)
	}
	if m := d.expectMessage(); m.CollapseKey != "ck" || len(m.Data) != 1 || m.Data["camelKey"] != "2" {
		t.Fatalf("camelCase send delivered %+v", m)
	} else {
		d.ack(m.ID)
	}

	// validate_only checks and answers, and delivers nothing.
	if status, e, name = sa.sendV1(t, access, sa.snd.ID, `{"validate_only": true, "message": {"token": "`+token+`", "data": {"v": "1"}}}`); status != http.StatusOK || name == "" {
		t.Fatalf("validate_only answered %d %+v", status, e)
	}

	big := strings.Repeat("x", 4100)
	for _, tc := range []struct {
		name, project, token, body string
		status                     int
		code                       string // FcmError's errorCode; "" for none
	}{
		{"no token", sa.snd.ID, "", `{"message": {"token": "t"}}`, 401, ""},
		{"a server key", sa.snd.ID, sa.snd.ServerKey, `{"message": {"token": "t"}}`, 401, ""},
		{"a forged token", sa.snd.ID, access[:len(access)-4] + "AAAA", `{"message": {"token": "t"}}`, 401, ""},
		{"another project", stranger.ID, access, `{"message": {"token": "` + token + `"}}`, 403, ""},
		{"not JSON", sa.snd.ID, access, `message`, 400, fcmInvalidArgument},
		{"no message", sa.snd.ID, access, `{}`, 400, fcmInvalidArgument},
		{"unknown field", sa.snd.ID, access, `{"message": {"token": "` + token + `", "colour": "red"}}`, 400, fcmInvalidArgument},
		{"two targets", sa.snd.ID, access, `{"message": {"token": "` + token + `", "topic": "news"}}`, 400, fcmInvalidArgument},
		{"no target", sa.snd.ID, access, `{"message": {"data": {"a": "b"}}}`, 400, fcmInvalidArgument},
		{"data not a string", sa.snd.ID, access, `{"message": {"token": "` + token + `", "data": {"a": 1}}}`, 400, fcmInvalidArgument},
		{"bad ttl", sa.snd.ID, access, `{"message": {"token": "` + token + `", "android": {"ttl": "10m"}}}`, 400, fcmInvalidArgument},
		{"ttl over 28 days", sa.snd.ID, access, `{"message": {"token": "` + token + `", "android": {"ttl": "2419201s"}}}`, 400, fcmInvalidArgument},
		{"bad priority", sa.snd.ID, access, `{"message": {"token": "` + token + `", "android": {"priority": "URGENT"}}}`, 400, fcmInvalidArgument},
		{"bad topic", sa.snd.ID, access, `{"message": {"topic": "a b"}}`, 400, fcmInvalidArgument},
		{"bad condition", sa.snd.ID, access, `{"message": {"condition": "'a' in"}}`, 400, fcmInvalidArgument},
		{"too big", sa.snd.ID, access, `{"message": {"token": "` + token + `", "data": {"a": "` + big + `"}}}`, 400, fcmInvalidArgument},
		{"reserved data key", sa.snd.ID, access, `{"message": {"token": "` + token + `", "data": {"google.x": "1"}}}`, 400, fcmInvalidArgument},
		{"wrong package", sa.snd.ID, access, `{"message": {"token": "` + token + `", "android": {"restricted_package_name": "com.example.no"}}}`, 400, fcmInvalidArgument},
		{"unknown token", sa.snd.ID, access, `{"message": {"token": "no-such-token"}}`, 400, fcmInvalidArgument},
		{"another sender's token", sa.snd.ID, access, `{"message": {"token": "` + foreign + `"}}`, 403, fcmSenderIDMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, e, _ := sa.sendV1(t, tc.token, tc.project, tc.body)
			if status != tc.status || e.Code != tc.status || e.Status != canonicalStatus(tc.status) || e.Message == "" {
				t.Fatalf("answered %d %+v, want %d %s", status, e, tc.status, canonicalStatus(tc.status))
			}
			switch {
			case tc.code == "" && len(e.Details) != 0:
				t.Errorf("details %+v, want none", e.Details)
			case tc.code != "" && (len(e.Details) != 1 || e.Details[0].Type != fcmErrorType || e.Details[0].ErrorCode != tc.code):
				t.Errorf("details %+v, want an FcmError %s", e.Details, tc.code)
			}
		})
	}

	// A topic: the numeric message ID, as the legacy API gives it.
	d.subscribe(app, sa.snd.ID, "news")
	if status, e, name = sa.sendV1(t, access, sa.snd.ID, `{"message": {"topic": "/topics/news", "data": {"n": "1"}}}`); status != http.StatusOK || !strings.HasPrefix(name, "projects/"+sa.snd.ID+"/messages/") {
		t.Fatalf("topic send answered %d %+v", status, e)
	}
	if m := d.expectMessage(); m.Data["n"] != "1" {
		t.Fatalf("topic message delivered as %+v", m)
	}

	// An unregistered token is FCM's 404 UNREGISTERED.
	d.send("unreg", wire.Unregister{App: app, Sender: sa.snd.ID})
	d.expect(wire.TypeUnregistered, "unreg", &wire.Unregistered{})
	if status, e, _ = sa.sendV1(t, access, sa.snd.ID, `{"message": {"token": "`+token+`"}}`); status != http.StatusNotFound || len(e.Details) != 1 || e.Details[0].ErrorCode != fcmUnregistered {
		t.Fatalf("send to an unregistered token answered %d %+v", status, e)
	}
	pem := strings.Split(sa.account.PrivateKey, "\n")[1]
	for _, secret := range []string{access, pem, token, foreign} {
		if strings.Contains(ts.logs.String(), secret) {
			t.Errorf("the server logged a secret (%.8s...)", secret)
		}
	}
}

func TestAccessTokenLifetime(t *testing.T) {
	dir := t.TempDir()
	ts := startServerIn(t, dir, nil)
	sa := newServiceAccount(t, ts)
	access := sa.token(t)
	body := `{"validate_only": true, "message": {"topic": "news"}}`
	if status, e, _ := sa.sendV1(t, access, sa.snd.ID, body); status != http.StatusOK {
		t.Fatalf("send answered %d %+v", status, e)
	}

	// The token works after a restart: nothing of it is kept in memory.
	ts.stop()
	ts = startServerIn(t, dir, nil)
	sa.ts = ts
	if status, e, _ := sa.sendV1(t, access, sa.snd.ID, body); status != http.StatusOK {
		t.Fatalf("send after a restart answered %d %+v", status, e)
	}

	// It stops after an hour.
	ts.clock.Advance(accessTokenLife)
	if status, e, _ := sa.sendV1(t, access, sa.snd.ID, body); status != http.StatusUnauthorized {
		t.Fatalf("send with an hour-old token answered %d %+v", status, e)
	}

	// Revoking the key ends its tokens at once.
	access = sa.token(t)
	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := admin.RevokeServiceKey(context.Background(), sa.snd.ID, sa.account.PrivateKeyID); err != nil {
		t.Fatal(err)
	}
	if status, e, _ := sa.sendV1(t, access, sa.snd.ID, body); status != http.StatusUnauthorized {
		t.Fatalf("send with a revoked key's token answered %d %+v", status, e)
	}
	if ans := sa.grant(jwtBearerGrant, signJWT(t, sa.key, sa.account.PrivateKeyID, sa.claims())); ans.status != http.StatusBadRequest {
		t.Fatalf("grant with a revoked key answered %d %s", ans.status, ans.body)
	}
}

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"0s", 0, true}, {"3.5s", 4, true}, {"3.000s", 3, true}, {"86400s", 86400, true}, {"2419200s", 2419200, true},
		{"0.000000001s", 1, true}, {"s", 0, false}, {"3", 0, false}, {"-1s", 0, false}, {"1.s", 1, true},
		{"1.0000000001s", 0, false}, {"1e3s", 0, false}, {"99999999999999999999s", 0, false}, {"10m", 0, false},
	} {
		got, err := parseDuration(tc.in)
		if (err == nil) != tc.ok || (tc.ok && got != tc.want) {
			t.Errorf("parseDuration(%q) = %d, %v; want %d, ok %v", tc.in, got, err, tc.want, tc.ok)
		}
	}
}

func FuzzParseJWT(f *testing.F) {
	key, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(signJWT(f, key, "k", map[string]any{"iss": "1@a", "aud": "https://a/token", "iat": 1, "exp": 2, "scope": "s"}))
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("a.b.c")
	f.Add("..")
	f.Fuzz(func(t *testing.T, s string) {
		jwt, err := parseJWT(s)
		if err != nil {
			if !errors.Is(err, errBadJWT) {
				t.Fatalf("error %v does not wrap errBadJWT", err)
			}
			return
		}
		if jwt.header.Alg != "RS256" || len(jwt.signature) == 0 || !strings.HasPrefix(s, jwt.signed+".") {
			t.Fatalf("parsed %q as %+v", s, jwt)
		}
	})
}

func FuzzDecodeV1Send(f *testing.F) {
	f.Add(`{"message": {"token": "t", "data": {"a": "b"}, "android": {"ttl": "3.5s", "priority": "high", "notification": {"x": 1}}}}`)
	f.Add(`{"validateOnly": true, "message": {"condition": "'a' in topics || 'b' in topics", "notification": {"title": "t"}}}`)
	f.Add(`{"message": {"topic": "/topics/news", "apns": {}, "webpush": [], "fcmOptions": {"analyticsLabel": "l"}}}`)
	f.Fuzz(func(t *testing.T, body string) {
		req, err := decodeV1Send([]byte(body))
		if err != nil {
			return
		}
		targets := len(req.tokens)
		if req.topic != "" || req.condition != nil {
			targets++
		}
		if targets != 1 || req.check() != nil || req.ttl < 0 {
			t.Fatalf("decoded %q as %+v", body, req)
		}
	})
}

// BenchmarkSendV1: BenchmarkSend's sends through the FCM v1 API, with an
// access token, to compare what v1's form and token cost.
func BenchmarkSendV1(b *testing.B) {
	ts := benchServer(b, nil)
	sa := newServiceAccount(b, ts)
	tokens := benchTokens(b, ts.store, sa.snd.ID, 1000)
	bodies := make([][]byte, len(tokens))
	for i, tok := range tokens {
		bodies[i], _ = json.Marshal(map[string]any{"message": map[string]any{"token": tok, "android": map[string]string{"ttl": "3600s"},
			"data": map[string]string{"temperature": "21.5", "unit": "C", "room": "kitchen"}}})
	}
	benchSends(b, ts.base+"/v1/projects/"+sa.snd.ID+"/messages:send", "Bearer "+sa.token(b), bodies, `"name":"projects/`)
}

// BenchmarkTokenGrant: access tokens granted per second, each for a new
// JWT, as app servers ask for one an hour each.
func BenchmarkTokenGrant(b *testing.B) {
	ts := benchServer(b, nil)
	sa := newServiceAccount(b, ts)
	grants := make([]string, 64)
	for i := range grants {
		c := sa.claims()
		c["jti"] = i
		grants[i] = url.Values{"grant_type": {jwtBearerGrant}, "assertion": {signJWT(b, sa.key, sa.account.PrivateKeyID, c)}}.Encode()
	}
	benchParallel(b, 4, "grants/s", func(client *http.Client, i int) {
		req, _ := http.NewRequest(http.MethodPost, ts.base+"/token", strings.NewReader(grants[i%len(grants)]))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		benchDo(b, client, req, http.StatusOK)
	})
}
