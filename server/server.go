// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/gorilla/websocket"

	"tether/server/internal/clientip"
	"tether/server/store"
	"tether/wire"
)

// Files in the data directory.
const (
	storeFile       = "server.db"
	adminSocketFile = "admin.sock"
)

// Config configures a Server. DataDir is required; zero durations and
// counts take the defaults named on each field.
type Config struct {
	// DataDir holds the store and the admin socket; it is created with
	// mode 0700. With NATS set it holds only this node's files.
	DataDir string
	// NATS, when set, makes the server one node of a cluster whose state
	// is in NATS JetStream (docs/scaling.md); without it the state is a
	// bbolt file in DataDir.
	NATS *NATSConfig
	// PublicURL is the URL devices and app servers reach this server at,
	// such as wss://push.example.com or https://push.example.com: one
	// listener, whatever the scheme says. Other nodes of a cluster name it
	// to devices when this one shuts down (unless NATS.PublicURL is set);
	// app servers are given its origin (PublicOrigin) in the URLs the
	// server hands out for them. Empty: none is known.
	PublicURL string
	// Listen is the TCP address for app servers and devices; default
	// "127.0.0.1:8080". Port 0 picks a free port (see Addr).
	Listen string
	// MetricsListen, when set, is the TCP address where GET /metrics
	// serves Prometheus metrics (docs/operations.md): a listener of its
	// own, never the public one, since it needs no key and tells what the
	// fleet does. Off by default.
	MetricsListen string
	// TLSCert and TLSKey are PEM files; with both set the listener speaks
	// HTTPS and WSS. Reload reads them again.
	TLSCert, TLSKey string
	// ACME, instead of TLSCert and TLSKey, has the listeners' certificate
	// obtained and renewed from an ACME CA such as Let's Encrypt.
	ACME *ACMEConfig
	// EnrollKey, when set, is the fleet-wide enrollment key: a device that
	// presents it in its check-in enrolls. At least MinEnrollKeyLen
	// characters. Devices also enroll with per-device keys (Admin's
	// AddEnrollKey), whatever is set here.
	EnrollKey string
	// DeviceCA is a PEM file of the CAs whose client certificates let a
	// device enroll without a key, its identity bound to the certificate.
	// It needs TLSCert: TLS must end at this server.
	DeviceCA string
	// OpenEnrollment lets a device enroll with no key or certificate. New
	// refuses a server that no device could enroll with (ErrNoEnrollment)
	// unless it is set.
	OpenEnrollment bool
	// DeviceExpiry removes the devices not seen for this long, with their
	// registrations, whose tokens then answer NotRegistered; default 270
	// days, as FCM treats stale tokens, negative for never.
	DeviceExpiry time.Duration
	// SeenInterval is how often at most a device's last seen time is
	// written, while its sessions come and go or stay open; default 10
	// minutes.
	SeenInterval time.Duration
	Logger       *slog.Logger
	// Now is the clock for message times and expiry; default time.Now.
	Now func() time.Time
	// MaxStoreSize caps the store file in bytes; once full, sends answer
	// 503 Unavailable. Zero means no cap.
	MaxStoreSize int

	// Heartbeat is the session timeout used when a hello asks for 0;
	// default 5 minutes.
	Heartbeat time.Duration
	// HeartbeatGrace is added to a session's heartbeat before it is
	// closed for silence; default 90 seconds.
	HeartbeatGrace time.Duration
	// MaxHeartbeat caps the heartbeat a device may announce; the welcome
	// tells it the cap. Default 30 minutes: the agent's longest learned
	// heartbeat, 28 minutes, and a grace.
	MaxHeartbeat time.Duration
	// HeaderTimeout bounds reading a request's headers, so that a client
	// that sends them slowly cannot hold a connection; default 10 s.
	HeaderTimeout time.Duration
	// HelloTimeout bounds the wait for the first frame; default 10 s.
	HelloTimeout time.Duration
	// WriteTimeout bounds every write to a device; default 10 s.
	WriteTimeout time.Duration
	// Window is the most messages in flight to one session whose ack the
	// server has not read (it commits acks after it reads them); default
	// 100.
	Window int

	// WebhookTimeout bounds one webhook request; default 30 s.
	WebhookTimeout time.Duration
	// RetryMin and RetryMax bound the exponential backoff between upstream
	// delivery attempts; defaults 1 s and 10 minutes.
	RetryMin, RetryMax time.Duration

	// DeviceRateLimit bounds the messages accepted for one device per
	// minute, in bursts of up to as many; beyond it sends to the device's
	// tokens answer DeviceMessageRateExceeded. Zero means no limit.
	DeviceRateLimit int
	// TopicRateLimit bounds the messages accepted per minute for one
	// sender's topic (or condition); beyond it topic sends answer
	// TopicsMessageRateExceeded. Zero means no limit.
	TopicRateLimit int
	// UpstreamRateLimit bounds the upstream messages one device may store
	// per minute, in bursts of up to as many; beyond it its upstream
	// frames are answered unavailable, and the agent sends them again
	// later. Repeats and refusals do not count. It holds per node: a
	// device's session is on one node, and the device moves only by
	// reconnecting, which ReconnectLimit bounds. Default 60, negative
	// for no limit.
	UpstreamRateLimit int
	// FanOutBatch is the number of topic subscribers copied per store
	// transaction; default 1000.
	FanOutBatch int

	// AuthFailureLimit bounds the failed authentications of app servers
	// per minute from one IP address, in bursts of as many; beyond it the
	// address's failures are slowed and answered HTTP 429 or a SASL
	// temporary-auth-failure until the budget refills. A right key is
	// never refused. Default 20, negative for none.
	AuthFailureLimit int
	// TrustedProxies are the networks of the proxies and load balancers in
	// front: a request from one is taken to come from the address its
	// X-Forwarded-For names, and a connection from one from the address
	// its PROXY protocol header (v1 or v2) names, on the HTTP and XMPP
	// listeners. The per-address limits count that address.
	TrustedProxies []netip.Prefix
	// ConnsPerIP caps the connections one client address (an IPv6 /64)
	// holds open on the HTTP listener, device sessions apart, and on the
	// XMPP listener; default 64, negative for none.
	ConnsPerIP int
	// SessionsPerIP caps the device connections (sessions, probes and
	// hellos under way) of one client address; beyond it a device gets a
	// goaway. Default 1024, negative for none: devices behind a large NAT
	// share its address.
	SessionsPerIP int
	// CheckInLimit bounds the devices that enroll from one IP address per
	// minute, in bursts of as many; beyond it a check-in gets a goaway.
	// Default 30, negative for none: a factory that enrolls its devices
	// from behind one address raises it.
	CheckInLimit int
	// EnrollFailureLimit bounds the refused device credentials (enrollment
	// keys, device secrets, revoked devices) from one IP address per
	// minute; beyond it each refusal is a goaway that asks for a minute's
	// wait. Right credentials are never refused. Default 10, negative for
	// none.
	EnrollFailureLimit int

	// BatteryMaxDelay is the longest a normal-priority message waits for
	// a device on battery before it is pushed anyway, counted from when
	// it was sent; default 15 minutes.
	BatteryMaxDelay time.Duration
	// StoreRetryAfter is the wait a goaway asks of a device refused
	// because the store is unavailable, spread at random between half of
	// it and one and a half times it for each refusal; default 30 s.
	StoreRetryAfter time.Duration
	// ShutdownSpread bounds the random wait a goaway asks of each device
	// when the server shuts down, so that a fleet does not come back in
	// one instant; default 10 s, negative for none.
	ShutdownSpread time.Duration
	// ReconnectLimit bounds the sessions and probes one device may open
	// per minute, in bursts of as many; beyond it the device gets a
	// goaway. Default 30, negative for no limit.
	ReconnectLimit int

	// XMPPListen, when set, is the TCP address of the CCS endpoint, where
	// app servers hold XMPP connections as they did with GCM's Cloud
	// Connection Server (port 5235 by convention). It speaks direct TLS
	// with TLSCert and TLSKey, or plain XMPP with XMPPPlaintext.
	XMPPListen string
	// XMPPPlaintext serves the CCS endpoint without TLS, for a proxy in
	// front that terminates TLS: the server key crosses the network in
	// the clear otherwise.
	XMPPPlaintext bool
	// XMPPDomain is accepted as the domain of the SASL user
	// (SENDER_ID@DOMAIN) besides gcm.googleapis.com and fcm.googleapis.com.
	XMPPDomain string
	// XMPPAckTimeout is how long an upstream message sent on an XMPP
	// connection waits for the app server's ack before it is sent again;
	// default 30 s.
	XMPPAckTimeout time.Duration
	// XMPPDrainTimeout is how long a draining XMPP connection is given to
	// answer what is outstanding on it before it is closed; default 10 s.
	XMPPDrainTimeout time.Duration

	// xmppMaxConns bounds the XMPP connections of one sender; default
	// maxCCSConns (tests lower it).
	xmppMaxConns int
	// ccsBatch is called with the size of each batch of downstream
	// messages an XMPP connection stores (tests).
	ccsBatch func(n int)

	// fanOutDone is called after each topic message is fanned out (tests).
	fanOutDone func(tm store.TopicMessage, copies int)
	// afterFunc arms the timers of held messages; default time.AfterFunc
	// (tests fire them by hand).
	afterFunc func(time.Duration, func()) stopper
	// wrapStore, when set, stands between the server and its store
	// (tests fail some of its calls).
	wrapStore func(store.Backend) store.Backend
}

