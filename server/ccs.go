// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"tether/server/internal/clientip"
	"tether/server/store"
	"tether/server/xmpp"
)

// The CCS endpoint: GCM's Cloud Connection Server semantics on the XMPP
// streams of package xmpp. An app server sends downstream messages as
// stanzas and gets an ack or a nack for each; upstream messages and
// delivery receipts of a sender go to one of its connections and are sent
// again until the app server acks them.

// CCS limits, as on GCM.
const (
	// ccsWindow bounds the downstream messages of one connection that are
	// not yet answered (the reader stops reading beyond it), and the
	// upstream messages sent on one connection and not yet acked.
	ccsWindow = 100
	// maxCCSConns bounds the connections of one sender.
	maxCCSConns = 1000
)

// ccsDomains are accepted after the "@" of the SASL user: GCM's and FCM's.
var ccsDomains = []string{"gcm.googleapis.com", "fcm.googleapis.com"}

// CCS nack codes.
const (
	nackBadRegistration    = "BAD_REGISTRATION"
	nackDeviceUnregistered = "DEVICE_UNREGISTERED"
	nackInvalidJSON        = "INVALID_JSON"
	nackUnavailable        = "SERVICE_UNAVAILABLE"
	nackInternal           = "INTERNAL_SERVER_ERROR"
	nackDeviceRate         = "DEVICE_MESSAGE_RATE_EXCEEDED"
	nackTopicsRate         = "TOPICS_MESSAGE_RATE_EXCEEDED"
	nackBadAck             = "BAD_ACK"
	nackDraining           = "CONNECTION_DRAINING"
)

// errNoCCSConn: the sender has no connection that can take a message now.
var errNoCCSConn = errors.New("no XMPP connection of the sender can take the message")

// ccs is the endpoint's GCM side: the connections by sender, and the
// upstream messages waiting for acks.
type ccs struct {
	srv        *Server
	log        *slog.Logger
	xs         *xmpp.Server
	ackTimeout time.Duration

	mu    sync.Mutex
	conns map[string][]*ccsConn // by sender ID
	// waiting holds the upstream messages sent and not yet acked, by
	// sender and message ID; IDs chosen by apps on different devices can
	// be the same, so a key holds a list.
	waiting  map[ccsKey][]*upWait
	shutdown bool // no more connections: the server is stopping
	wg       sync.WaitGroup
}

type ccsKey struct{ sender, id string }

// upWait is one upstream message sent on a connection, until its ack.
type upWait struct {
	conn  *ccsConn
	from  string // the message's "from", which the ack names in "to"
	acked chan struct{}
}

func newCCS(s *Server) (*ccs, error) {
	c := &ccs{
		srv: s, log: s.log.With("part", "xmpp"), ackTimeout: s.cfg.XMPPAckTimeout,
		conns: make(map[string][]*ccsConn), waiting: make(map[ccsKey][]*upWait),
	}
	var tlsConfig = s.xmppTLS
	if s.cfg.XMPPPlaintext {
		tlsConfig = nil
	}
	domains := ccsDomains
	if s.cfg.XMPPDomain != "" {
		domains = append([]string{s.cfg.XMPPDomain}, ccsDomains...)
	}
	xs, err := xmpp.New(xmpp.Config{
		TLS: tlsConfig, Domains: domains, Logger: c.log,
		Authenticate: c.authenticate, Open: c.open,
	})
	if err != nil {
		return nil, err
	}
	c.xs = xs
	return c, nil
}

// authenticate checks a sender ID and server key, as the HTTP API does.
func (c *ccs) authenticate(ctx context.Context, remote net.Addr, user, _, password string) error {
	_, err := c.srv.checkKey(ctx, clientip.Key(clientip.Addr(remote)).String(), user, password)
	switch {
	case errors.Is(err, errUnknownKey):
		return xmpp.ErrNotAuthorized
	case errors.Is(err, errAuthThrottled):
		return xmpp.ErrTryLater
	}
	return err
}

