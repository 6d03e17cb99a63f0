// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"crypto"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"

	"tether/server/internal/clientip"
	"tether/server/store"
)

// The OAuth 2.0 token endpoint of the FCM HTTP v1 API: app servers trade
// a JWT signed with a service-account key (RFC 7523) for an access token,
// as they do at Google's token_uri.

const (
	// jwtBearerGrant is RFC 7523's grant type.
	jwtBearerGrant = "urn:ietf:params:oauth:grant-type:jwt-bearer"
	// accessTokenLife is how long an access token works, as Google's do.
	accessTokenLife = time.Hour
	// maxAssertionLife bounds exp - iat of a grant, as Google does.
	maxAssertionLife = time.Hour
	// clockSkew is how far an app server's clock may run ahead of ours.
	clockSkew = 5 * time.Minute
	// maxAssertion bounds the JWT: an RS256 signature and a few claims
	// take well under 2 KiB.
	maxAssertion = 8 << 10
	// accessTokenPrefix starts Tether's access tokens, with the version of
	// their form.
	accessTokenPrefix = "tether1."
)

// The scopes that allow sending, either of which a grant must ask for.
var sendScopes = []string{
	"https://www.googleapis.com/auth/firebase.messaging",
	"https://www.googleapis.com/auth/cloud-platform",
}

// googleTokenURIs are the token endpoints Google's libraries name as a
// grant's audience when they fix it rather than read token_uri (Node's
// firebase-admin): a grant for them is taken too, since only this
// server's keys can sign one it takes.
var googleTokenURIs = []string{"https://accounts.google.com/o/oauth2/token", "https://oauth2.googleapis.com/token"}

// errBadJWT is wrapped by what parseJWT refuses.
var errBadJWT = errors.New("malformed JWT")

// jwtHeader is the part of a JOSE header Tether reads.
type jwtHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

// grantClaims are the claims of a JWT bearer grant.
type grantClaims struct {
	Iss   string `json:"iss"`
	Aud   string `json:"aud"`
	Scope string `json:"scope"`
	Iat   int64  `json:"iat"`
	Exp   int64  `json:"exp"`
}

// jwt is a decoded JWT whose signature is still to be checked.
type jwt struct {
	header    jwtHeader
	claims    grantClaims
	signed    string // header.payload, what the signature covers
	signature []byte
}

// parseJWT decodes a compact JWS with an RS256 signature and a grant's
// claims. It checks the form only: the signature and the claims are the
// caller's to check.
func parseJWT(s string) (jwt, error) {
	if len(s) > maxAssertion {
		return jwt{}, fmt.Errorf("%w: over %d bytes", errBadJWT, maxAssertion)
	}
	var t jwt
	var err error
	if t.header, t.signed, t.signature, err = decodeJWS(s, &t.claims); err != nil {
		return jwt{}, fmt.Errorf("%w: %w", errBadJWT, err)
	}
	if t.header.Alg != "RS256" {
		return jwt{}, fmt.Errorf("%w: algorithm %.20q, want RS256", errBadJWT, t.header.Alg)
	}
	return t, nil
}

// decodeJWS splits a JWS in compact form (header.payload.signature, as a
// JWT is sent) and decodes its header, its claims into claims and its
// signature, which it leaves to the caller to check with the algorithm
// the caller expects. signed is what the signature covers.
func decodeJWS(s string, claims any) (header jwtHeader, signed string, signature []byte, err error) {
	parts := strings.Split(s, ".")
	if len(parts) != 3 {
		return jwtHeader{}, "", nil, fmt.Errorf("%d parts, want header.payload.signature", len(parts))
	}
	if err := decodeJWTPart(parts[0], &header); err != nil {
		return jwtHeader{}, "", nil, fmt.Errorf("header: %w", err)
	}
	if err := decodeJWTPart(parts[1], claims); err != nil {
		return jwtHeader{}, "", nil, fmt.Errorf("claims: %w", err)
	}
	signature, err = decodeBase64URL(parts[2])
	if err != nil || len(signature) == 0 {
		return jwtHeader{}, "", nil, errors.New("signature is not base64url")
	}
	return header, parts[0] + "." + parts[1], signature, nil
}

// decodeJWTPart decodes one base64url JSON part of a JWT into v.
func decodeJWTPart(part string, v any) error {
	raw, err := decodeBase64URL(part)
	if err != nil {
		return errors.New("not base64url")
	}
	if err := json.Unmarshal(raw, v); err != nil {
		return describeJSONError(err)
	}
	return nil
}

