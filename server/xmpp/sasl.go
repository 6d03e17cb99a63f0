// SPDX-License-Identifier: Apache-2.0

package xmpp

import (
	"encoding/base64"
	"errors"
	"strings"
)

// plain is a SASL PLAIN message (RFC 4616).
type plain struct {
	authzid, authcid, password string
}

// parsePlain decodes the base64 of authzid NUL authcid NUL password. Its
// errors never quote the message, which holds a password.
func parsePlain(b64 string) (plain, error) {
	if b64 == "=" { // RFC 6120 6.4.2: an empty response
		return plain{}, errors.New("empty PLAIN message")
	}
	raw, err := base64.StdEncoding.Strict().DecodeString(b64)
	if err != nil {
		return plain{}, errors.New("PLAIN message is not base64")
	}
	fields := strings.Split(string(raw), "\x00")
	if len(fields) != 3 {
		return plain{}, errors.New("PLAIN message does not have three NUL-separated fields")
	}
	p := plain{authzid: fields[0], authcid: fields[1], password: fields[2]}
	if p.authcid == "" || p.password == "" {
		return plain{}, errors.New("PLAIN message without user or password")
	}
	return p, nil
}