// open starts serving an authenticated connection, or refuses it (a nil
// Handler) when its sender has as many as it may.
func (c *ccs) open(xc *xmpp.Conn) xmpp.Handler {
	ctx, cancel := context.WithCancel(context.Background())
	cc := &ccsConn{
		ccs: c, xc: xc, sender: xc.User(), ctx: ctx, cancel: cancel,
		log:   c.log.With("sender", xc.User(), "remote", xc.RemoteAddr().String()),
		queue: make(chan ccsDown, ccsWindow), slots: make(chan struct{}, ccsWindow),
		done: make(chan struct{}),
	}
	c.mu.Lock()
	if n := len(c.conns[cc.sender]); n >= c.srv.cfg.xmppMaxConns {
		c.mu.Unlock()
		cancel()
		cc.log.Warn("xmpp connection refused: the sender has as many as it may", "connections", n)
		return nil
	}
	if c.shutdown {
		c.mu.Unlock()
		cc.draining = true
		c.wg.Go(func() { cc.sendControl(); xc.Close() })
		return cc
	}
	c.conns[cc.sender] = append(c.conns[cc.sender], cc)
	c.wg.Go(cc.answerLoop)
	c.mu.Unlock()
	cc.log.Info("xmpp connection open", "jid", xc.JID())
	if n := c.srv.node; n != nil {
		// Every node's waiting messages of the sender come here now.
		if err := n.senders.Serve(cc.sender); err != nil {
			cc.log.Error("xmpp connection not announced to the cluster", "err", err)
		}
	}
	c.srv.up.routeAppeared(cc.sender)
	return cc
}

// connCount is the number of connections open, draining or not.
func (c *ccs) connCount() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, conns := range c.conns {
		n += len(conns)
	}
	return n
}

// connected reports whether sender has a connection that takes upstream
// messages.
func (c *ccs) connected(sender string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cc := range c.conns[sender] {
		if !cc.draining {
			return true
		}
	}
	return false
}

// pick chooses the connection of sender with the fewest upstream messages
// waiting for acks, and counts one more on it.
func (c *ccs) pick(sender string) (*ccsConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var best *ccsConn
	for _, cc := range c.conns[sender] {
		if !cc.draining && cc.unacked < ccsWindow && (best == nil || cc.unacked < best.unacked) {
			best = cc
		}
	}
	if best == nil {
		return nil, errNoCCSConn
	}
	best.unacked++
	return best, nil
}

// deliver sends an upstream message or receipt on one of the sender's
// connections and waits for the app server's ack.
func (c *ccs) deliver(ctx context.Context, u store.Upstream) error {
	cc, err := c.pick(u.Sender)
	if err != nil {
		return err
	}
	body := upstreamBody(u)
	payload, err := json.Marshal(body)
	if err != nil {
		c.settled(cc, nil, ccsKey{})
		return fmt.Errorf("encode upstream stanza: %w", err)
	}
	w := &upWait{conn: cc, from: body.From, acked: make(chan struct{})}
	key := ccsKey{u.Sender, u.ID}
	c.mu.Lock()
	c.waiting[key] = append(c.waiting[key], w)
	c.mu.Unlock()
	defer c.settled(cc, w, key)

	if err := cc.xc.Send(ctx, payload); err != nil {
		return fmt.Errorf("send on xmpp connection %s: %w", cc.xc.JID(), err)
	}
	timer := time.NewTimer(c.ackTimeout)
	defer timer.Stop()
	select {
	case <-w.acked:
		return nil
	case <-cc.done:
		return fmt.Errorf("xmpp connection %s closed before the app server acked", cc.xc.JID())
	case <-timer.C:
		return fmt.Errorf("no ack from the app server on %s within %v", cc.xc.JID(), c.ackTimeout)
	case <-ctx.Done():
		return ctx.Err()
	}
}

// settled forgets w and frees its place on cc.
func (c *ccs) settled(cc *ccsConn, w *upWait, key ccsKey) {
	c.mu.Lock()
	defer c.mu.Unlock()
	cc.unacked--
	if w == nil {
		return
	}
	ws := c.waiting[key]
	for i, x := range ws {
		if x == w {
			ws = append(ws[:i], ws[i+1:]...)
			break
		}
	}
	if len(ws) == 0 {
		delete(c.waiting, key)
	} else {
		c.waiting[key] = ws
	}
	cc.signalIfIdle()
}