// decodeBase64URL decodes base64url with or without its padding: JWS
// leaves it out, and older Google libraries (python3-google-auth 1.x)
// keep it.
func decodeBase64URL(s string) ([]byte, error) {
	return base64.RawURLEncoding.DecodeString(strings.TrimRight(s, "="))
}

// oauthError is an error answer of RFC 6749, section 5.2.
type oauthError struct {
	Code        string `json:"error"`
	Description string `json:"error_description"`
}

func (e *oauthError) Error() string { return e.Code + ": " + e.Description }

func invalidGrant(format string, args ...any) *oauthError {
	return &oauthError{Code: "invalid_grant", Description: fmt.Sprintf(format, args...)}
}

// grantSender checks a JWT bearer grant and returns the sender and the
// service-account key that signed it. Its errors are *oauthError, or
// store errors.
func (s *Server) grantSender(ctx context.Context, assertion string, now time.Time) (store.Sender, store.ServiceKey, error) {
	t, err := parseJWT(assertion)
	if err != nil {
		return store.Sender{}, store.ServiceKey{}, invalidGrant("%v", err)
	}
	c := t.claims
	senderID, _, ok := strings.Cut(c.Iss, "@")
	if !ok || senderID == "" {
		return store.Sender{}, store.ServiceKey{}, invalidGrant("iss %.100q is not the client_email of a service account", c.Iss)
	}
	snd, err := s.store.Sender(ctx, senderID)
	if errors.Is(err, store.ErrNotFound) {
		return store.Sender{}, store.ServiceKey{}, invalidGrant("no service account %.100q", c.Iss)
	}
	if err != nil {
		return store.Sender{}, store.ServiceKey{}, err
	}
	// A JWT without a kid is tried with each of the account's keys.
	i := slices.IndexFunc(snd.ServiceKeys, func(k store.ServiceKey) bool {
		return k.Email == c.Iss && (t.header.Kid == "" || k.ID == t.header.Kid) && verifyRS256(k.PublicKey, t)
	})
	if i < 0 {
		return store.Sender{}, store.ServiceKey{}, invalidGrant("invalid JWT signature: no key of %.100q with ID %.60q signed it", c.Iss, t.header.Kid)
	}
	key := snd.ServiceKeys[i]
	iat, exp := time.Unix(c.Iat, 0), time.Unix(c.Exp, 0)
	switch {
	case c.Aud != key.TokenURI && !slices.Contains(googleTokenURIs, c.Aud):
		return store.Sender{}, store.ServiceKey{}, invalidGrant("aud %.200q is not this token endpoint, %s", c.Aud, key.TokenURI)
	case c.Iat == 0 || c.Exp == 0 || exp.Sub(iat) > maxAssertionLife || !exp.After(iat):
		return store.Sender{}, store.ServiceKey{}, invalidGrant("invalid JWT: exp must follow iat by at most %v", maxAssertionLife)
	case !now.Before(exp):
		return store.Sender{}, store.ServiceKey{}, invalidGrant("invalid JWT: it expired at %s", exp.UTC().Format(time.RFC3339))
	case iat.After(now.Add(clockSkew)):
		return store.Sender{}, store.ServiceKey{}, invalidGrant("invalid JWT: iat %s is in the future", iat.UTC().Format(time.RFC3339))
	}
	if !slices.ContainsFunc(strings.Fields(c.Scope), func(sc string) bool { return slices.Contains(sendScopes, sc) }) {
		return store.Sender{}, store.ServiceKey{}, &oauthError{Code: "invalid_scope", Description: "scope must include " + strings.Join(sendScopes, " or ")}
	}
	return snd, key, nil
}

// verifyRS256 checks t's signature with an RSA public key in PKIX DER.
func verifyRS256(publicKey []byte, t jwt) bool {
	pub, err := x509.ParsePKIXPublicKey(publicKey)
	rsaPub, ok := pub.(*rsa.PublicKey)
	if err != nil || !ok {
		return false
	}
	digest := sha256.Sum256([]byte(t.signed))
	return rsa.VerifyPKCS1v15(rsaPub, crypto.SHA256, digest[:], t.signature) == nil
}

// An access token is accessTokenPrefix, then the sender ID, the service
// key's ID and the expiry in Unix seconds, each followed by a dot, then
// an HMAC-SHA256 of all that under the key's token secret. Nothing is
// stored per token, so that any server of a cluster checks it, after a
// restart too, and revoking the key ends its tokens at once.

// mintAccessToken returns an access token for key of sender senderID,
// which works until expiry.
func mintAccessToken(senderID string, key store.ServiceKey, expiry time.Time) string {
	body := accessTokenPrefix + senderID + "." + key.ID + "." + strconv.FormatInt(expiry.Unix(), 10) + "."
	return body + base64.RawURLEncoding.EncodeToString(tokenMAC(key.TokenSecret, body))
}