// stopper is a timer that can be stopped, as *time.Timer is.
type stopper interface{ Stop() bool }

func (c *Config) setDefaults() {
	set := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	if c.Listen == "" {
		c.Listen = "127.0.0.1:8080"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	set(&c.Heartbeat, 5*time.Minute)
	set(&c.HeartbeatGrace, 90*time.Second)
	set(&c.HeaderTimeout, 10*time.Second)
	set(&c.HelloTimeout, 10*time.Second)
	set(&c.WriteTimeout, 10*time.Second)
	set(&c.WebhookTimeout, 30*time.Second)
	set(&c.RetryMin, time.Second)
	set(&c.RetryMax, 10*time.Minute)
	if c.Window <= 0 {
		c.Window = 100
	}
	if c.FanOutBatch <= 0 {
		c.FanOutBatch = 1000
	}
	if c.xmppMaxConns <= 0 {
		c.xmppMaxConns = maxCCSConns
	}
	set(&c.XMPPAckTimeout, 30*time.Second)
	set(&c.XMPPDrainTimeout, 10*time.Second)
	set(&c.BatteryMaxDelay, 15*time.Minute)
	set(&c.StoreRetryAfter, 30*time.Second)
	if c.ShutdownSpread == 0 {
		c.ShutdownSpread = 10 * time.Second
	}
	c.ShutdownSpread = max(c.ShutdownSpread, 0)
	if c.ReconnectLimit == 0 {
		c.ReconnectLimit = 30
	}
	set(&c.MaxHeartbeat, 30*time.Minute)
	set(&c.SeenInterval, 10*time.Minute)
	if c.DeviceExpiry == 0 {
		c.DeviceExpiry = 270 * 24 * time.Hour
	}
	for _, l := range []struct {
		v   *int
		def int
	}{{&c.AuthFailureLimit, 20}, {&c.UpstreamRateLimit, 60}, {&c.CheckInLimit, 30}, {&c.EnrollFailureLimit, 10}, {&c.ConnsPerIP, 64}, {&c.SessionsPerIP, 1024}} {
		if *l.v == 0 {
			*l.v = l.def
		}
	}
	if c.afterFunc == nil {
		c.afterFunc = func(d time.Duration, f func()) stopper { return time.AfterFunc(d, f) }
	}
}

// Server is the connection server. Create it with New, run it with Serve
// and Close it after Serve returns.
type Server struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	store store.Backend
	// tls is the HTTPS listener's, which asks devices for certificates
	// with a device CA; xmppTLS the XMPP endpoint's.
	tls, xmppTLS *tls.Config
	// cert is the certificate from Config.TLSCert, which Reload reads
	// again; nil without.
	cert *certificate
	hub  *hub
	up   *dispatcher
	fan  *fanout
	ccs  *ccs // nil without XMPPListen

	node *node // nil on a single machine

	// The rate limits, which Reload may change (setLimits).
	deviceRate swapLimiter
	topicRate  swapLimiter
	reconnects swapLimiter // sessions and probes opened per device
	// upstreamRate counts the upstream messages each device stores, on
	// this process.
	upstreamRate swapLimiter
	// authFailures counts failed app server authentications by address,
	// and enrollFailures refused device credentials, on this process.
	authFailures, enrollFailures swapLimiter
	// checkIns counts the devices enrolled by address.
	checkIns swapLimiter
	// refusals logs what is refused, quietly.
	refusals *quietLog
	// conns and xmppConns count the connections of each client address on
	// the HTTP and XMPP listeners, sessions those of devices.
	conns, xmppConns, sessions *clientip.Counter

	upgrader *websocket.Upgrader
	// drain, once asked for, sends the device sessions elsewhere.
	drain   drainer
	metrics *metrics
	// origin is PublicOrigin's answer, worked out once from
	// Config.PublicURL, which a reload does not change.
	origin string

	mu      sync.Mutex
	ln      net.Listener // the TCP listener, before TLS
	xmppLn  net.Listener // the CCS endpoint's, before TLS; nil without
	adminLn net.Listener
	// metricsLn serves Config.MetricsListen; nil without.
	metricsLn net.Listener
	served    bool
}

