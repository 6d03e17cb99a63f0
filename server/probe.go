// SPDX-License-Identifier: Apache-2.0

package server

import (
	"log/slog"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"tether/wire"
)

// probe is a connection on which an agent measures how long the network
// keeps an idle connection, apart from its session so that a probe that
// dies delays no message. The server answers its pings and closes it after
// its heartbeat plus the grace of silence; it sends nothing on it after
// the welcome, and any frame from the agent ends it. A probe is not the
// device's session: it neither replaces one nor gets messages or notices.
type probe struct {
	srv    *Server
	conn   *websocket.Conn
	device string
	log    *slog.Logger
	once   sync.Once
}

// replaced closes the probe that a newer one of its device replaced.
func (p *probe) replaced() {
	p.log.Debug("probe replaced by a newer one")
	p.close(closeReplaced, "replaced by a newer probe")
}

// close ends the probe once: a close frame unless code is 0, then the
// connection.
func (p *probe) close(code int, text string) {
	p.once.Do(func() {
		if code != 0 {
			p.srv.closeConn(p.conn, code, text)
		}
		p.conn.Close()
	})
}

// runProbe serves an accepted probe until it ends, in the handler's
// goroutine, which is also its only writer.
func (s *Server) runProbe(conn *websocket.Conn, acc accepted) {
	p := &probe{srv: s, conn: conn, device: acc.device.ID, log: acc.log.With("probe", true)}
	if !s.hub.attachProbe(p) {
		s.closeConn(conn, websocket.CloseGoingAway, "server shutting down")
		return
	}
	defer s.hub.detachProbe(p)
	defer p.close(0, "")
	s.answerPings(conn, func() time.Duration { return acc.timeout })
	conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
	if err := conn.WriteMessage(websocket.TextMessage, acc.welcome); err != nil {
		p.log.Debug("write probe welcome", "err", err)
		return
	}
	p.log.Debug("probe open", "heartbeat", acc.timeout-s.cfg.HeartbeatGrace)
	conn.SetReadDeadline(time.Now().Add(acc.timeout))
	_, data, err := conn.ReadMessage()
	if err != nil {
		p.log.Debug("probe closed", "why", err)
		return
	}
	ref := ""
	if f, err := wire.Decode(data); err == nil {
		ref = f.Ref
	}
	p.log.Info("probe closed: the agent sent a frame on it")
	if frame, err := wire.Encode(ref, wire.Error{Code: wire.CodeInvalid, Message: "a probe carries no frames after the welcome, only pings"}); err == nil {
		conn.SetWriteDeadline(time.Now().Add(s.cfg.WriteTimeout))
		conn.WriteMessage(websocket.TextMessage, frame)
	}
	p.close(websocket.CloseProtocolError, "frame on a probe")
}
