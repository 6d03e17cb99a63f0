// SPDX-License-Identifier: Apache-2.0

package server

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
)

// newSecret returns n random bytes, base64url without padding.
func newSecret(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return base64.RawURLEncoding.EncodeToString(b)
}

// hashSecret is how server keys and device secrets are stored. The secrets
// are 256 random bits, so a fast hash is enough: there is nothing to guess.
func hashSecret(secret string) []byte {
	h := sha256.Sum256([]byte(secret))
	return h[:]
}

// sameHash compares two hashes in constant time.
func sameHash(a, b []byte) bool { return subtle.ConstantTimeCompare(a, b) == 1 }

// sameSecret compares two secrets in time independent of their content and
// length.
func sameSecret(a, b string) bool { return sameHash(hashSecret(a), hashSecret(b)) }