// New prepares the data directory and opens the store: the bbolt file in
// it, or with Config.NATS the cluster's state. It fails fast when another
// process holds the data directory.
func New(cfg Config) (*Server, error) {
	cfg.setDefaults()
	if cfg.DataDir == "" {
		return nil, errors.New("new server: no data directory")
	}
	if cfg.PublicURL != "" {
		if _, err := wire.ParseServerURL(cfg.PublicURL); err != nil {
			return nil, fmt.Errorf("new server: public URL %q: %w", cfg.PublicURL, err)
		}
		if cfg.NATS != nil && cfg.NATS.PublicURL == "" {
			nats := *cfg.NATS
			nats.PublicURL = cfg.PublicURL
			cfg.NATS = &nats
		}
	}
	if (cfg.TLSCert == "") != (cfg.TLSKey == "") {
		return nil, errors.New("new server: TLS needs both a certificate and a key")
	}
	if cfg.ACME != nil && cfg.TLSCert != "" {
		return nil, errors.New("new server: the certificate comes from files or from ACME, not both")
	}
	var (
		tlsConfig, xmppTLS *tls.Config
		cert               *certificate
	)
	if cfg.TLSCert != "" {
		var err error
		if cert, err = loadCertificate(cfg.TLSCert, cfg.TLSKey); err != nil {
			return nil, fmt.Errorf("new server: %w", err)
		}
		// Asked for at each handshake, so that a reload reaches new
		// connections on both listeners.
		tlsConfig = &tls.Config{GetCertificate: cert.get, MinVersion: tls.VersionTLS12}
		xmppTLS = tlsConfig
	}
	if cfg.ACME != nil {
		var err error
		if tlsConfig, err = acmeTLS(cfg); err != nil {
			return nil, fmt.Errorf("new server: %w", err)
		}
		// XMPP clients name no ALPN protocol; the CA's challenge comes
		// to the HTTPS listener.
		xmppTLS = tlsConfig.Clone()
		xmppTLS.NextProtos = nil
	}
	if cfg.XMPPListen != "" && tlsConfig == nil && !cfg.XMPPPlaintext {
		return nil, errors.New("new server: the XMPP endpoint needs a TLS certificate and key, or plaintext behind a proxy that terminates TLS")
	}
	if cfg.DeviceCA != "" {
		if tlsConfig == nil {
			return nil, errors.New("new server: a device CA needs TLS to end here: give a TLS certificate and key")
		}
		pool, err := loadDeviceCA(cfg.DeviceCA)
		if err != nil {
			return nil, fmt.Errorf("new server: %w", err)
		}
		// Asked of devices on the HTTPS listener only; app servers send
		// none, and the XMPP endpoint asks for none.
		tlsConfig = tlsConfig.Clone()
		tlsConfig.ClientAuth, tlsConfig.ClientCAs = tls.VerifyClientCertIfGiven, pool
	}
	if err := prepareDataDir(cfg.DataDir); err != nil {
		return nil, fmt.Errorf("new server: %w", err)
	}
	s := &Server{cfg: cfg, log: cfg.Logger, now: cfg.Now, cert: cert, tls: tlsConfig, xmppTLS: xmppTLS, upgrader: newUpgrader(), metrics: newMetrics(),
		origin: publicOrigin(cfg.PublicURL)}
	s.metrics.reg.MustRegister(newStateCollector(s))
	s.hub = newHub(s.metrics.drops.WithLabelValues(dropTTL0))
	s.fan = newFanout(s)
	if err := s.openState(); err != nil {
		return nil, fmt.Errorf("new server: %w", err)
	}
	if s.cfg.wrapStore != nil {
		s.store = s.cfg.wrapStore(s.store)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	err := s.checkEnrollment(ctx)
	cancel()
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("new server: %w", err)
	}
	s.refusals = newQuietLog(s.log, refusalLogInterval, time.Now)
	s.conns, s.xmppConns, s.sessions = clientip.NewCounter(cfg.ConnsPerIP), clientip.NewCounter(cfg.ConnsPerIP), clientip.NewCounter(cfg.SessionsPerIP)
	if err := s.setLimits(cfg); err != nil {
		s.Close()
		return nil, fmt.Errorf("new server: %w", err)
	}
	if cfg.XMPPListen != "" {
		if s.ccs, err = newCCS(s); err != nil {
			s.Close()
			return nil, fmt.Errorf("new server: %w", err)
		}
	}
	return s, nil
}

