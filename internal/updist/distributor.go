// SPDX-License-Identifier: Apache-2.0

package updist

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"
	"unicode"

	"tether/internal/busclient"
)

// The names of the UnifiedPush D-Bus specification.
const (
	// BusName is the distributor's well-known name.
	BusName         = "org.unifiedpush.Distributor.tether"
	distributorPath = busclient.ObjectPath("/org/unifiedpush/Distributor")
	distributor1    = "org.unifiedpush.Distributor1"
	distributor2    = "org.unifiedpush.Distributor2"
	connectorPath   = busclient.ObjectPath("/org/unifiedpush/Connector")
	connector1      = "org.unifiedpush.Connector1"
	connector2      = "org.unifiedpush.Connector2"

	registered         = "REGISTRATION_SUCCEEDED"
	registrationFailed = "REGISTRATION_FAILED"
	// Failure reasons a connector knows.
	reasonInternal = "INTERNAL_ERROR"
	reasonNetwork  = "NETWORK"
)

// introspection describes the distributor's object, for the connector
// libraries that introspect it before calling.
const introspection = `<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
  <interface name="org.freedesktop.DBus.Introspectable">
    <method name="Introspect"><arg name="xml" type="s" direction="out"/></method>
  </interface>
  <interface name="org.unifiedpush.Distributor2">
    <method name="Register"><arg name="args" type="a{sv}" direction="in"/><arg name="res" type="a{sv}" direction="out"/></method>
    <method name="Unregister"><arg name="args" type="a{sv}" direction="in"/><arg name="res" type="a{sv}" direction="out"/></method>
  </interface>
  <interface name="org.unifiedpush.Distributor1">
    <method name="Register">
      <arg name="serviceName" type="s" direction="in"/><arg name="token" type="s" direction="in"/>
      <arg name="description" type="s" direction="in"/>
      <arg name="registrationResult" type="s" direction="out"/><arg name="registrationResultReason" type="s" direction="out"/>
    </method>
    <method name="Unregister"><arg name="token" type="s" direction="in"/></method>
  </interface>
</node>
`

// maxToken bounds a connector's token, as the specification does.
const maxToken = 100

// Timeouts: an agent request, and a connector's answer to Message (an
// activated connector has to start first).
const (
	agentTimeout     = 30 * time.Second
	connectorTimeout = 60 * time.Second
)

// Backoffs between attempts to listen or to deliver again.
const retryFirst, retryMost = 500 * time.Millisecond, 30 * time.Second

// ErrAgentUnavailable wraps an Agent's errors that say the agent could
// not do it now (it is not running, or not connected to its server), as
// opposed to refusing: a connector is told NETWORK, and may try again.
var ErrAgentUnavailable = errors.New("the agent is unavailable")

// Errors of a Listener that the distributor acts on.
var (
	// ErrEndpointChanged: the registration has a new token in the agent,
	// so a new endpoint; the Listener goes on.
	ErrEndpointChanged = errors.New("the registration's endpoint changed")
	// ErrRegistrationGone: the agent no longer has the registration (its
	// store was reset, say); the connector is told it is unregistered.
	ErrRegistrationGone = errors.New("the agent no longer has the registration")
)

// Message is a message of the agent for a registration.
type Message struct {
	ID   string
	Body []byte
}

// Agent is what the distributor needs of the Tether agent. app is the
// agent's app ID of a registration (AppID of its token).
type Agent interface {
	// Register registers the app with the built-in Web Push sender,
	// binding it to vapid when that is set, and returns its endpoint.
	Register(ctx context.Context, app, vapid string) (endpoint string, err error)
	// Unregister drops the app's registration.
	Unregister(ctx context.Context, app string) error
	// Listen makes the distributor the app's listener.
	Listen(ctx context.Context, app string) (Listener, error)
}

// Listener is the agent's stream of an app's messages.
type Listener interface {
	Next(ctx context.Context) (Message, error)
	Ack(ctx context.Context, id string) error
	Close() error
}

// AppID is the agent's app ID of a connector's token: each token is a
// registration of its own.
func AppID(token string) string { return "unifiedpush:" + token }

// Logger is where the distributor reports what it did and what failed,
// with key-value pairs after the message, as *slog.Logger takes them.
type Logger interface {
	Info(msg string, args ...any)
	Warn(msg string, args ...any)
	Error(msg string, args ...any)
}

