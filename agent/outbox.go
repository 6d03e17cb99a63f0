// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"fmt"
	"sync"

	"tether/ipc"
)

// outbox is what the agent has sent on the current session and waits to
// hear of: the session itself, register and unregister requests in flight,
// the refs of upstream frames, the channels Send returned, and the
// upstream messages kept back in low power mode. One lock guards them
// together, so that nothing is sent on a session after end has failed its
// requests and forgotten its refs.
type outbox struct {
	mu      sync.Mutex
	session *Session
	// restoring is set while the session registers the apps again after a
	// new check-in: upstream messages wait for it (restore).
	restoring bool
	requests  map[string]*request // by ref: register and unregister in flight
	// refs maps the ref of each upstream frame sent in this session to its
	// message, so an error frame can be tied to it.
	refs    map[string]outboxKey
	results map[outboxKey]chan ipc.SendResult
	// deferred holds the normal-priority upstream messages kept back in
	// low power mode.
	deferred map[outboxKey]bool
}

// outboxKey names one upstream message.
type outboxKey struct{ app, id string }

func newOutbox() *outbox {
	return &outbox{
		requests: map[string]*request{},
		refs:     map[string]outboxKey{},
		results:  map[outboxKey]chan ipc.SendResult{},
		deferred: map[outboxKey]bool{},
	}
}

// current is the session to send on, or nil while offline.
func (o *outbox) current() *Session {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.session
}

// begin makes s the session to send on.
func (o *outbox) begin(s *Session) {
	o.mu.Lock()
	o.session = s
	o.mu.Unlock()
}

// end marks the agent offline and fails the requests that were waiting for
// an answer on the session.
func (o *outbox) end() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.session = nil
	o.restoring = false
	for ref, req := range o.requests {
		req.done <- requestResult{err: fmt.Errorf("connection lost: %w", ipc.ErrOffline)}
		delete(o.requests, ref)
	}
	clear(o.refs)
	clear(o.deferred) // the next session considers them again
}

func (o *outbox) setRestoring(restoring bool) {
	o.mu.Lock()
	o.restoring = restoring
	o.mu.Unlock()
}

// addRequest records req under ref and returns the session to send it on,
// or nil, recording nothing, while offline.
func (o *outbox) addRequest(ref string, req *request) *Session {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.session != nil {
		o.requests[ref] = req
	}
	return o.session
}

// takeRequest removes and returns the request sent with ref, or nil.
func (o *outbox) takeRequest(ref string) *request {
	o.mu.Lock()
	defer o.mu.Unlock()
	req := o.requests[ref]
	delete(o.requests, ref)
	return req
}

// sending records ref as the frame of key on s, unless s is no longer the
// session or registers the apps again (false: that session's end, or the
// end of its restore, resends it).
func (o *outbox) sending(s *Session, ref string, key outboxKey) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.session != s || o.restoring {
		return false
	}
	o.refs[ref] = key
	return true
}

// upstream is the message whose frame had ref in this session.
func (o *outbox) upstream(ref string) (outboxKey, bool) {
	o.mu.Lock()
	defer o.mu.Unlock()
	key, ok := o.refs[ref]
	return key, ok
}

// finish forgets the frame and any deferral of key, which has its outcome.
func (o *outbox) finish(key outboxKey) {
	o.mu.Lock()
	delete(o.refs, upstreamRef(key))
	delete(o.deferred, key)
	o.mu.Unlock()
}

// keepBack keeps key back until takeDeferred.
func (o *outbox) keepBack(key outboxKey) {
	o.mu.Lock()
	o.deferred[key] = true
	o.mu.Unlock()
}

// takeDeferred returns the messages kept back, and keeps none.
func (o *outbox) takeDeferred() map[outboxKey]bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	keys := o.deferred
	o.deferred = map[outboxKey]bool{}
	return keys
}

// expect records ch as where key's outcome goes; false when key has one
// already, a message pending under that ID.
func (o *outbox) expect(key outboxKey, ch chan ipc.SendResult) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.results[key] != nil {
		return false
	}
	o.results[key] = ch
	return true
}

// takeResult removes and returns where key's outcome goes, or nil.
func (o *outbox) takeResult(key outboxKey) chan ipc.SendResult {
	o.mu.Lock()
	defer o.mu.Unlock()
	ch := o.results[key]
	delete(o.results, key)
	return ch
}
