// SPDX-License-Identifier: Apache-2.0

package server

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"tether/wire"
)

// signedPost is one webhook POST as the app server received it.
type signedPost struct {
	header http.Header
	body   []byte
}

// newSignedWebhook records every POST it gets and answers 204, or 500
// while fail says so.
func newSignedWebhook(t *testing.T, fail func() bool) (*httptest.Server, <-chan signedPost) {
	posts := make(chan signedPost, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		posts <- signedPost{r.Header.Clone(), body}
		if fail != nil && fail() {
			http.Error(w, "not now", http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(srv.Close)
	return srv, posts
}

func nextPost(t *testing.T, posts <-chan signedPost) signedPost {
	t.Helper()
	select {
	case p := <-posts:
		return p
	case <-time.After(30 * time.Second):
		t.Fatal("no webhook POST")
		return signedPost{}
	}
}

// verifySignature checks a Tether-Signature as an app server would, from
// the documented rule alone: it returns which of secrets signed body, by
// the index of its v1, and the time t.
func verifySignature(t *testing.T, header string, body []byte, secrets ...string) (t0 time.Time, signedBy []int) {
	t.Helper()
	var ts string
	var sigs []string
	for part := range strings.SplitSeq(header, ",") {
		k, v, _ := strings.Cut(part, "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sigs = append(sigs, v)
		default:
			t.Errorf("signature %q: unknown part %q", header, part)
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		t.Fatalf("signature %q: t: %v", header, err)
	}
	for i, secret := range secrets {
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write([]byte(ts + "."))
		mac.Write(body)
		want := mac.Sum(nil)
		for _, s := range sigs {
			got, err := hex.DecodeString(s)
			if err == nil && hmac.Equal(got, want) {
				signedBy = append(signedBy, i)
			}
		}
	}
	if len(signedBy) != len(sigs) {
		t.Errorf("signature %q: %d v1 values, %d verify with the secrets", header, len(sigs), len(signedBy))
	}
	return time.Unix(sec, 0), signedBy
}

// TestWebhookSignatures: each POST is signed with the sender's secret and
// carries the message ID as its idempotency key; after a rotation with a
// grace period both secrets sign, after one without only the new one.
// No secret reaches the log.
func TestWebhookSignatures(t *testing.T) {
	hook, posts := newSignedWebhook(t, nil)
	ts := startServer(t, nil)
	snd := ts.addSender(hook.URL)
	if !strings.HasPrefix(snd.WebhookSecret, "whsec_") || len(snd.WebhookSecret) < 40 {
		t.Fatalf("new sender's webhook secret %q", snd.WebhookSecret)
	}
	d := ts.checkIn()
	d.register(app, snd.ID)
	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if !admin.ViaSocket() {
		t.Fatal("admin did not reach the running server")
	}

	rotated, err := admin.RotateWebhookSecret(context.Background(), snd.ID, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if rotated.WebhookSecret == snd.WebhookSecret || rotated.OldSecretUntil.IsZero() {
		t.Fatalf("rotation gave %+v", rotated)
	}
	final, err := admin.RotateWebhookSecret(context.Background(), snd.ID, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !final.OldSecretUntil.IsZero() {
		t.Errorf("rotation without grace keeps the old secret until %v", final.OldSecretUntil)
	}
	if _, err := admin.RotateWebhookSecret(context.Background(), "999999999999", 0); !errors.Is(err, ErrNoSender) {
		t.Errorf("rotation of no sender: %v", err)
	}
	if _, err := admin.RotateWebhookSecret(context.Background(), snd.ID, MaxWebhookSecretGrace+time.Hour); err == nil {
		t.Error("a grace period above the maximum was taken")
	}

	for _, tc := range []struct {
		name    string
		secrets []string // the secrets the sender has, in order
		want    []int    // which of them sign
		rotate  time.Duration
	}{
		{"after rotation without grace", []string{final.WebhookSecret, rotated.WebhookSecret, snd.WebhookSecret}, []int{0}, 0},
		{"during grace", nil, []int{0, 1}, time.Hour},
	} {
		t.Run(tc.name, func(t *testing.T) {
			secrets := tc.secrets
			if secrets == nil {
				old := final.WebhookSecret
				r, err := admin.RotateWebhookSecret(context.Background(), snd.ID, tc.rotate)
				if err != nil {
					t.Fatal(err)
				}
				secrets = []string{r.WebhookSecret, old}
			}
			id := "up-" + strings.ReplaceAll(tc.name, " ", "-")
			sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: id, TTL: 600, Data: map[string]string{"temp": "21"}})
			p := nextPost(t, posts)
			if got := p.header.Get("Idempotency-Key"); got != id {
				t.Errorf("Idempotency-Key %q, want %q", got, id)
			}
			at, by := verifySignature(t, p.header.Get("Tether-Signature"), p.body, secrets...)
			if !slices.Equal(by, tc.want) {
				t.Errorf("signed by secrets %v, want %v", by, tc.want)
			}
			if skew := time.Since(at); skew < -5*time.Minute || skew > 5*time.Minute {
				t.Errorf("t is %v from now, outside the 5 minutes app servers accept", skew)
			}
		})
	}
	for _, secret := range []string{snd.WebhookSecret, rotated.WebhookSecret, final.WebhookSecret, snd.ServerKey} {
		if strings.Contains(ts.logs.String(), secret) {
			t.Errorf("a secret is in the log")
		}
	}
}

// TestSenderWebhookUpdate: a running server posts a message that waits for
// its retry to the webhook a sender was moved to, with no restart, and the
// sender keeps its ID, key and registrations.
func TestSenderWebhookUpdate(t *testing.T) {
	dead, deadPosts := newSignedWebhook(t, func() bool { return true })
	alive, alivePosts := newSignedWebhook(t, nil)
	ts := startServer(t, nil)
	snd := ts.addSender(dead.URL)
	d := ts.checkIn()
	token := d.register(app, snd.ID)
	sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: "up-moved", TTL: 600})
	nextPost(t, deadPosts)

	admin, err := OpenAdmin(context.Background(), AdminConfig{DataDir: ts.dir})
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if _, err := admin.SetSenderWebhook(context.Background(), snd.ID, "ftp://x"); err == nil || !strings.Contains(err.Error(), "absolute http or https URL") {
		t.Errorf("a webhook that is no http URL: %v", err)
	}
	if _, err := admin.SetSenderWebhook(context.Background(), "999999999999", alive.URL); !errors.Is(err, ErrNoSender) {
		t.Errorf("no such sender: %v", err)
	}
	info, err := admin.SetSenderWebhook(context.Background(), snd.ID, alive.URL+"/moved")
	if err != nil {
		t.Fatal(err)
	}
	if info.ID != snd.ID || info.Webhook != alive.URL+"/moved" {
		t.Errorf("updated sender %+v", info)
	}
	p := nextPost(t, alivePosts)
	if got := p.header.Get("Idempotency-Key"); got != "up-moved" {
		t.Errorf("the moved webhook got %q first, want up-moved", got)
	}
	// The key still sends to the registration made before the move.
	ts.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"x": "1"}})
}