// Config configures a Distributor.
type Config struct {
	// Bus is the connection to the session bus; the distributor owns
	// BusName on it and answers its method calls.
	Bus *busclient.Conn
	// Agent is the Tether agent.
	Agent Agent
	// StateFile keeps the registrations (DefaultStateFile).
	StateFile string
	Logger    Logger
}

// Distributor serves the UnifiedPush interfaces. Run it once.
type Distributor struct {
	bus   *busclient.Conn
	agent Agent
	path  string
	log   Logger

	mu   sync.Mutex
	regs map[string]*active // by token
	wg   sync.WaitGroup
}

// active is a registration and its listener's stop.
type active struct {
	registration
	stop context.CancelFunc
}

// New returns a distributor of the registrations in cfg.StateFile.
func New(cfg Config) (*Distributor, error) {
	if cfg.Bus == nil || cfg.Agent == nil || cfg.StateFile == "" || cfg.Logger == nil {
		return nil, errors.New("updist: a distributor needs a bus, an agent, a state file and a logger")
	}
	return &Distributor{bus: cfg.Bus, agent: cfg.Agent, path: cfg.StateFile, log: cfg.Logger, regs: map[string]*active{}}, nil
}

// Run owns the bus name, hands each known connector its endpoint again
// and listens for its messages, and answers connectors until ctx ends or
// the bus connection closes.
func (d *Distributor) Run(ctx context.Context) error {
	regs, err := load(d.path)
	if err != nil {
		return err
	}
	if err := d.bus.RequestName(ctx, BusName); err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer func() {
		cancel()
		d.wg.Wait()
	}()
	for _, r := range regs {
		d.start(ctx, r)
		d.newEndpoint(r)
	}
	d.log.Info("UnifiedPush distributor ready", "name", BusName, "registrations", len(regs))
	for {
		call, err := d.bus.NextCall(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("serve on the bus: %w", err)
		}
		if err := d.serve(ctx, call); err != nil {
			return fmt.Errorf("answer %s.%s: %w", call.Iface, call.Member, err)
		}
	}
}

// serve answers one call; an error is the bus connection's.
func (d *Distributor) serve(ctx context.Context, call *busclient.MethodCall) error {
	if call.Path != distributorPath {
		return d.bus.ReplyError(call, busclient.ErrorUnknownMethod, "no object "+string(call.Path))
	}
	switch call.Iface + "." + call.Member + "(" + call.Sig + ")" {
	case "org.freedesktop.DBus.Introspectable.Introspect()":
		return d.bus.Reply(call, introspection)
	case distributor2 + ".Register(a{sv})":
		args := call.Body[0].(map[string]any)
		r := registration{Service: str(args, "service"), Token: str(args, "token"), Description: str(args, "description"),
			VAPID: str(args, "vapid"), Version: 2}
		reply := map[string]busclient.Variant{"success": {Sig: "s", Value: registered}}
		if reason := d.register(ctx, call.Sender, r); reason != "" {
			reply["success"] = busclient.Variant{Sig: "s", Value: registrationFailed}
			reply["reason"] = busclient.Variant{Sig: "s", Value: reason}
		}
		return d.bus.Reply(call, reply)
	case distributor1 + ".Register(sss)":
		r := registration{Service: call.Body[0].(string), Token: call.Body[1].(string), Description: call.Body[2].(string), Version: 1}
		if reason := d.register(ctx, call.Sender, r); reason != "" {
			return d.bus.Reply(call, registrationFailed, reason)
		}
		return d.bus.Reply(call, registered, "")
	case distributor2 + ".Unregister(a{sv})":
		d.unregister(ctx, str(call.Body[0].(map[string]any), "token"))
		return d.bus.Reply(call, map[string]busclient.Variant{})
	case distributor1 + ".Unregister(s)":
		d.unregister(ctx, call.Body[0].(string))
		return d.bus.Reply(call)
	}
	return d.bus.ReplyError(call, busclient.ErrorUnknownMethod,
		fmt.Sprintf("no method %s.%s with arguments %q", call.Iface, call.Member, call.Sig))
}

// str is a string argument of an a{sv}; another type is none.
func str(args map[string]any, key string) string {
	v, _ := args[key].(busclient.Variant)
	s, _ := v.Value.(string)
	return s
}

