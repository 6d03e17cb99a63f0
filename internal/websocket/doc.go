// SPDX-License-Identifier: Apache-2.0

// Package websocket is the client side of the WebSocket protocol (RFC 6455)
// that the agent needs to reach its connection server, and nothing more:
// no server, no compression, no cookies. It reaches a server through an
// HTTP proxy with CONNECT (Dialer.Proxy), the one kind of proxy that
// carries TLS end to end.
//
// It exists for the size of the device's binary. A client built on
// net/http (as gorilla/websocket is) links the HTTP client, HTTP/2, MIME
// and IDNA tables, about 750 KiB on ARMv7; this one links crypto/tls and
// a few hundred lines. Its API is the subset of gorilla/websocket's that
// the agent uses, with the same meaning, so that the two stay
// interchangeable and the connection server (which serves with
// gorilla/websocket) is tested against it.
//
// A Conn supports one concurrent reader and any number of writers: every
// write takes the connection's write lock.
package websocket