func tokenMAC(secret []byte, body string) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(body))
	return m.Sum(nil)
}

// errBadAccessToken refuses a bearer token that is not a valid access
// token of a key the sender still has.
var errBadAccessToken = errors.New("invalid or expired access token")

// bearerSender returns the sender whose access token the request carries
// as Authorization: Bearer. Failures count against the client's address;
// its errors wrap errBadAccessToken or errAuthThrottled, or are the
// store's.
func (s *Server) bearerSender(r *http.Request) (store.Sender, error) {
	// The scheme's name is case-insensitive (RFC 9110, 11.1).
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	snd, err := s.checkAccessToken(r.Context(), strings.TrimSpace(token), ok && strings.EqualFold(scheme, "Bearer"))
	if !errors.Is(err, errBadAccessToken) {
		return snd, err
	}
	if s.authFailed(r.Context(), clientip.Key(s.clientAddr(r)).String(), "app server refused: bad access token") {
		return store.Sender{}, errAuthThrottled
	}
	return store.Sender{}, err
}

func (s *Server) checkAccessToken(ctx context.Context, token string, given bool) (store.Sender, error) {
	rest, ok := strings.CutPrefix(token, accessTokenPrefix)
	parts := strings.Split(rest, ".")
	if !given || !ok || len(parts) != 4 {
		return store.Sender{}, errBadAccessToken
	}
	exp, err := strconv.ParseInt(parts[2], 10, 64)
	if err != nil || !s.now().Before(time.Unix(exp, 0)) {
		return store.Sender{}, errBadAccessToken
	}
	snd, err := s.store.Sender(ctx, parts[0])
	if errors.Is(err, store.ErrNotFound) {
		return store.Sender{}, errBadAccessToken
	}
	if err != nil {
		return store.Sender{}, fmt.Errorf("read sender of an access token: %w", err)
	}
	key, ok := snd.ServiceKey(parts[1])
	mac, err := base64.RawURLEncoding.DecodeString(parts[3])
	if !ok || err != nil || !hmac.Equal(mac, tokenMAC(key.TokenSecret, strings.TrimSuffix(token, parts[3]))) {
		return store.Sender{}, errBadAccessToken
	}
	return snd, nil
}

// tokenResponse is the answer of a successful grant.
type tokenResponse struct {
	AccessToken string `json:"access_token"`
	ExpiresIn   int64  `json:"expires_in"`
	TokenType   string `json:"token_type"`
}

// handleToken serves POST /token, the token_uri of Tether's service
// accounts.
func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	// No cache of tokens anywhere along the way (RFC 6749, 5.1).
	w.Header().Set("Cache-Control", "no-store")
	r.Body = http.MaxBytesReader(w, r.Body, maxSendBody)
	if err := r.ParseForm(); err != nil {
		writeJSON(w, http.StatusBadRequest, oauthError{Code: "invalid_request", Description: "the body must be form-encoded: " + err.Error()})
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != jwtBearerGrant {
		writeJSON(w, http.StatusBadRequest, oauthError{Code: "unsupported_grant_type", Description: fmt.Sprintf("grant_type %.100q, want %s", gt, jwtBearerGrant)})
		return
	}
	now := s.now()
	snd, key, err := s.grantSender(r.Context(), r.PostForm.Get("assertion"), now)
	var refused *oauthError
	switch {
	case errors.As(err, &refused):
		if s.authFailed(r.Context(), clientip.Key(s.clientAddr(r)).String(), "app server refused: bad token grant", "err", refused.Description) {
			w.Header().Set("Retry-After", "60")
			writeJSON(w, http.StatusTooManyRequests, oauthError{Code: "slow_down", Description: errAuthThrottled.Error()})
			return
		}
		writeJSON(w, http.StatusBadRequest, refused)
		return
	case err != nil:
		s.log.Error("check token grant", "err", err)
		_, status := storeFailure(err)
		setRetryAfter(w, status)
		writeJSON(w, status, oauthError{Code: "temporarily_unavailable", Description: "cannot read the sender store"})
		return
	}
	s.log.Debug("access token issued", "sender", snd.ID, "service_key", key.ID)
	writeJSON(w, http.StatusOK, tokenResponse{
		AccessToken: mintAccessToken(snd.ID, key, now.Add(accessTokenLife)),
		ExpiresIn:   int64(accessTokenLife / time.Second),
		TokenType:   "Bearer",
	})
}
