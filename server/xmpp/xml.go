// SPDX-License-Identifier: Apache-2.0

package xmpp

import (
	"crypto/rand"
	"encoding/xml"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"
)

// element is a stanza as read, with only what this package looks at.
type element struct {
	name     xml.Name
	attrs    []xml.Attr
	children []*element
	text     []byte // the character data directly inside
}

// is says whether e is local in space; stanzas of a stream that did not
// declare jabber:client count as jabber:client.
func (e *element) is(space, local string) bool {
	return e.name.Local == local && (e.name.Space == space || space == nsClient && e.name.Space == "")
}

// attr is the value of e's unqualified attribute local, or "".
func (e *element) attr(local string) string {
	for _, a := range e.attrs {
		if a.Name.Space == "" && a.Name.Local == local {
			return a.Value
		}
	}
	return ""
}

func (e *element) firstChild() *element {
	if len(e.children) == 0 {
		return nil
	}
	return e.children[0]
}

func (e *element) child(space, local string) *element {
	for _, c := range e.children {
		if c.is(space, local) {
			return c
		}
	}
	return nil
}

// What the server says.
const (
	streamEnd     = `</stream:stream>`
	featuresSASL  = `<stream:features><mechanisms xmlns="` + nsSASL + `"><mechanism>PLAIN</mechanism></mechanisms></stream:features>`
	featuresBind  = `<stream:features><bind xmlns="` + nsBind + `"/><session xmlns="` + nsSession + `"><optional/></session></stream:features>`
	saslSuccess   = `<success xmlns="` + nsSASL + `"/>`
	saslChallenge = `<challenge xmlns="` + nsSASL + `"/>`
	nsStanzas     = "urn:ietf:params:xml:ns:xmpp-stanzas"
	nsStreamErrs  = "urn:ietf:params:xml:ns:xmpp-streams"
)

func streamHeader(id, domain string) string {
	return `<?xml version='1.0'?><stream:stream xmlns="` + nsClient + `" xmlns:stream="` + nsStreams +
		`" id="` + escapeString(id) + `" from="` + escapeString(domain) + `" version="1.0" xml:lang="en">`
}

func saslFailure(cond string) string {
	return `<failure xmlns="` + nsSASL + `"><` + cond + `/></failure>`
}

// idAttr is ` id="id"`, or nothing for a stanza that had none.
func idAttr(id string) string {
	if id == "" {
		return ""
	}
	return ` id="` + escapeString(id) + `"`
}

func iqResult(id, payload string) string {
	if payload == "" {
		return `<iq type="result"` + idAttr(id) + `/>`
	}
	return `<iq type="result"` + idAttr(id) + `>` + payload + `</iq>`
}

func stanzaError(typ, cond string) string {
	return `<error type="` + typ + `"><` + cond + ` xmlns="` + nsStanzas + `"/></error>`
}

func iqError(id, typ, cond string) string {
	return `<iq type="error"` + idAttr(id) + `>` + stanzaError(typ, cond) + `</iq>`
}

func messageError(id, typ, cond, text string) string {
	return `<message type="error"` + idAttr(id) + `><error type="` + typ + `"><` + cond + ` xmlns="` + nsStanzas +
		`"/><text xmlns="` + nsStanzas + `">` + escapeString(text) + `</text></error></message>`
}

func pingRequest(id, from string) string {
	return `<iq type="get" id="` + escapeString(id) + `" from="` + escapeString(from) + `"><ping xmlns="` + nsPing + `"/></iq>`
}

// appendMessage appends the message stanza with id n that carries payload.
func appendMessage(b []byte, n uint64, payload []byte) ([]byte, error) {
	b = append(b, `<message id="m`...)
	b = strconv.AppendUint(b, n, 10)
	b = append(b, `"><gcm xmlns="`+nsGCM+`">`...)
	b, err := appendEscaped(b, payload, false)
	if err != nil {
		return nil, err
	}
	return append(b, `</gcm></message>`...), nil
}

// appendEscaped appends s as character data or, with attr, as an
// attribute value in double quotes, to read back as exactly s: a carriage
// return is escaped since XML reads a bare one as a newline, and in an
// attribute tabs and newlines too, which would read as spaces.
func appendEscaped[T string | []byte](b []byte, s T, attr bool) ([]byte, error) {
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			switch {
			case c == '&':
				b = append(b, "&amp;"...)
			case c == '<':
				b = append(b, "&lt;"...)
			case c == '>': // as in ]]>
				b = append(b, "&gt;"...)
			case c == '\r':
				b = append(b, "&#xD;"...)
			case attr && c == '"':
				b = append(b, "&quot;"...)
			case attr && c == '\n':
				b = append(b, "&#xA;"...)
			case attr && c == '\t':
				b = append(b, "&#x9;"...)
			case c < 0x20 && c != '\t' && c != '\n':
				return nil, fmt.Errorf("%w: control character %#x at byte %d", ErrInvalidPayload, c, i)
			default:
				b = append(b, c)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(string(s[i:min(len(s), i+utf8.UTFMax)]))
		if r == utf8.RuneError && size == 1 {
			return nil, fmt.Errorf("%w: invalid UTF-8 at byte %d", ErrInvalidPayload, i)
		}
		if r == 0xFFFE || r == 0xFFFF {
			return nil, fmt.Errorf("%w: %U at byte %d", ErrInvalidPayload, r, i)
		}
		b = append(b, s[i:i+size]...)
		i += size
	}
	return b, nil
}

// escapeString escapes, for an attribute or character data, what the
// server echoes or makes itself, which the decoder or the server has
// already made valid XML text.
func escapeString(s string) string {
	b, err := appendEscaped(make([]byte, 0, len(s)), s, true)
	if err != nil {
		return "\uFFFD"
	}
	return string(b)
}

// streamError ends a stream (RFC 6120 4.9).
type streamError struct {
	cond  string // defined condition, e.g. "not-well-formed"
	text  string // for the client
	cause error
	// quoted: text quotes what the client sent, which stays out of logs.
	quoted bool
}

// Error leaves out text that quotes the client, so that it can be logged.
func (e *streamError) Error() string {
	msg := "xmpp: stream error " + e.cond
	var se *xml.SyntaxError
	switch {
	case errors.As(e.cause, &se):
		msg += ": XML syntax error on line " + strconv.Itoa(se.Line)
	case !e.quoted && e.text != "":
		msg += ": " + e.text
	}
	return msg
}

func (e *streamError) Unwrap() error { return e.cause }

// streamErrorBytes is what ends the stream with e: after our stream header
// if the client has not had it yet (RFC 6120 4.9.1.2).
func (st *stream) streamErrorBytes(e *streamError) []byte {
	var b []byte
	if !st.headerSent {
		b = append(b, streamHeader(rand.Text(), st.domain)...)
	}
	b = append(b, `<stream:error><`+e.cond+` xmlns="`+nsStreamErrs+`"/>`...)
	if e.text != "" {
		b = append(b, `<text xmlns="`+nsStreamErrs+`">`...)
		b = append(b, escapeString(e.text)...)
		b = append(b, `</text>`...)
	}
	return append(b, `</stream:error>`+streamEnd...)
}

func (st *stream) logStreamError(e *streamError) {
	if st.bound {
		st.log.Info("xmpp: stream error", "err", e)
	} else {
		st.log.Debug("xmpp: stream error before binding", "err", e)
	}
}
