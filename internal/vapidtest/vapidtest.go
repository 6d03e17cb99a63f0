// SPDX-License-Identifier: Apache-2.0

// Package vapidtest plays an app server's side of VAPID (RFC 8292) in
// tests: a P-256 key pair, and the ES256 JWTs and Authorization headers
// it signs for a push service.
package vapidtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"
)

// Key is an app server's VAPID key pair.
type Key struct {
	priv *ecdsa.PrivateKey
	// Public is the public key as VAPID and UnifiedPush carry it:
	// base64url, unpadded, of the uncompressed point.
	Public string
}

// New makes a key pair.
func New(t testing.TB) Key {
	t.Helper()
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := priv.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return Key{priv: priv, Public: base64.RawURLEncoding.EncodeToString(pub)}
}

// Claims are a VAPID JWT's claims for the push service at aud, valid for
// 12 hours from now.
func Claims(aud string) map[string]any {
	return map[string]any{"aud": aud, "exp": time.Now().Add(12 * time.Hour).Unix(), "sub": "mailto:ops@example.com"}
}

// JWT signs claims ES256 with k.
func (k Key) JWT(t testing.TB, claims map[string]any) string {
	t.Helper()
	enc := func(v any) string {
		b, err := json.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return base64.RawURLEncoding.EncodeToString(b)
	}
	input := enc(map[string]string{"typ": "JWT", "alg": "ES256"}) + "." + enc(claims)
	digest := sha256.Sum256([]byte(input))
	r, s, err := ecdsa.Sign(rand.Reader, k.priv, digest[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// Authorization is the Authorization header of RFC 8292 for a push to
// the push service at origin aud.
func (k Key) Authorization(t testing.TB, aud string) string {
	t.Helper()
	return "vapid t=" + k.JWT(t, Claims(aud)) + ", k=" + k.Public
}
