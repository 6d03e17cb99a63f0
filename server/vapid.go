// SPDX-License-Identifier: Apache-2.0

package server

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/big"
	"strings"
	"time"
)

// VAPID (RFC 8292): an app server signs a JWT for the push service with
// its own key and sends the public key along; a subscription made with a
// key takes only pushes signed with it.

// maxVAPIDLifetime is how far ahead of the push a JWT's exp may be.
const maxVAPIDLifetime = 24 * time.Hour

// maxVAPIDToken bounds the JWT read from a header: a VAPID JWT is a few
// hundred bytes.
const maxVAPIDToken = 4096

// errVAPID is wrapped by every refusal of a VAPID authorization.
var errVAPID = errors.New("invalid VAPID authorization")

// vapidAuth is the VAPID authorization of a push as its headers give it.
// Its key is nil when the push has none.
type vapidAuth struct {
	token string // the JWT
	key   []byte // uncompressed P-256 point
}

// parseVAPIDAuth reads the VAPID authorization from a push's Authorization
// header, "vapid t=JWT, k=KEY" (RFC 8292), or the older draft's "WebPush
// JWT" with the key in Crypto-Key's p256ecdsa. Any other scheme, or none,
// is a push without VAPID.
func parseVAPIDAuth(authorization, cryptoKey string) (vapidAuth, error) {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(authorization), " ")
	var a vapidAuth
	var key string
	switch strings.ToLower(scheme) {
	case "vapid":
		for param := range strings.SplitSeq(rest, ",") {
			name, value, _ := strings.Cut(strings.TrimSpace(param), "=")
			value = strings.Trim(strings.TrimSpace(value), `"`)
			switch strings.ToLower(strings.TrimSpace(name)) {
			case "t":
				a.token = value
			case "k":
				key = value
			}
		}
	case "webpush":
		a.token = strings.TrimSpace(rest)
		for param := range strings.FieldsFuncSeq(cryptoKey, func(r rune) bool { return r == ',' || r == ';' }) {
			if name, value, _ := strings.Cut(strings.TrimSpace(param), "="); strings.EqualFold(name, "p256ecdsa") {
				key = strings.Trim(value, `"`)
			}
		}
	default:
		return vapidAuth{}, nil
	}
	switch {
	case a.token == "":
		return vapidAuth{}, fmt.Errorf("%w: no JWT (t=)", errVAPID)
	case len(a.token) > maxVAPIDToken:
		return vapidAuth{}, fmt.Errorf("%w: the JWT is %d bytes, limit %d", errVAPID, len(a.token), maxVAPIDToken)
	case key == "":
		return vapidAuth{}, fmt.Errorf("%w: no public key (k=)", errVAPID)
	}
	var err error
	if a.key, err = decodeVAPIDKey(key); err != nil {
		return vapidAuth{}, fmt.Errorf("%w: %w", errVAPID, err)
	}
	return a, nil
}

// decodeVAPIDKey decodes a VAPID public key: base64url, padded or not, of
// an uncompressed P-256 point.
func decodeVAPIDKey(k string) ([]byte, error) {
	b, err := decodeBase64URL(k)
	if err != nil {
		return nil, fmt.Errorf("the public key is not base64url: %w", err)
	}
	if _, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), b); err != nil {
		return nil, fmt.Errorf("the public key is not an uncompressed P-256 point: %w", err)
	}
	return b, nil
}

// sameVAPIDKey reports whether the key a registration was made with
// (base64url) is key.
func sameVAPIDKey(registered string, key []byte) bool {
	b, err := decodeVAPIDKey(registered)
	return err == nil && bytes.Equal(b, key)
}

// vapidClaims are the JWT claims VAPID uses.
type vapidClaims struct {
	Aud string `json:"aud"`
	Exp *int64 `json:"exp"`
	Sub string `json:"sub"`
}

// verify checks the JWT: signed ES256 by a.key, for the audience origin
// (the push resource's), expiring after now and at most 24 hours ahead,
// with a contact (sub).
func (a vapidAuth) verify(origin string, now time.Time) error {
	var c vapidClaims
	header, signed, sig, err := decodeJWS(a.token, &c)
	if err != nil {
		return fmt.Errorf("%w: JWT: %w", errVAPID, err)
	}
	if header.Alg != "ES256" {
		return fmt.Errorf("%w: JWT algorithm %.20q, want ES256", errVAPID, header.Alg)
	}
	if len(sig) != 64 {
		return fmt.Errorf("%w: the JWT signature is not 64 bytes", errVAPID)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), a.key)
	if err != nil {
		return fmt.Errorf("%w: %w", errVAPID, err)
	}
	digest := sha256.Sum256([]byte(signed))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(pub, digest[:], r, s) {
		return fmt.Errorf("%w: the JWT signature does not verify with the key", errVAPID)
	}
	switch {
	case !strings.EqualFold(strings.TrimSuffix(c.Aud, "/"), origin):
		return fmt.Errorf("%w: aud %.100q, want %s", errVAPID, c.Aud, origin)
	case c.Exp == nil:
		return fmt.Errorf("%w: no exp", errVAPID)
	case *c.Exp <= now.Unix():
		return fmt.Errorf("%w: the JWT expired", errVAPID)
	case *c.Exp > now.Add(maxVAPIDLifetime).Unix():
		return fmt.Errorf("%w: exp is more than 24 hours ahead", errVAPID)
	case c.Sub == "":
		return fmt.Errorf("%w: no sub (the app server's contact)", errVAPID)
	}
	return nil
}
