// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"tether/server/natsstore"
	"tether/server/store"
	"tether/wire"
)

// metrics are the server's Prometheus metrics (docs/operations.md), in a
// registry of the server's own. Labels never carry a token, a key, a
// device ID or anything else that grows with the fleet: their values come
// from short fixed sets (error codes, routes, power modes, reasons).
type metrics struct {
	reg *prometheus.Registry

	sends            *prometheus.CounterVec // by api and result
	deliveries       prometheus.Counter
	acks             prometheus.Counter
	drops            *prometheus.CounterVec // by reason
	upstreamQueued   prometheus.Counter
	upstreamDone     *prometheus.CounterVec // by route
	upstreamRetries  *prometheus.CounterVec // by route
	upstreamDropped  prometheus.Counter
	webhookErrors    prometheus.Counter
	enrollments      *prometheus.CounterVec // by method
	deviceRefusals   *prometheus.CounterVec // by stage and code
	commitSeconds    prometheus.Histogram
	sessionsOpened   prometheus.Counter
	scrapeStoreError prometheus.Gauge
}

// Reasons a downstream message is dropped undelivered.
const (
	dropTTL0 = "ttl0" // time to live 0 and the device not connected, or idle
)

// Upstream routes, as metrics and logs name them.
const (
	routeWebhook = "webhook"
	routeXMPP    = "xmpp"
)

// Sends as metrics label them: accepted, or the error the sender got.
const (
	apiHTTP      = "http"
	apiXMPP      = "xmpp"
	sendAccepted = "accepted"
)

// storeScrapeTimeout bounds the store's part of a scrape: a store that
// cannot answer in time is reported as such, and the rest still scraped.
const storeScrapeTimeout = 5 * time.Second

func newMetrics() *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		sends: counterVec("tether_sends_total",
			"Downstream messages app servers sent, one per registration token or topic message, by API (http, xmpp) and result: accepted, or the error answered (GCM's error names over HTTP, CCS nack codes over XMPP).",
			"api", "result"),
		deliveries: counter("tether_deliveries_total",
			"Downstream messages written to device sessions, sends again after a reconnection included."),
		acks: counter("tether_acks_total",
			"Queued downstream messages that devices acked and the store deleted."),
		drops: counterVec("tether_dropped_messages_total",
			"Downstream messages dropped undelivered, by reason: expiry (time to live ran out), collapse (replaced by a newer one with its collapse key), cap (GCM's caps per app on a device), ttl0 (time to live 0 and the device not reachable at once).",
			"reason"),
		upstreamQueued: counter("tether_upstream_queued_total",
			"Upstream messages devices sent that the server stored for their app servers, repeats left out."),
		upstreamDone: counterVec("tether_upstream_delivered_total",
			"Upstream messages and receipts delivered to app servers, by route (webhook, xmpp).",
			"route"),
		upstreamRetries: counterVec("tether_upstream_retries_total",
			"Failed upstream delivery attempts that will be tried again, by route (webhook, xmpp).",
			"route"),
		upstreamDropped: counter("tether_upstream_dropped_total",
			"Upstream messages dropped undelivered: their time to live ran out, or their sender was removed."),
		webhookErrors: counter("tether_webhook_errors_total",
			"Webhook requests that failed: no answer, or an answer other than 2xx."),
		enrollments: counterVec("tether_enrollments_total",
			"Devices enrolled, by method: key (an enrollment key), fleet (the fleet key), cert (a device certificate), open.",
			"method"),
		deviceRefusals: counterVec("tether_device_refusals_total",
			"Device hellos refused, by stage (checkin: a new device enrolling; session: a known device) and the error code sent (docs/protocol.md).",
			"stage", "code"),
		commitSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "tether_store_commit_seconds",
			Help: "Time a store write took to be durable: with bbolt from its start to the fsync of the commit it shared, with JetStream until a quorum stored it.",
			// From a commit that shares an fsync on a fast disk to one
			// that waits on a slow or busy disk or a JetStream election.
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
		}),
		sessionsOpened: counter("tether_sessions_opened_total",
			"Device sessions opened."),
		scrapeStoreError: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "tether_store_scrape_error",
			Help: "1 when the store could not be read for this scrape (its gauges are then missing), else 0.",
		}),
	}
	m.reg.MustRegister(m.sends, m.deliveries, m.acks, m.drops, m.upstreamQueued, m.upstreamDone, m.upstreamRetries,
		m.upstreamDropped, m.webhookErrors, m.enrollments, m.deviceRefusals, m.commitSeconds, m.sessionsOpened,
		m.scrapeStoreError,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	// Every reason, route and accepted count shows from the start, at
	// 0, so that rates and alerts work before the first event.
	for _, r := range []string{string(store.DropExpired), string(store.DropCollapsed), string(store.DropCap), dropTTL0} {
		m.drops.WithLabelValues(r)
	}
	for _, api := range []string{apiHTTP, apiXMPP} {
		m.sends.WithLabelValues(api, sendAccepted)
	}
	for _, r := range []string{routeWebhook, routeXMPP} {
		m.upstreamDone.WithLabelValues(r)
		m.upstreamRetries.WithLabelValues(r)
	}
	return m
}