// ack takes an app server's ack of an upstream message: it settles the
// message it names, on whichever of the sender's connections it was sent.
func (c *ccs) ack(sender, to, id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	ws := c.waiting[ccsKey{sender, id}]
	if len(ws) == 0 {
		return false
	}
	w := ws[0]
	for _, x := range ws {
		if x.from == to {
			w = x
			break
		}
	}
	select {
	case <-w.acked:
	default:
		close(w.acked)
	}
	return true
}

// closed forgets a connection that ended.
func (c *ccs) closed(cc *ccsConn) {
	c.mu.Lock()
	defer c.mu.Unlock()
	conns := c.conns[cc.sender]
	for i, x := range conns {
		if x == cc {
			conns = append(conns[:i], conns[i+1:]...)
			break
		}
	}
	if len(conns) == 0 {
		delete(c.conns, cc.sender)
		if n := c.srv.node; n != nil {
			n.senders.Stop(cc.sender)
		}
	} else {
		c.conns[cc.sender] = conns
	}
}

// drain asks every connection to go: each gets a CONNECTION_DRAINING
// control message, takes no new messages either way, and is closed once
// the app server has answered what is outstanding on it, or after wait.
// With stopping set no new connection is served either.
func (c *ccs) drain(wait time.Duration, stopping bool) int {
	c.mu.Lock()
	c.shutdown = c.shutdown || stopping
	var all []*ccsConn
	for _, conns := range c.conns {
		for _, cc := range conns {
			if !cc.draining {
				cc.draining = true
				all = append(all, cc)
			}
		}
	}
	c.mu.Unlock()
	var wg sync.WaitGroup
	for _, cc := range all {
		wg.Go(func() { cc.drain(wait) })
	}
	wg.Wait()
	return len(all)
}

// serve runs the XMPP listener until ctx ends, then waits for every
// connection's goroutines.
func (c *ccs) serve(ctx context.Context, ln net.Listener) error {
	err := c.xs.Serve(ctx, ln)
	c.wg.Wait()
	return err
}

// ccsDown is one downstream message read from a connection.
type ccsDown struct {
	id  string // the app server's message_id
	to  string
	req sendRequest
}

// ccsConn is one app server connection.
type ccsConn struct {
	ccs    *ccs
	xc     *xmpp.Conn
	sender string
	log    *slog.Logger
	ctx    context.Context // ends when the connection does
	cancel context.CancelFunc

	// queue carries valid downstream messages from the reader to the
	// answer loop; slots holds a token for each message read and not yet
	// answered, so that the reader stops at ccsWindow.
	queue chan ccsDown
	slots chan struct{}
	done  chan struct{} // closed when the connection has ended

	// Guarded by ccs.mu.
	draining bool
	unacked  int           // upstream messages sent here, not yet acked
	idle     chan struct{} // set while draining; closed once nothing is outstanding
}

// signalIfIdle closes idle once a draining connection has nothing
// outstanding either way. The caller holds ccs.mu.
func (cc *ccsConn) signalIfIdle() {
	if !cc.draining || cc.idle == nil || cc.unacked > 0 || len(cc.slots) > 0 {
		return
	}
	select {
	case <-cc.idle:
	default:
		close(cc.idle)
	}
}

// ccsHead is what tells the kind of a stanza from an app server.
type ccsHead struct {
	MessageType     *string         `json:"message_type"`
	MessageID       json.RawMessage `json:"message_id"`
	To              json.RawMessage `json:"to"`
	RegistrationIDs json.RawMessage `json:"registration_ids"`
}

