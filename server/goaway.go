// SPDX-License-Identifier: Apache-2.0

package server

import (
	mathrand "math/rand/v2"
	"time"

	"github.com/gorilla/websocket"

	"tether/wire"
)

// reconnectRetry is the wait asked of a device that opened more sessions
// than Config.ReconnectLimit allows: the window of the limit.
const reconnectRetry = time.Minute

// maxRetryAfter is the longest retry_after the wire carries, in seconds.
const maxRetryAfter = 24 * 3600

// spreadSeconds is d spread at random over [d/2, 3d/2), in whole seconds
// within the wire's range: devices refused together come back apart.
func spreadSeconds(d time.Duration) int {
	half := int64(d / 2)
	if half <= 0 {
		return 0
	}
	return retrySeconds(time.Duration(half + mathrand.Int64N(2*half)))
}

// retrySeconds rounds d up to whole seconds within the wire's range.
func retrySeconds(d time.Duration) int {
	return int(min((d+time.Second-1)/time.Second, maxRetryAfter))
}

// storeGoAway is the goaway of a device refused because the store is
// unavailable.
func (s *Server) storeGoAway() *wire.GoAway {
	return &wire.GoAway{RetryAfter: spreadSeconds(s.cfg.StoreRetryAfter), Reason: "store unavailable"}
}

// reconnectGoAway is the goaway of a device that reconnects too often.
func (s *Server) reconnectGoAway() *wire.GoAway {
	return &wire.GoAway{RetryAfter: spreadSeconds(reconnectRetry), Reason: "reconnecting too often"}
}

// shutdownGoAway is the goaway of a device whose session ends because the
// server shuts down: a random wait up to Config.ShutdownSpread, so that
// the fleet reconnects over that time rather than in one instant.
// On a cluster it names another node to come back to.
func (s *Server) shutdownGoAway() wire.GoAway {
	g := wire.GoAway{RetryAfter: mathrand.IntN(retrySeconds(s.cfg.ShutdownSpread) + 1), Reason: "server shutting down"}
	if s.node != nil {
		g.Server = s.node.cl.OtherPublicURL()
	}
	return g
}

// goAwayConn sends a goaway and a close frame on a connection that has no
// writer goroutine (yet); the caller closes the connection.
func (s *Server) goAwayConn(conn *websocket.Conn, g wire.GoAway, code int, text string) {
	if frame, err := wire.Encode("", g); err == nil {
		conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		conn.WriteMessage(websocket.TextMessage, frame)
	}
	s.closeConn(conn, code, text)
}