// openState opens the bbolt file, or joins the cluster.
func (s *Server) openState() error {
	if s.cfg.NATS == nil {
		st, err := store.Open(filepath.Join(s.cfg.DataDir, storeFile), store.Options{MaxSize: s.cfg.MaxStoreSize, Observer: s.metrics})
		if err != nil {
			return err
		}
		s.store = st
		s.up = newDispatcher(s)
		return nil
	}
	// The dispatcher comes first: the node hands it work as soon as it
	// joins.
	s.up = newDispatcher(s)
	n, err := joinCluster(s, *s.cfg.NATS)
	if err != nil {
		return err
	}
	s.node, s.store = n, n.st
	s.hub.bus = n.devices
	s.up.store, s.up.cluster = n.st, n
	return nil
}

// prepareDataDir creates dir with mode 0700, or narrows an existing one.
func prepareDataDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create data directory: %w", err)
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return fmt.Errorf("restrict data directory: %w", err)
	}
	return nil
}

// Listen binds the TCP listener and the admin socket. Serve calls it when
// it was not called before; call it first to learn Addr before serving.
func (s *Server) Listen() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return errors.New("listen: already listening")
	}
	ln, err := listenTCP(s.cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	ln = s.clientListener(ln, s.conns)
	var xmppLn net.Listener
	if s.cfg.XMPPListen != "" {
		if xmppLn, err = listenTCP(s.cfg.XMPPListen); err != nil {
			ln.Close()
			return fmt.Errorf("listen for XMPP: %w", err)
		}
		xmppLn = s.clientListener(xmppLn, s.xmppConns)
	}
	metricsLn, err := s.listenMetrics()
	if err != nil {
		ln.Close()
		if xmppLn != nil {
			xmppLn.Close()
		}
		return fmt.Errorf("listen: %w", err)
	}
	adminLn, err := listenAdmin(filepath.Join(s.cfg.DataDir, adminSocketFile))
	if err != nil {
		ln.Close()
		if xmppLn != nil {
			xmppLn.Close()
		}
		if metricsLn != nil {
			metricsLn.Close()
		}
		return fmt.Errorf("listen: %w", err)
	}
	s.ln, s.xmppLn, s.adminLn, s.metricsLn = ln, xmppLn, adminLn, metricsLn
	return nil
}