// counter makes a counter.
func counter(name, help string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
}

// counterVec makes a counter with labels.
func counterVec(name, help string, labels ...string) *prometheus.CounterVec {
	return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
}

// Committed is store.Observer's: the stores report each write's commit.
func (m *metrics) Committed(d time.Duration) { m.commitSeconds.Observe(d.Seconds()) }

// Dropped is store.Observer's: the stores report what the rules drop.
func (m *metrics) Dropped(reason store.DropReason, n int) {
	m.drops.WithLabelValues(string(reason)).Add(float64(n))
}

// sent counts the result of one send: accepted when code is empty.
func (m *metrics) sent(api, code string) {
	if code == "" {
		code = sendAccepted
	}
	m.sends.WithLabelValues(api, code).Inc()
}

// refusedDevice counts a refused hello: of a new device checking in, or
// of a known one.
func (m *metrics) refusedDevice(checkIn bool, code string) {
	stage := "session"
	if checkIn {
		stage = "checkin"
	}
	m.deviceRefusals.WithLabelValues(stage, code).Inc()
}

// enrolled counts a device enrolled as Device.EnrolledBy says, without
// the ID of its enrollment key.
func (m *metrics) enrolled(by string) {
	method, _, _ := strings.Cut(by, ":")
	m.enrollments.WithLabelValues(method).Inc()
}

// stateCollector reports, at each scrape, what the server holds: sessions
// by power mode and XMPP connections from memory, queued messages and
// the store's size from the store at a bounded cost (storeStats).
type stateCollector struct {
	srv      *Server
	sessions *prometheus.Desc
	xmpp     *prometheus.Desc
	queued   *prometheus.Desc
	oldest   *prometheus.Desc
	size     *prometheus.Desc
	free     *prometheus.Desc
	maxSize  *prometheus.Desc
}

// storeStats is a store that tells its size and queue at a cost that
// does not grow with the number of devices.
type storeStats interface {
	Stats(ctx context.Context) (store.Stats, error)
}

var (
	_ storeStats = (*store.Store)(nil)
	_ storeStats = (*natsstore.Store)(nil)
)