// Message handles one stanza from the app server, in the reader.
func (cc *ccsConn) Message(payload []byte) {
	var head ccsHead
	if err := json.Unmarshal(payload, &head); err != nil {
		cc.nack("", "", nackInvalidJSON, describeJSONError(err).Error())
		return
	}
	id, idOK := jsonString(head.MessageID)
	to, _ := jsonString(head.To)
	if head.MessageType != nil {
		switch *head.MessageType {
		case "ack":
			switch {
			case !idOK || id == "":
				cc.nack(id, to, nackBadAck, `an ack needs the "message_id" of the message it acknowledges`)
			case !cc.ccs.ack(cc.sender, to, id):
				cc.log.Debug("ack of no message waiting for one", "message_id", id)
			}
		case "nack":
			cc.log.Warn("app server refused an upstream message; it is not sent again on this connection before its next attempt", "message_id", id)
		default:
			cc.nack(id, to, nackInvalidJSON, fmt.Sprintf(`"message_type" %.40q is not one an app server sends: "ack", or none for a downstream message`, *head.MessageType))
		}
		return
	}
	switch {
	case !idOK || id == "":
		cc.nack(id, to, nackInvalidJSON, `"message_id" is required: a unique string that the ack or nack will carry`)
		return
	case len(head.RegistrationIDs) > 0 && string(head.RegistrationIDs) != "null":
		cc.nack(id, to, nackInvalidJSON, `"registration_ids" is not taken over XMPP: send one message per token, with "to"`)
		return
	}
	req, err := decodeJSONSend(payload)
	if err != nil {
		cc.nack(id, to, nackInvalidJSON, err.Error())
		return
	}
	req.originID = id
	select {
	case cc.slots <- struct{}{}:
	case <-cc.ctx.Done():
		return
	}
	cc.ccs.mu.Lock()
	draining := cc.draining
	cc.ccs.mu.Unlock()
	if draining {
		<-cc.slots
		cc.nack(id, to, nackDraining, "the connection is draining: send on a new connection")
		return
	}
	cc.queue <- ccsDown{id: id, to: to, req: req}
}

// jsonString decodes a JSON string; ok is false for anything else.
func jsonString(raw json.RawMessage) (s string, ok bool) {
	if len(raw) == 0 || raw[0] != '"' {
		return "", false
	}
	return s, json.Unmarshal(raw, &s) == nil
}

// Closed ends the connection's goroutines and forgets it.
func (cc *ccsConn) Closed(err error) {
	cc.ccs.closed(cc)
	cc.cancel()
	close(cc.done)
	cc.log.Info("xmpp connection closed", "why", err)
}

// answerLoop stores the downstream messages the reader queued, as many as
// are waiting in one store transaction, and answers each.
func (cc *ccsConn) answerLoop() {
	batch := make([]ccsDown, 0, ccsWindow)
	for {
		batch = batch[:0]
		select {
		case d := <-cc.queue:
			batch = append(batch, d)
		case <-cc.done:
			return
		}
	more:
		for len(batch) < ccsWindow {
			select {
			case d := <-cc.queue:
				batch = append(batch, d)
			default:
				break more
			}
		}
		cc.store(batch)
	}
}

// store sends a batch of downstream messages and answers each.
func (cc *ccsConn) store(batch []ccsDown) {
	if f := cc.ccs.srv.cfg.ccsBatch; f != nil {
		f(len(batch))
	}
	// What was read is stored even if the connection ends meanwhile.
	ctx := context.WithoutCancel(cc.ctx)
	snd := store.Sender{ID: cc.sender}
	var tokenReqs []sendRequest
	var tokenAt []int
	answers := make([]ccsAnswer, len(batch))
	for i, d := range batch {
		answers[i] = ccsAnswer{id: d.id, from: d.to}
		if d.req.toTopics() {
			resp, _ := cc.ccs.srv.sendTopic(ctx, snd, d.req)
			answers[i].code, answers[i].description = tokenNack(resp.Error)
			continue
		}
		tokenReqs = append(tokenReqs, d.req)
		tokenAt = append(tokenAt, i)
	}
	if len(tokenReqs) > 0 {
		results, _ := cc.ccs.srv.sendAll(ctx, snd, tokenReqs)
		for k, rs := range results {
			a := &answers[tokenAt[k]]
			a.code, a.description = tokenNack(rs[0].Error)
			a.canonical = rs[0].RegistrationID
		}
	}
	for _, a := range answers {
		cc.answer(a)
		<-cc.slots
	}
	cc.ccs.mu.Lock()
	cc.signalIfIdle()
	cc.ccs.mu.Unlock()
}

// ccsAnswer is the ack or nack of one downstream message.
type ccsAnswer struct {
	id, from          string
	code, description string // empty code: an ack
	canonical         string
}