// XMPPAddr is the bound address of the CCS endpoint, or nil without one or
// before Listen.
func (s *Server) XMPPAddr() net.Addr { return s.boundAddr(&s.xmppLn) }

// boundAddr is the address of *ln, read under s.mu, or nil before Listen
// or without that listener.
func (s *Server) boundAddr(ln *net.Listener) net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if *ln == nil {
		return nil
	}
	return (*ln).Addr()
}

// Addr is the bound TCP address, or nil before Listen.
func (s *Server) Addr() net.Addr { return s.boundAddr(&s.ln) }

// Serve serves until ctx ends, then stops taking requests, closes every
// device session with a close frame, waits for its goroutines and returns
// nil. It returns an error when it cannot listen or serve.
func (s *Server) Serve(ctx context.Context) error {
	if s.Addr() == nil {
		if err := s.Listen(); err != nil {
			return fmt.Errorf("serve: %w", err)
		}
	}
	s.mu.Lock()
	if s.served {
		s.mu.Unlock()
		return errors.New("serve: already served")
	}
	s.served = true
	ln, xmppLn, adminLn, metricsLn := s.ln, s.xmppLn, s.adminLn, s.metricsLn
	s.mu.Unlock()

	scheme := "http"
	if s.tls != nil {
		ln = tls.NewListener(ln, s.tls)
		scheme = "https"
	}
	errorLog := slog.NewLogLogger(s.log.Handler(), slog.LevelDebug)
	api := &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: s.cfg.HeaderTimeout,
		// Both apply until a device connection is hijacked; sessions set
		// their own deadlines from then on.
		ReadTimeout:  30 * time.Second,
		WriteTimeout: 30 * time.Second,
		IdleTimeout:  2 * time.Minute,
		ErrorLog:     errorLog,
	}
	admin := &http.Server{Handler: s.adminHandler(), ReadHeaderTimeout: 10 * time.Second, ErrorLog: errorLog}

	// Said before anything is served, so that whoever reads the log sees
	// it before any answer: the listeners are open already.
	s.log.Info("listening", "addr", ln.Addr().String(), "scheme", scheme,
		"admin_socket", adminLn.Addr().String(), "fleet_enroll_key", s.cfg.EnrollKey != "", "device_ca", s.cfg.DeviceCA != "")
	if s.cfg.OpenEnrollment {
		s.log.Warn("open enrollment: any device that reaches this server can check in; on a public address use enrollment keys or a device CA (docs/security.md)")
	}
	if s.ccs != nil {
		s.log.Info("listening for XMPP", "addr", xmppLn.Addr().String(), "tls", !s.cfg.XMPPPlaintext)
	}
	if metricsLn != nil {
		s.log.Info("serving metrics", "addr", metricsLn.Addr().String(), "path", metricsPath)
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	serveErr := make(chan error, 4)
	for _, srv := range []struct {
		http *http.Server
		ln   net.Listener
	}{{api, ln}, {admin, adminLn}} {
		wg.Go(func() {
			if err := srv.http.Serve(srv.ln); !errors.Is(err, http.ErrServerClosed) {
				serveErr <- err
			}
		})
	}
	if sw, ok := s.store.(store.Sweeper); ok {
		wg.Go(func() { s.sweepLoop(ctx, sw) })
	}
	if s.cfg.DeviceExpiry > 0 {
		wg.Go(func() { s.expireLoop(ctx) })
	}
	if metricsLn != nil {
		wg.Go(func() {
			if err := s.serveMetrics(ctx, metricsLn); err != nil {
				serveErr <- err
			}
		})
	}
	wg.Go(func() { s.up.run(ctx) })
	wg.Go(func() { s.drainLoop(ctx) })
	wg.Go(func() { s.fan.run(ctx) })
	if s.node != nil {
		s.node.run(ctx, &wg)
	}
	// The XMPP endpoint outlives ctx: it drains its connections first.
	xmppCtx, stopXMPP := context.WithCancel(context.WithoutCancel(ctx))
	defer stopXMPP()
	if s.ccs != nil {
		wg.Go(func() {
			if err := s.ccs.serve(xmppCtx, xmppLn); err != nil {
				serveErr <- err
			}
		})
	}
	var err error
	select {
	case <-ctx.Done():
	case err = <-serveErr:
		err = fmt.Errorf("serve: %w", err)
	}
	s.log.Info("shutting down")
	shutdownCtx, done := context.WithTimeout(context.Background(), 5*time.Second)
	defer done()
	// Shutdown ends in-flight sends gracefully; device sessions are
	// hijacked connections it does not track, so the hub closes them.
	api.Shutdown(shutdownCtx)
	var draining sync.WaitGroup
	if s.ccs != nil {
		// App servers are told to go and given a while to ack what is
		// outstanding, while the devices are sent away.
		draining.Go(func() { s.ccs.drain(s.cfg.XMPPDrainTimeout, true) })
	}
	s.hub.shutdown(s.shutdownGoAway, s.cfg.WriteTimeout)
	draining.Wait()
	stopXMPP()
	admin.Shutdown(shutdownCtx)
	cancel()
	wg.Wait()
	return err
}