func newStateCollector(s *Server) *stateCollector {
	return &stateCollector{
		srv:      s,
		sessions: prometheus.NewDesc("tether_sessions", "Device sessions open on this server, by the power mode the device announced (mains, battery, low).", []string{"mode"}, nil),
		xmpp:     prometheus.NewDesc("tether_xmpp_connections", "XMPP (CCS) connections of app servers open on this server.", nil, nil),
		queued:   prometheus.NewDesc("tether_messages_queued", "Downstream messages stored and not yet acked or expired, on every device; absent on a cluster node.", nil, nil),
		oldest:   prometheus.NewDesc("tether_oldest_queued_message_age_seconds", "Age of the oldest downstream message still queued; 0 when none is.", nil, nil),
		size:     prometheus.NewDesc("tether_store_size_bytes", "Space the store takes: the bbolt file's size, or the bytes of the cluster's JetStream streams.", nil, nil),
		free:     prometheus.NewDesc("tether_store_free_bytes", "Part of tether_store_size_bytes that new records reuse before the file grows: bbolt's free pages; absent on a cluster node.", nil, nil),
		maxSize:  prometheus.NewDesc("tether_store_max_size_bytes", "The store's cap (--max-store-size), past which sends are refused; absent without a cap.", nil, nil),
	}
}

func (c *stateCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.sessions, c.xmpp, c.queued, c.oldest, c.size, c.free, c.maxSize} {
		ch <- d
	}
}

func (c *stateCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.srv
	modes := s.hub.modes()
	for _, mode := range []string{wire.ModeMains, wire.ModeBattery, wire.ModeLow} {
		ch <- prometheus.MustNewConstMetric(c.sessions, prometheus.GaugeValue, float64(modes[mode]), mode)
	}
	if s.ccs != nil {
		ch <- prometheus.MustNewConstMetric(c.xmpp, prometheus.GaugeValue, float64(s.ccs.connCount()))
	}
	if s.cfg.MaxStoreSize > 0 {
		ch <- prometheus.MustNewConstMetric(c.maxSize, prometheus.GaugeValue, float64(s.cfg.MaxStoreSize))
	}
	ss, ok := s.store.(storeStats)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), storeScrapeTimeout)
	defer cancel()
	st, err := ss.Stats(ctx)
	if err != nil {
		s.log.Warn("read the store for metrics", "err", err)
		s.metrics.scrapeStoreError.Set(1)
		return
	}
	s.metrics.scrapeStoreError.Set(0)
	age := 0.0
	if !st.Oldest.IsZero() {
		age = max(s.now().Sub(st.Oldest).Seconds(), 0)
	}
	if st.Messages >= 0 {
		ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(st.Messages))
	}
	ch <- prometheus.MustNewConstMetric(c.oldest, prometheus.GaugeValue, age)
	ch <- prometheus.MustNewConstMetric(c.size, prometheus.GaugeValue, float64(st.Bytes))
	if st.Free >= 0 {
		ch <- prometheus.MustNewConstMetric(c.free, prometheus.GaugeValue, float64(st.Free))
	}
}

// metricsPath is where the metrics listener serves; nothing else is
// served there.
const metricsPath = "/metrics"

// metricsHandler serves the registry in Prometheus' formats.
func (s *Server) metricsHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+metricsPath, promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{
		ErrorLog:      slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
		ErrorHandling: promhttp.ContinueOnError,
		Timeout:       2 * storeScrapeTimeout,
	}))
	return mux
}

// listenMetrics binds Config.MetricsListen; nil without one.
func (s *Server) listenMetrics() (net.Listener, error) {
	if s.cfg.MetricsListen == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", s.cfg.MetricsListen)
	if err != nil {
		return nil, fmt.Errorf("listen for metrics: %w", err)
	}
	return ln, nil
}

// serveMetrics serves the metrics on ln until ctx ends.
func (s *Server) serveMetrics(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.metricsHandler(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      3 * storeScrapeTimeout,
		IdleTimeout:       2 * time.Minute,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
	}
	stopped := context.AfterFunc(ctx, func() { srv.Close() })
	defer stopped()
	if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve metrics: %w", err)
	}
	return nil
}

// MetricsAddr is the bound address of the metrics listener, or nil
// without one or before Listen.
func (s *Server) MetricsAddr() net.Addr { return s.boundAddr(&s.metricsLn) }