// checkRegistration refuses a service that is not a bus name and a token
// the specification does not allow.
func checkRegistration(service, token string) error {
	switch {
	case service == "" || len(service) > 255 || strings.HasPrefix(service, ":") || !strings.Contains(service, "."):
		return fmt.Errorf("service %q is not a well-known D-Bus name", service)
	case token == "" || len(token) > maxToken:
		return fmt.Errorf("a token of %d bytes: it must have 1 to %d", len(token), maxToken)
	case strings.IndexFunc(token, func(r rune) bool { return !unicode.IsPrint(r) || unicode.IsSpace(r) }) >= 0:
		return fmt.Errorf("token %q has a space or a control character", token)
	}
	return nil
}

// register registers a connector's token with the agent and hands the
// connector its endpoint. It returns a failure reason, or "" once the
// registration is on disk.
func (d *Distributor) register(ctx context.Context, sender string, r registration) string {
	if err := checkRegistration(r.Service, r.Token); err != nil {
		d.log.Warn("UnifiedPush registration refused", "service", r.Service, "caller", sender, "err", err)
		return reasonInternal
	}
	d.mu.Lock()
	old, known := d.regs[r.Token]
	d.mu.Unlock()
	if known && old.Service != r.Service {
		d.log.Warn("UnifiedPush registration refused: the token is another service's", "service", r.Service, "caller", sender, "owner", old.Service)
		return reasonInternal
	}
	actx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	endpoint, err := d.agent.Register(actx, AppID(r.Token), r.VAPID)
	if err != nil {
		d.log.Warn("UnifiedPush registration failed", "service", r.Service, "err", err)
		if errors.Is(err, ErrAgentUnavailable) || errors.Is(err, context.DeadlineExceeded) {
			return reasonNetwork
		}
		return reasonInternal
	}
	r.Endpoint = endpoint
	d.mu.Lock()
	regs := d.listLocked()
	if known {
		for i := range regs {
			if regs[i].Token == r.Token {
				regs[i] = r
			}
		}
	} else {
		regs = append(regs, r)
	}
	err = save(d.path, regs)
	d.mu.Unlock()
	if err != nil {
		d.log.Error("UnifiedPush registration not kept", "service", r.Service, "err", err)
		return reasonInternal
	}
	if known {
		d.stop(r.Token)
	}
	d.start(ctx, r)
	d.log.Info("UnifiedPush app registered", "service", r.Service, "version", r.Version)
	d.newEndpoint(r)
	return ""
}

// listLocked is the registrations, for the state file.
func (d *Distributor) listLocked() []registration {
	regs := make([]registration, 0, len(d.regs))
	for _, a := range d.regs {
		regs = append(regs, a.registration)
	}
	return regs
}

// start listens for the registration's messages until stop.
func (d *Distributor) start(ctx context.Context, r registration) {
	ctx, cancel := context.WithCancel(ctx)
	d.mu.Lock()
	d.regs[r.Token] = &active{registration: r, stop: cancel}
	d.mu.Unlock()
	d.wg.Go(func() { d.listen(ctx, r) })
}

// stop ends a registration's listener and forgets it.
func (d *Distributor) stop(token string) {
	d.mu.Lock()
	a, ok := d.regs[token]
	delete(d.regs, token)
	d.mu.Unlock()
	if ok {
		a.stop()
	}
}

// unregister drops a registration at the connector's request, in the
// agent and on disk, then confirms it with Unregistered.
func (d *Distributor) unregister(ctx context.Context, token string) {
	d.mu.Lock()
	a, ok := d.regs[token]
	d.mu.Unlock()
	if !ok {
		d.log.Warn("UnifiedPush unregistration of an unknown token")
		return
	}
	actx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	if err := d.agent.Unregister(actx, AppID(token)); err != nil {
		// The distributor forgets it anyway: its endpoint is the agent's to
		// drop when the agent can, and nothing will listen for it.
		d.log.Warn("the agent did not drop a UnifiedPush registration", "service", a.Service, "err", err)
	}
	d.forget(a.registration)
	d.log.Info("UnifiedPush app unregistered", "service", a.Service)
}

// forget drops a registration from disk and tells its connector.
func (d *Distributor) forget(r registration) {
	d.stop(r.Token)
	d.mu.Lock()
	err := save(d.path, d.listLocked())
	d.mu.Unlock()
	if err != nil {
		d.log.Error("UnifiedPush unregistration not kept", "service", r.Service, "err", err)
	}
	d.tell(r, "Unregistered", map[string]busclient.Variant{"token": {Sig: "s", Value: r.Token}}, r.Token)
}