// Close closes the store. Call it after Serve has returned, or instead of
// Serve.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.ln != nil && !s.served {
		s.ln.Close()
		s.adminLn.Close()
		if s.xmppLn != nil {
			s.xmppLn.Close()
		}
		if s.metricsLn != nil {
			s.metricsLn.Close()
		}
	}
	s.mu.Unlock()
	if s.node != nil {
		s.node.close()
		return nil
	}
	if s.store == nil {
		return nil
	}
	return s.store.Close()
}

func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok")
	})
	mux.HandleFunc("POST /gcm/send", s.handleSend)
	mux.HandleFunc("POST /fcm/send", s.handleSend)
	mux.HandleFunc("POST /iid/v1:batchAdd", s.handleBatchSubscriptions(true))
	mux.HandleFunc("POST /iid/v1:batchRemove", s.handleBatchSubscriptions(false))
	mux.HandleFunc("POST /iid/v1/{token}/rel/topics/{topic}", s.handleSubscribeOne)
	mux.HandleFunc("GET /iid/info/{token}", s.handleInfo)
	mux.HandleFunc("POST /token", s.handleToken)
	// Where Node's firebase-admin asks for tokens, whatever its file says.
	mux.HandleFunc("POST /o/oauth2/token", s.handleToken)
	mux.HandleFunc("POST /v1/projects/{project}/messages:send", s.handleSendV1)
	mux.HandleFunc("POST "+webPushPath+"{token}", s.handleWebPush)
	mux.HandleFunc("GET "+wire.Path, s.handleDevice)
	return mux
}

