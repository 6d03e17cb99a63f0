// SPDX-License-Identifier: Apache-2.0

// Package xmpp is the XMPP stream layer of Tether's endpoint for app servers
// written for GCM's Cloud Connection Server (CCS): Smack, slixmpp,
// @xmpp/client and the like connect to it unchanged.
//
// It speaks the part of RFC 6120 those clients use, over direct TLS (as CCS
// on port 5235) or over plain TCP behind a TLS-terminating proxy; it never
// offers STARTTLS. A client opens a stream to one of Config.Domains,
// authenticates with SASL PLAIN as SENDER_ID@DOMAIN and its server key
// (checked by Config.Authenticate), restarts the stream and binds a
// resource. From then on the connection is a Conn: the text inside
// <gcm xmlns="google:mobile:data"> of each message stanza from the client
// goes to the connection's Handler, and Conn.Send wraps payloads the same way
// for the client. Pings (XEP-0199) answered by the client keep a quiet
// stream alive and find dead ones; other requests get service-unavailable.
// What a client sends that is not XMPP ends its own stream with a stream
// error, never anything else.
//
// The package knows nothing of GCM: the JSON payloads, acks and nacks,
// routing, flow control and the store are the caller's (package server).
// Payloads are carried exactly, as opaque text.
package xmpp
