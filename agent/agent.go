// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"tether/ipc"
	"tether/store"
	"tether/wire"
)

const (
	// DefaultHeartbeat is the ping interval when Config leaves it zero:
	// short enough for home gateways that drop idle mappings after a few
	// minutes, long enough to let a radio sleep.
	DefaultHeartbeat = 4 * time.Minute
	// DefaultPongWait is how long past a heartbeat the agent waits to hear
	// from the server before it declares the connection dead.
	DefaultPongWait = time.Minute
	// DefaultMinBackoff and DefaultMaxBackoff bound the reconnection delay.
	DefaultMinBackoff = time.Second
	DefaultMaxBackoff = 5 * time.Minute

	// Window is how many messages an app may have delivered and not yet
	// acknowledged.
	Window = 100
	// DefaultSeenIDs is how many IDs of messages it no longer holds the
	// agent keeps to recognise a redelivery (store.Writes.SeenIDs) when
	// Config leaves it zero: ten times
	// the window of messages the server may have sent and not had the
	// agent's ack for, which are all it ever delivers again. It bounds the
	// store, and so the agent's memory, at any rate of messages; an ID
	// redelivered after it is gone costs a duplicate, never a loss.
	DefaultSeenIDs = 1000
	// MaxPending is how many upstream messages an app may have waiting for
	// the server (GCM's limit; the next gets ipc.ErrTooManyMessages).
	MaxPending = 20
	// ResultTTLExceeded is the SendResult error of an upstream message
	// whose time to live ran out before the server acknowledged it.
	ResultTTLExceeded = "TtlExceeded"

	// minHold is the least time a received message is held for its app.
	minHold = 10 * time.Second
	// requestTimeout bounds a register or unregister round trip when the
	// caller's context has no deadline.
	requestTimeout = 30 * time.Second
	// sweepGap is the least time between two sweeps of expired entries, so
	// that messages expiring one after another cost one wake-up.
	sweepGap = 10 * time.Second

	// DefaultUserRegistrations is how many registrations one Unix user may
	// hold when Config leaves it zero: plenty for the apps of one vendor,
	// and a user who registers app IDs by the hundred leaves room for the
	// others (the server allows a device 100).
	DefaultUserRegistrations = 20
)

// DefaultQuota bounds the downstream messages the agent holds for apps
// when Config leaves a bound zero: one app what GCM's server would hold
// for it (100 messages, of up to 4 KiB of data each), all apps together
// four times that, so that the store stays a few MiB on flash.
var DefaultQuota = store.Quota{AppMessages: 100, AppBytes: 512 << 10, Bytes: 2 << 20}

