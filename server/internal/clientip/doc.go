// SPDX-License-Identifier: Apache-2.0

// Package clientip tells where a connection or an HTTP request really comes
// from when tether-server runs behind proxies or load balancers that the
// operator trusts (--trusted-proxy CIDR). Tether's per-client limits — the
// check-in rates, the session and connection caps, the login throttling —
// key on that address: behind a TLS-terminating proxy every client would
// otherwise share the proxy's one address, and one noisy client would use up
// the limit of all.
//
// It has three parts:
//
//   - Listener wraps a net.Listener. A connection whose peer is inside a
//     trusted prefix may open with a PROXY protocol header, version 1 (text)
//     or 2 (binary), as HAProxy, AWS NLB and nginx's stream module send it
//     in front of TCP they pass through; its RemoteAddr is then the client
//     the header names. Put it under crypto/tls (tls.NewListener) and under
//     both the HTTP and the XMPP listeners.
//   - FromRequest reads X-Forwarded-For, the header an HTTP reverse proxy
//     adds, from the right, past the trusted proxies, to the first address
//     that is not one of them.
//   - Counter counts what each client holds open (connections, sessions) and
//     refuses one over a cap.
//
// # What it is not
//
// It does not authenticate anyone. Trust comes only from the configured
// prefixes: a PROXY header or an X-Forwarded-For entry means something only
// when the peer that sent it is inside one of them; from any other peer a
// PROXY header is just the first bytes of the stream (TLS or HTTP refuses
// them) and X-Forwarded-For is ignored. Trust a prefix only if everything in
// it is a proxy of yours that overwrites or appends to what clients send:
// whoever can connect from a trusted address can claim any client address.
// A trusted proxy needs no PROXY header: a connection from one without a
// header is served as it is, with the proxy's own address.
//
// # The PROXY header
//
// The header is read lazily, by the first Read or RemoteAddr on the
// connection, so that Accept never waits for one client's bytes: net/http
// and package xmpp call both from the connection's own goroutine. Code that
// runs in the accepting goroutine (http.Server's ConnState and ConnContext
// hooks) must not call RemoteAddr, or one slow trusted peer holds up every
// accept. Before the first byte arrives nothing is decided; once the bytes
// begin a PROXY signature the whole header must arrive within
// Config.HeaderTimeout (DefaultHeaderTimeout, 5 s) and parse, or the
// connection fails with ErrHeaderTimeout or ErrMalformedHeader and is
// closed. If nothing at all arrives within the timeout, the connection goes
// on without a header under the caller's own deadlines. Bytes that do not
// begin a signature are handed to the reader untouched. A LOCAL command
// (v2), UNKNOWN (v1) or an address family other than TCP over IPv4 or IPv6
// keeps the proxy's address. Type-length-value extensions (v2) are skipped.
//
// # Client addresses and keys
//
// Addr turns a net.Addr into a netip.Addr without port, zone or IPv4-mapped
// IPv6 form, so that "::ffff:192.0.2.1" and "192.0.2.1" are one client.
// Key is what a per-client limit should count under: the address itself
// for IPv4, but the /64 for IPv6. An IPv6 host is normally given a whole
// /64 and can take any address in it, so a cap per IPv6 address would cap
// nothing; counting the /64 treats an IPv6 network like an IPv4 address
// behind NAT, which is what a home or a site behind one IPv4 address
// already gets. Counter and Listener's Config.Conns count by Key; the
// server's other per-client limits should too.
package clientip
