// SPDX-License-Identifier: Apache-2.0

package cluster

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrNoRoute: no node holds an XMPP connection of the sender.
var ErrNoRoute = errors.New("no node holds an XMPP connection of the sender")

// Senders reaches the XMPP connections of app servers on any node. A node
// that holds connections of a sender answers on the sender's subjects
// (prefix.ccs.SENDER.KIND) in a queue group, so that one of them takes
// each request; every node hears when a sender gains a connection
// (prefix.route.SENDER), so that its waiting messages go at once.
type Senders struct {
	nc     *nats.Conn
	prefix string
	// deliver hands an upstream message to a local connection of sender
	// and waits for the app server's ack.
	deliver func(ctx context.Context, sender string, payload []byte) error
	// appeared makes sender's waiting messages due at once.
	appeared func(sender string)

	ctx context.Context // ends the deliveries in progress
	wg  sync.WaitGroup
	mu  sync.Mutex
	// serving holds the subscription of each sender with a connection
	// here.
	serving map[string]*nats.Subscription
	routes  *nats.Subscription
}

// Kinds of requests on a sender's subjects.
const (
	kindHas      = "has"
	kindUpstream = "up"
)

// NewSenders starts hearing of senders' new connections; deliver and
// appeared are the local endpoint's. Close stops it.
func NewSenders(ctx context.Context, n *Node, deliver func(ctx context.Context, sender string, payload []byte) error, appeared func(sender string)) (*Senders, error) {
	s := &Senders{nc: n.nc, prefix: n.cfg.Prefix, deliver: deliver, appeared: appeared, ctx: ctx, serving: map[string]*nats.Subscription{}}
	sub, err := s.nc.Subscribe(s.prefix+".route.*", func(msg *nats.Msg) {
		s.appeared(msg.Subject[strings.LastIndexByte(msg.Subject, '.')+1:])
	})
	if err != nil {
		return nil, fmt.Errorf("hear of XMPP connections: %w", err)
	}
	s.routes = sub
	return s, nil
}

// Close stops answering and waits for the deliveries in progress.
func (s *Senders) Close() {
	s.mu.Lock()
	for sender, sub := range s.serving {
		sub.Unsubscribe()
		delete(s.serving, sender)
	}
	s.mu.Unlock()
	s.routes.Unsubscribe()
	s.wg.Wait()
}

// Serve makes this node answer for sender, which has a connection here,
// and tells every node. Calling it again is harmless.
func (s *Senders) Serve(sender string) error {
	if !validSender(sender) {
		return fmt.Errorf("serve sender %.40q: not a sender ID", sender)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.serving[sender]; !ok {
		sub, err := s.nc.QueueSubscribe(s.prefix+".ccs."+sender+".*", "ccs", s.answer)
		if err != nil {
			return fmt.Errorf("serve sender %s: %w", sender, err)
		}
		s.serving[sender] = sub
	}
	return s.nc.Publish(s.prefix+".route."+sender, nil)
}

// Stop ends answering for sender, whose last connection here went.
func (s *Senders) Stop(sender string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if sub, ok := s.serving[sender]; ok {
		sub.Unsubscribe()
		delete(s.serving, sender)
	}
}

// answer takes a request for a sender served here.
func (s *Senders) answer(msg *nats.Msg) {
	switch msg.Subject[strings.LastIndexByte(msg.Subject, '.')+1:] {
	case kindHas:
		msg.Respond(nil)
	case kindUpstream:
		sender := strings.TrimPrefix(msg.Subject, s.prefix+".ccs.")
		sender = sender[:strings.IndexByte(sender, '.')]
		// The app server's ack may take a while: NATS's delivery
		// goroutine must not wait for it.
		s.wg.Go(func() {
			var reply []byte
			if err := s.deliver(s.ctx, sender, msg.Data); err != nil {
				// An empty answer means delivered.
				reply = []byte("failed: " + err.Error())
			}
			msg.Respond(reply)
		})
	}
}

// Has reports whether some node holds an XMPP connection of sender.
func (s *Senders) Has(ctx context.Context, sender string) (bool, error) {
	if !validSender(sender) {
		return false, nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	_, err := s.nc.RequestWithContext(ctx, s.prefix+".ccs."+sender+"."+kindHas, nil)
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, nats.ErrNoResponders):
		return false, nil
	}
	return false, fmt.Errorf("ask for XMPP connections of sender %s: %w", sender, err)
}

// Deliver has a node with a connection of sender deliver payload, an
// upstream message, and waits, up to wait, for the app server's ack.
func (s *Senders) Deliver(ctx context.Context, sender string, payload []byte, wait time.Duration) error {
	if !validSender(sender) {
		return ErrNoRoute
	}
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	reply, err := s.nc.RequestWithContext(ctx, s.prefix+".ccs."+sender+"."+kindUpstream, payload)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return ErrNoRoute
	case err != nil:
		return fmt.Errorf("deliver through another node: %w", err)
	case len(reply.Data) > 0:
		return fmt.Errorf("deliver through another node: %s", reply.Data)
	}
	return nil
}

// validSender reports whether id can stand in a subject: sender IDs are
// digits.
func validSender(id string) bool {
	if id == "" || len(id) > 32 {
		return false
	}
	for _, r := range id {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}