// Config configures an Agent.
type Config struct {
	Store *store.Store
	// Servers are the connection server's URLs, one per node of a cluster
	// (or one): ws://host:port, wss://host, or http(s):// meaning ws(s)://,
	// optionally with a path prefix. The agent appends wire.Path. It dials
	// them in turn from a random one (Link).
	Servers []string
	// TLS configures wss:// connections; nil means the system roots. A
	// client certificate in it (Certificates or GetClientCertificate)
	// identifies the device on every wss:// connection, and lets it check
	// in without EnrollKey, anew too when the server no longer knows it.
	TLS *tls.Config
	// Insecure allows a ws:// server that is not on loopback. Over ws://
	// the device secret, every token and every message cross the network
	// in the clear, so New refuses such a server without it.
	Insecure bool
	// Proxy gives the HTTP proxy to reach a server's URL through (HTTP
	// CONNECT), or nil to connect directly; nil means always directly.
	Proxy func(*url.URL) *url.URL
	// EnrollKey is sent at check-in when the server requires one. With it,
	// or with a client certificate (TLS), a device whose credentials the
	// server refuses, as when it lost the device's record, checks in anew
	// and registers its apps again.
	EnrollKey string
	// Heartbeat is the ping interval (DefaultHeartbeat when zero), used
	// until the first NetworkChanged when HeartbeatPolicy is set, and
	// always when it is not.
	Heartbeat time.Duration
	// HeartbeatPolicy, when set, makes the heartbeat adaptive: the agent
	// learns each network's idle timeout and keeps what it learned.
	HeartbeatPolicy *HeartbeatPolicy
	// PowerMode is the mode to start in (PowerMains when empty).
	PowerMode string
	// AppOwners binds app IDs, before their first registration, to the
	// only Unix user who may register them (root registers them for that
	// user). Other app IDs belong to whoever registers them first.
	AppOwners map[string]uint32
	// UserRegistrations is how many registrations one Unix user may hold
	// (DefaultUserRegistrations when zero), so that one user cannot take
	// the device's share at the server from the others. Root and the apps
	// of AppOwners are not counted.
	UserRegistrations int
	// Quota bounds the downstream messages held for apps (DefaultQuota's
	// bound where one is zero); past it, an app's oldest messages go, and
	// the app is told how many (deleted_messages).
	Quota store.Quota
	// SeenIDs is how many IDs of messages it no longer holds the agent
	// keeps, so that a redelivery is a duplicate the app does not get
	// (DefaultSeenIDs when zero).
	SeenIDs int
	// PongWait (DefaultPongWait when zero).
	PongWait time.Duration
	// MinBackoff and MaxBackoff bound the reconnection delay (the defaults
	// when zero).
	MinBackoff time.Duration
	MaxBackoff time.Duration
	// Name identifies the agent's software in the hello (default "tetherd").
	Name   string
	Logger *slog.Logger
	// OnStatusChange, when set, is called after each change to what Status
	// reports about the connection and the device's identity, so that doors
	// that publish it (D-Bus properties) learn of it without polling. It
	// runs on the agent's goroutines and must return promptly.
	OnStatusChange func()
	// Now is the clock for times to live. When nil the agent keeps its own:
	// it ignores steps of the system clock while running and, across
	// restarts, resumes from a time mark in the store when the system clock
	// went back or had never been set.
	Now func() time.Time
	// ClockOffset moves the system's wall clock, as the agent's own clock
	// reads it, by this much. It is a test knob for clock jumps (tetherd
	// takes it from TETHER_CLOCK_OFFSET); it has no effect with Now set.
	ClockOffset time.Duration
}

// Agent is the device agent. Create it with New, start it with Run; its
// ipc.Backend methods may be called before, during and after Run (offline,
// they answer what the store knows).
type Agent struct {
	store     *store.Store
	log       *slog.Logger
	now       func() time.Time
	endpoints []string // of Config.Servers
	enrollKey string
	name      string
	link      *Link
	onStatus  func()
	policy    *HeartbeatPolicy // nil: fixed heartbeat
	appOwners map[string]uint32
	userRegs  int
	// canEnroll says that the device can check in without credentials:
	// it has an enrollment key or a client certificate.
	canEnroll bool
	// refusals is what the link's goroutine, alone, keeps of the server's
	// refusals of hello.
	refusals refusals

	// condMu guards what the platform watchers tell the agent.
	condMu    sync.Mutex
	routeUp   bool
	network   string
	powerMode string
	// linkType is wire.LinkWiFi or wire.LinkOther once SetWiFi told it.
	linkType string
	learner  *learner // nil when the heartbeat is fixed
	// probeBlocked stops probing until conditions change (wakeProber).
	probeBlocked bool
	probeWake    chan struct{}
	// flushDeferred asks the session to send the deferred upstream
	// messages.
	flushDeferred chan struct{}

	// expiryChanged wakes the expiry loop when something may now expire
	// sooner than it planned for.
	expiryChanged chan struct{}

	// regMu makes counting a user's registrations and claiming one more
	// one step (claimRegistration).
	regMu sync.Mutex
	// registering counts, by Unix user, the new registrations waiting for
	// the server, which count against the user's limit.
	registering map[uint32]int

	// inbox hands held messages to the listening apps; outbox keeps what
	// the current session sent and waits to hear of.
	inbox  *inbox
	outbox *outbox
	// running is set by Run: an Agent runs once.
	running atomic.Bool
}