// ccsReply is an ack, a nack or a control message to the app server.
type ccsReply struct {
	MessageType      string `json:"message_type"`
	From             string `json:"from,omitempty"`
	MessageID        string `json:"message_id,omitempty"`
	Error            string `json:"error,omitempty"`
	ErrorDescription string `json:"error_description,omitempty"`
	RegistrationID   string `json:"registration_id,omitempty"`
	ControlType      string `json:"control_type,omitempty"`
}

func (cc *ccsConn) answer(a ccsAnswer) {
	cc.ccs.srv.metrics.sent(apiXMPP, a.code)
	r := ccsReply{MessageType: "ack", From: a.from, MessageID: a.id, RegistrationID: a.canonical}
	if a.code != "" {
		r = ccsReply{MessageType: "nack", From: a.from, MessageID: a.id, Error: a.code, ErrorDescription: a.description}
	}
	cc.reply(r)
}

func (cc *ccsConn) nack(id, from, code, description string) {
	cc.log.Debug("downstream message refused", "message_id", id, "error", code, "why", description)
	cc.answer(ccsAnswer{id: id, from: from, code: code, description: description})
}

func (cc *ccsConn) reply(r ccsReply) {
	payload, err := json.Marshal(r)
	if err == nil {
		err = cc.xc.Send(cc.ctx, payload)
	}
	if err != nil && !errors.Is(err, xmpp.ErrClosed) && !errors.Is(err, context.Canceled) {
		cc.log.Warn("answer app server", "message_type", r.MessageType, "message_id", r.MessageID, "err", err)
	}
}

func (cc *ccsConn) sendControl() {
	cc.reply(ccsReply{MessageType: "control", ControlType: nackDraining})
}

// drain tells the app server to go, waits for it to answer what is
// outstanding on this connection, and closes the connection; then it waits
// for the connection to end, so that a shutdown that follows finds the
// control message and the end of the stream written. It waits at most
// wait in all.
func (cc *ccsConn) drain(wait time.Duration) {
	c := cc.ccs
	c.mu.Lock()
	cc.idle = make(chan struct{})
	cc.signalIfIdle()
	c.mu.Unlock()
	cc.sendControl()
	cc.log.Info("draining xmpp connection", "wait", wait)
	timer := time.NewTimer(wait)
	defer timer.Stop()
	select {
	case <-cc.idle:
	case <-timer.C:
		cc.log.Warn("xmpp connection drained with messages outstanding; they are sent again on another connection")
		cc.xc.Close()
		return
	case <-cc.done:
		return
	}
	cc.xc.Close()
	select {
	case <-cc.done:
	case <-timer.C:
	}
}

// tokenNack maps a send result's error to a CCS nack code and
// description; an empty code is an ack.
func tokenNack(gcmError string) (code, description string) {
	switch gcmError {
	case "":
		return "", ""
	case errMissingRegistration, errInvalidRegistration:
		return nackBadRegistration, gcmError + `: "to" is not a registration token`
	case errMismatchSenderID:
		return nackBadRegistration, gcmError + ": the token belongs to another sender"
	case errNotRegistered:
		return nackDeviceUnregistered, gcmError + ": the app was unregistered from the device"
	case errInvalidPackageName:
		return nackBadRegistration, gcmError + `: "restricted_package_name" does not match the token's app`
	case errMessageTooBig, errInvalidDataKey, errInvalidTTL:
		return nackInvalidJSON, gcmError
	case errUnavailable:
		return nackUnavailable, gcmError + ": the store cannot take messages now; retry with backoff"
	case errDeviceRate:
		return nackDeviceRate, gcmError + ": too many messages to this device"
	case errTopicsRate:
		return nackTopicsRate, gcmError + ": too many messages to this topic"
	default:
		return nackInternal, gcmError
	}
}

// ccsRoute delivers a sender's upstream messages over its XMPP connections.
type ccsRoute struct{ c *ccs }

func (ccsRoute) name() string { return routeXMPP }

func (r ccsRoute) deliver(ctx context.Context, u store.Upstream) error { return r.c.deliver(ctx, u) }

// parallel lets many messages wait for acks at once: each costs a stanza,
// not a request.
func (ccsRoute) parallel() int { return upstreamWorkers }