// TestWebhookSignatureSnippets runs the verification code of
// docs/server-api.md, in Python and in Node, on a real POST of the server:
// it accepts the POST, and refuses it with another secret, another body or
// an old t.
func TestWebhookSignatureSnippets(t *testing.T) {
	doc, err := os.ReadFile("../docs/server-api.md")
	if err != nil {
		t.Fatal(err)
	}
	hook, posts := newSignedWebhook(t, nil)
	ts := startServer(t, nil)
	snd := ts.addSender(hook.URL)
	d := ts.checkIn()
	d.register(app, snd.ID)
	sendUpstream(t, d, wire.Upstream{App: app, To: snd.ID, ID: "up-snippet", TTL: 600, Data: map[string]string{"é": "ü"}})
	p := nextPost(t, posts)
	header := p.header.Get("Tether-Signature")
	oldHeader := regexp.MustCompile(`t=\d+`).ReplaceAllString(header, "t=1000000000")

	for _, lang := range []struct {
		name, interpreter, harness string
	}{
		{"python", "python3", `
import os, sys
body = sys.stdin.buffer.read()
print("ok" if verify_tether_signature(os.environ["SECRET"], os.environ["HEADER"], body) else "refused")
`},
		{"node", "node", `
const chunks = [];
process.stdin.on("data", (c) => chunks.push(c));
process.stdin.on("end", () => {
  const ok = verifyTetherSignature(process.env.SECRET, process.env.HEADER, Buffer.concat(chunks));
  console.log(ok ? "ok" : "refused");
});
`},
	} {
		t.Run(lang.name, func(t *testing.T) {
			bin, err := exec.LookPath(lang.interpreter)
			if err != nil {
				t.Skipf("no %s on this machine", lang.interpreter)
			}
			m := regexp.MustCompile("(?s)<!-- webhook-verify: " + lang.name + " -->\n```[a-z]+\n(.*?)```").FindSubmatch(doc)
			if m == nil {
				t.Fatalf("no %s snippet in docs/server-api.md", lang.name)
			}
			script := filepath.Join(t.TempDir(), "verify")
			if err := os.WriteFile(script, append(m[1], lang.harness...), 0o600); err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				name, secret, header string
				body                 []byte
				want                 string
			}{
				{"the POST", snd.WebhookSecret, header, p.body, "ok"},
				{"another secret", "whsec_other", header, p.body, "refused"},
				{"another body", snd.WebhookSecret, header, append(bytes.Clone(p.body), ' '), "refused"},
				{"an old t", snd.WebhookSecret, oldHeader, p.body, "refused"},
				{"no v1", snd.WebhookSecret, "t=" + strconv.FormatInt(time.Now().Unix(), 10), p.body, "refused"},
			} {
				cmd := exec.Command(bin, script)
				cmd.Env = append(os.Environ(), "SECRET="+tc.secret, "HEADER="+tc.header)
				cmd.Stdin = bytes.NewReader(tc.body)
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Fatalf("%s: %v\n%s", tc.name, err, out)
				}
				if got := strings.TrimSpace(string(out)); got != tc.want {
					t.Errorf("%s: %s, want %s", tc.name, got, tc.want)
				}
			}
		})
	}
}