// sweepLoop deletes expired messages from a store that must be told to,
// waking at the next expiry but at most once a minute and at least once
// an hour. Expired messages are never delivered whether swept or not;
// sweeping only frees the space.
func (s *Server) sweepLoop(ctx context.Context, sw store.Sweeper) {
	const minWait, maxWait = time.Minute, time.Hour
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		now := s.now()
		next, n, err := sw.SweepExpired(ctx, now)
		wait := maxWait
		switch {
		case err != nil:
			s.log.Error("sweep expired messages", "err", err)
			wait = minWait
		case !next.IsZero():
			wait = min(max(next.Sub(now), minWait), maxWait)
		}
		if n > 0 {
			s.log.Debug("swept expired entries", "count", n)
		}
		timer.Reset(wait)
	}
}

// expiryEvery is how often the devices not seen for Config.DeviceExpiry
// are looked for.
const expiryEvery = 6 * time.Hour

// expireLoop removes the devices not seen for Config.DeviceExpiry, at
// start and then every expiryEvery; on a cluster, the node that holds the
// first partition does.
func (s *Server) expireLoop(ctx context.Context) {
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-timer.C:
		}
		if s.node == nil || s.node.leases.Holds(0) {
			now := s.now()
			gone, err := s.store.ExpireDevices(ctx, now.Add(-s.cfg.DeviceExpiry), now)
			if err != nil && ctx.Err() == nil {
				s.log.Error("remove stale devices", "err", err)
			}
			for _, id := range gone {
				s.hub.end(id)
			}
			if len(gone) > 0 {
				s.log.Info("stale devices removed", "count", len(gone), "not_seen_for", s.cfg.DeviceExpiry)
			}
		}
		timer.Reset(expiryEvery)
	}
}

// clientListener wraps a TCP listener, under its TLS: it learns the
// address of a client behind a trusted proxy, and caps the connections of
// each client with conns.
func (s *Server) clientListener(ln net.Listener, conns *clientip.Counter) net.Listener {
	return clientip.NewListener(ln, clientip.Config{
		Trusted: s.cfg.TrustedProxies, Conns: conns, Logger: s.log,
		Refused: func(client netip.Addr, err error) {
			s.refusals.refused(clientip.Key(client).String(), "connection refused", "err", err)
		},
	})
}

// listenTCP listens with TCP keepalive off. Go turns it on for every
// accepted connection (a probe every 15 s), and on an idle device session
// each probe wakes the device's radio: the agent's heartbeat is the only
// one a session needs, and the server's read deadline catches dead peers.
func listenTCP(addr string) (net.Listener, error) {
	lc := net.ListenConfig{KeepAlive: -1}
	return lc.Listen(context.Background(), "tcp", addr)
}

// PublicOrigin is the origin app servers reach this server at, from
// Config.PublicURL with ws and wss read as http and https
// ("https://push.example.com"), or "" when no public URL is configured.
func (s *Server) PublicOrigin() string { return s.origin }

// publicOrigin is the origin of a public URL as PublicOrigin gives it, or
// "" for none or one that is not a server URL.
func publicOrigin(publicURL string) string {
	u, err := wire.ParseServerURL(publicURL)
	if publicURL == "" || err != nil {
		return ""
	}
	switch u.Scheme {
	case "ws":
		u.Scheme = "http"
	case "wss":
		u.Scheme = "https"
	}
	return u.Scheme + "://" + u.Host
}