// newEndpoint hands a connector its endpoint.
func (d *Distributor) newEndpoint(r registration) {
	d.tell(r, "NewEndpoint",
		map[string]busclient.Variant{"token": {Sig: "s", Value: r.Token}, "endpoint": {Sig: "s", Value: r.Endpoint}},
		r.Token, r.Endpoint)
}

// tell calls a connector method without waiting for its answer, as the
// specification asks: args2 for Connector2, args1 for Connector1.
func (d *Distributor) tell(r registration, member string, args2 map[string]busclient.Variant, args1 ...any) {
	var err error
	if r.Version == 1 {
		err = d.bus.Notify(r.Service, connectorPath, connector1, member, args1...)
	} else {
		err = d.bus.Notify(r.Service, connectorPath, connector2, member, args2)
	}
	if err != nil {
		d.log.Warn("UnifiedPush connector not told", "service", r.Service, "method", member, "err", err)
	}
}

// listen hands the registration's messages to its connector until ctx
// ends, listening again when the agent goes away.
func (d *Distributor) listen(ctx context.Context, r registration) {
	wait := retryFirst
	for ctx.Err() == nil {
		err := d.session(ctx, &r, func() { wait = retryFirst })
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrRegistrationGone) {
			d.log.Warn("UnifiedPush registration gone from the agent", "service", r.Service, "err", err)
			d.forget(r)
			return
		}
		d.log.Warn("UnifiedPush messages paused", "service", r.Service, "err", err, "retry", wait)
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(2*wait, retryMost)
	}
}

// session listens once and delivers until something fails; reset is
// called at each delivery. It keeps r's endpoint up to date.
func (d *Distributor) session(ctx context.Context, r *registration, reset func()) error {
	l, err := d.agent.Listen(ctx, AppID(r.Token))
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	defer l.Close()
	for {
		m, err := l.Next(ctx)
		if errors.Is(err, ErrEndpointChanged) {
			if err := d.refresh(ctx, r); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("wait for a message: %w", err)
		}
		if err := d.deliver(ctx, *r, m); err != nil {
			return fmt.Errorf("deliver message %s to the connector: %w", m.ID, err)
		}
		if err := l.Ack(ctx, m.ID); err != nil {
			return fmt.Errorf("ack message %s: %w", m.ID, err)
		}
		reset()
	}
}

// refresh asks the agent for the registration's new endpoint, keeps it
// and hands it to the connector.
func (d *Distributor) refresh(ctx context.Context, r *registration) error {
	actx, cancel := context.WithTimeout(ctx, agentTimeout)
	defer cancel()
	endpoint, err := d.agent.Register(actx, AppID(r.Token), r.VAPID)
	if err != nil {
		return fmt.Errorf("ask for the new endpoint: %w", err)
	}
	if endpoint == r.Endpoint {
		return nil
	}
	r.Endpoint = endpoint
	d.mu.Lock()
	if a, ok := d.regs[r.Token]; ok {
		a.Endpoint = endpoint
	}
	err = save(d.path, d.listLocked())
	d.mu.Unlock()
	if err != nil {
		return err
	}
	d.log.Info("UnifiedPush endpoint changed", "service", r.Service)
	d.newEndpoint(*r)
	return nil
}

// errNotHandled: the connector answered Message without the message's ID.
var errNotHandled = errors.New("the connector answered without the message's ID")

// deliver hands a message to the connector: a Connector2 has it when its
// answer carries the message's ID; a Connector1, which never answers,
// once the call is sent. The bus starts a connector that is not running.
func (d *Distributor) deliver(ctx context.Context, r registration, m Message) error {
	if r.Version == 1 {
		return d.bus.Notify(r.Service, connectorPath, connector1, "Message", r.Token, m.Body, m.ID)
	}
	cctx, cancel := context.WithTimeout(ctx, connectorTimeout)
	defer cancel()
	args := map[string]busclient.Variant{
		"token":   {Sig: "s", Value: r.Token},
		"message": {Sig: "ay", Value: m.Body},
		"id":      {Sig: "s", Value: m.ID},
	}
	body, err := d.bus.Call(cctx, r.Service, connectorPath, connector2, "Message", args)
	if err != nil {
		return err
	}
	if len(body) != 1 {
		return errNotHandled
	}
	reply, _ := body[0].(map[string]any)
	if str(reply, "id") != m.ID {
		return errNotHandled
	}
	return nil
}