var _ ipc.Backend = (*Agent)(nil)

// New checks cfg and returns an Agent.
func New(cfg Config) (*Agent, error) {
	if cfg.Store == nil {
		return nil, errors.New("agent: no store")
	}
	endpoints, err := Endpoints(cfg.Servers, cfg.Insecure)
	if err != nil {
		return nil, err
	}
	if cfg.HeartbeatPolicy != nil {
		if err := cfg.HeartbeatPolicy.Check(); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		if cfg.Heartbeat == 0 {
			cfg.Heartbeat = cfg.HeartbeatPolicy.Start
		}
	}
	if cfg.Heartbeat == 0 {
		cfg.Heartbeat = DefaultHeartbeat
	}
	switch cfg.PowerMode {
	case "":
		cfg.PowerMode = PowerMains
	case PowerMains, PowerBattery, PowerLow:
	default:
		return nil, fmt.Errorf("agent: power mode %q: %w", cfg.PowerMode, ErrPowerMode)
	}
	if cfg.PongWait == 0 {
		cfg.PongWait = DefaultPongWait
	}
	if cfg.MinBackoff == 0 {
		cfg.MinBackoff = DefaultMinBackoff
	}
	if cfg.MaxBackoff == 0 {
		cfg.MaxBackoff = max(DefaultMaxBackoff, cfg.MinBackoff)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		clock, err := openClock(cfg.Store, systemClock(cfg.ClockOffset), cfg.Logger)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		cfg.Now = clock.Now
	}
	if cfg.Name == "" {
		cfg.Name = "tetherd"
	}
	if cfg.UserRegistrations < 0 {
		return nil, fmt.Errorf("agent: %d registrations per user: want at least 1", cfg.UserRegistrations)
	}
	if cfg.UserRegistrations == 0 {
		cfg.UserRegistrations = DefaultUserRegistrations
	}
	if cfg.SeenIDs < 0 {
		return nil, fmt.Errorf("agent: %d seen IDs: want at least 1", cfg.SeenIDs)
	}
	if cfg.SeenIDs == 0 {
		cfg.SeenIDs = DefaultSeenIDs
	}
	cfg.Quota = withDefaults(cfg.Quota)
	if err := cfg.Quota.Check(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	var a *Agent
	link, err := NewLink(LinkConfig{
		OnSessionEnd: func(reason string, heartbeat time.Duration) { a.sessionEnded(reason, heartbeat) },
		// Status reports the server being dialled: it changes with each
		// attempt at another node, with or without a session there.
		OnServerChange: func() { a.statusChanged() },
		URLs:           endpoints,
		Insecure:       cfg.Insecure,
		TLS:            cfg.TLS,
		Proxy:          cfg.Proxy,
		Heartbeat:      cfg.Heartbeat,
		PongWait:       cfg.PongWait,
		MinBackoff:     cfg.MinBackoff,
		MaxBackoff:     cfg.MaxBackoff,
		Logger:         cfg.Logger.With("part", "link"),
	})
	if err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a = &Agent{
		store:         cfg.Store,
		log:           cfg.Logger,
		now:           cfg.Now,
		endpoints:     endpoints,
		enrollKey:     cfg.EnrollKey,
		name:          cfg.Name,
		link:          link,
		onStatus:      cfg.OnStatusChange,
		policy:        cfg.HeartbeatPolicy,
		appOwners:     cfg.AppOwners,
		userRegs:      cfg.UserRegistrations,
		canEnroll:     cfg.EnrollKey != "" || hasClientCert(cfg.TLS),
		registering:   map[uint32]int{},
		routeUp:       true,
		network:       unknownNetwork,
		powerMode:     cfg.PowerMode,
		flushDeferred: make(chan struct{}, 1),
		probeWake:     make(chan struct{}, 1),
		expiryChanged: make(chan struct{}, 1),
		inbox:         newInbox(cfg.Store, cfg.Quota, cfg.SeenIDs, cfg.Now, cfg.Logger),
		outbox:        newOutbox(),
	}
	if a.policy != nil {
		a.useNetwork(unknownNetwork)
	}
	return a, nil
}

// withDefaults is q with DefaultQuota's bound where q has none.
func withDefaults(q store.Quota) store.Quota {
	if q.AppMessages == 0 {
		q.AppMessages = DefaultQuota.AppMessages
	}
	if q.AppBytes == 0 {
		q.AppBytes = DefaultQuota.AppBytes
	}
	if q.Bytes == 0 {
		q.Bytes = max(DefaultQuota.Bytes, q.AppBytes)
	}
	return q
}

// hasClientCert reports whether c presents a client certificate.
func hasClientCert(c *tls.Config) bool {
	return c != nil && (len(c.Certificates) > 0 || c.GetClientCertificate != nil)
}

// Endpoint turns a server URL as a user gives it into the WebSocket URL of
// the server's device endpoint: http becomes ws, https wss, and wire.Path
// is appended to any path prefix.
func Endpoint(server string) (string, error) {
	u, err := wire.ParseServerURL(server)
	if err != nil {
		return "", fmt.Errorf("server URL %q: %w", server, err)
	}
	switch u.Scheme {
	case "http":
		u.Scheme = "ws"
	case "https":
		u.Scheme = "wss"
	}
	u.Path = strings.TrimSuffix(u.Path, "/") + wire.Path
	u.RawPath = ""
	return u.String(), nil
}

// Endpoints checks the servers a device is given and returns their
// endpoints (Endpoint), in order. Unless insecure, it refuses a ws://
// server off loopback (ErrInsecure). Of several servers, the one at fault
// is named by its position.
func Endpoints(servers []string, insecure bool) ([]string, error) {
	if len(servers) == 0 {
		return nil, errors.New("no server URL")
	}
	endpoints := make([]string, len(servers))
	for i, s := range servers {
		ep, err := checkedEndpoint(s, insecure)
		if err != nil {
			if len(servers) > 1 {
				err = fmt.Errorf("entry %d: %w", i+1, err)
			}
			return nil, err
		}
		endpoints[i] = ep
	}
	return endpoints, nil
}

// checkedEndpoint is Endpoint, refusing a ws:// server off loopback unless
// insecure.
func checkedEndpoint(server string, insecure bool) (string, error) {
	endpoint, err := Endpoint(server)
	if err != nil {
		return "", err
	}
	if !insecure && !secureEndpoint(endpoint) {
		return "", fmt.Errorf("server URL %q: %w", server, ErrInsecure)
	}
	return endpoint, nil
}

// ErrInsecure refuses a ws:// server that is not on loopback.
var ErrInsecure = errors.New("ws:// would send the device secret and every message in the clear; use wss://, or allow it with --insecure")

// nextEndpoint checks the server a goaway named, on a connection to the
// endpoint from, and returns its endpoint. The device will present its
// credentials there, which is right: the goaway came from a node of its
// cluster, over a connection TLS verified. So the node named must pass the
// checks of a configured server, and TLS verification and pins apply to it
// as to any; and a wss:// node may not send the device to ws://, out of
// their reach.
func nextEndpoint(from, server string, insecure bool) (string, error) {
	endpoint, err := checkedEndpoint(server, insecure)
	if err != nil {
		return "", err
	}
	if strings.HasPrefix(from, "wss:") && !strings.HasPrefix(endpoint, "wss:") {
		return "", fmt.Errorf("server URL %q: a wss:// server may not send the device to ws://", server)
	}
	return endpoint, nil
}

// secureEndpoint reports whether a device endpoint keeps the connection
// private: wss://, or ws:// that never leaves the machine.
func secureEndpoint(endpoint string) bool {
	u, err := url.Parse(endpoint)
	if err != nil {
		return false
	}
	if u.Scheme == "wss" {
		return true
	}
	host := u.Hostname()
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Link is the agent's connection, for whoever watches the network and the
// battery.
func (a *Agent) Link() *Link { return a.link }

// Run keeps the agent connected until ctx is done. It then closes the
// connection with a close frame, ends every listener and returns once every
// goroutine it or Listen started has stopped. An Agent runs once.
func (a *Agent) Run(ctx context.Context) error {
	if !a.running.CompareAndSwap(false, true) {
		return errors.New("agent: Run called twice")
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		a.expireLoop(ctx)
	}()
	go func() {
		defer wg.Done()
		a.probeLoop(ctx)
	}()
	a.log.Info("agent running", "servers", a.endpoints)
	err := a.link.Run(ctx, linkHandler{a})
	cancel()
	wg.Wait()
	a.inbox.stop()
	return err
}

// Status reports the agent's state.
func (a *Agent) Status(ctx context.Context) (ipc.Status, error) {
	st, err := a.store.Stats()
	if err != nil {
		return ipc.Status{}, fmt.Errorf("status: %w: %w", ipc.ErrStorage, err)
	}
	link := a.link.Stats()
	status := ipc.Status{
		Server:           link.Server,
		QueuedDownstream: st.Held,
		PendingUpstream:  st.Pending,
		Apps:             st.Apps,
	}
	switch creds, err := a.store.Credentials(); {
	case err == nil && a.ownsCredentials(creds):
		status.DeviceID = creds.DeviceID
	case err != nil && !errors.Is(err, store.ErrNotFound):
		return ipc.Status{}, fmt.Errorf("status: %w: %w", ipc.ErrStorage, err)
	}
	status.Connected = a.outbox.current() != nil
	a.condMu.Lock()
	status.PowerMode = a.powerMode
	if a.network != unknownNetwork {
		status.Network = a.network
	}
	if a.learner != nil {
		status.HeartbeatHeld = int(a.learner.known.Good / time.Second)
		status.HeartbeatFailed = int(a.learner.known.Bad / time.Second)
	}
	a.condMu.Unlock()
	status.Heartbeat = int(link.Heartbeat / time.Second)
	status.LastConnect, status.LastDisconnect = link.LastConnect, link.LastDisconnect
	status.Reconnects, status.Heartbeats = link.Reconnects, link.Heartbeats
	return status, nil
}

// credentialsServer is what stored credentials name as their server: the
// configured endpoints, one per line (control characters cannot be in a
// URL), stored at check-in and again when a session is welcomed with
// another list (adopt). The credentials belong to that cluster, whichever
// node issued them.
func (a *Agent) credentialsServer() string { return strings.Join(a.endpoints, "\n") }

// ownsCredentials reports whether creds are for the configured servers:
// whether a server stored with them (one, in a store from before clusters)
// is still among them. A wholly different list is another server, where
// the device checks in anew.
func (a *Agent) ownsCredentials(creds store.Credentials) bool {
	for s := range strings.SplitSeq(creds.Server, "\n") {
		if slices.Contains(a.endpoints, s) {
			return true
		}
	}
	return false
}

func (a *Agent) statusChanged() {
	if a.onStatus != nil {
		a.onStatus()
	}
}

// currentSession is the session to send on, or nil while offline.
func (a *Agent) currentSession() *Session { return a.outbox.current() }

// report gives the outcome of an upstream message to the channel Send
// returned (if this process made it) and to the app's listener.
func (a *Agent) report(r ipc.SendResult) {
	if ch := a.outbox.takeResult(outboxKey{r.App, r.ID}); ch != nil {
		ch <- r // buffered, written once
	}
	a.inbox.result(r)
}

func (a *Agent) signalExpiry() {
	select {
	case a.expiryChanged <- struct{}{}:
	default:
	}
}

// newID returns a random identifier for refs and message IDs.
func newID() string { return rand.Text() }
