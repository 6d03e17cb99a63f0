// SPDX-License-Identifier: Apache-2.0

package server

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"tether/internal/testwait"
	"tether/wire"
)

// scrape is one read of /metrics: its text and its parsed families.
type scrape struct {
	text     string
	families map[string]*dto.MetricFamily
}

// scrapeMetrics GETs url and parses the answer as Prometheus text.
func scrapeMetrics(t *testing.T, url string) scrape {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("scrape: %s: %s", resp.Status, body)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("scrape: Content-Type %q, want Prometheus text", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(strings.NewReader(string(body)))
	if err != nil {
		t.Fatalf("scrape does not parse as Prometheus text: %v\n%s", err, body)
	}
	return scrape{text: string(body), families: families}
}

// value is the value of the sample of name whose labels include labels
// (name=value pairs); ok is false when there is none. A histogram gives
// its count.
func (s scrape) value(name string, labels ...string) (v float64, ok bool) {
	f := s.families[name]
	if f == nil {
		return 0, false
	}
samples:
	for _, m := range f.Metric {
		for i := 0; i+1 < len(labels); i += 2 {
			found := false
			for _, l := range m.Label {
				if l.GetName() == labels[i] && l.GetValue() == labels[i+1] {
					found = true
				}
			}
			if !found {
				continue samples
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount()), true
		case m.Untyped != nil:
			return m.Untyped.GetValue(), true
		}
	}
	return 0, false
}

// metricsServer is a test server with its metrics listener.
type metricsServer struct {
	*testServer
	url string
}

func startMetricsServer(t *testing.T, mod func(*Config)) metricsServer {
	t.Helper()
	ts := startServer(t, func(c *Config) {
		c.MetricsListen = "127.0.0.1:0"
		if mod != nil {
			mod(c)
		}
	})
	return metricsServer{ts, "http://" + ts.MetricsAddr().String() + metricsPath}
}

// waitFor scrapes until name with labels has the value want: what the
// server counts after it answered (a delivery after the webhook's answer,
// a session's end after the close) lands a moment later.
func (ms metricsServer) waitFor(t *testing.T, want float64, name string, labels ...string) scrape {
	t.Helper()
	var s scrape
	testwait.For(t, fmt.Sprintf("%s%v to be %v", name, labels, want), 30*time.Second, func() error {
		s = scrapeMetrics(t, ms.url)
		if got, ok := s.value(name, labels...); !ok || got != want {
			return fmt.Errorf("%v (present: %v)", got, ok)
		}
		return nil
	})
	return s
}

// syncAcks returns once the acks d sent before are committed: the server
// answers a ping only then, and handles the ping before the frame after.
func syncAcks(d *device, app, sender string) {
	d.t.Helper()
	d.conn.WriteControl(websocket.PingMessage, []byte("sync"), time.Now().Add(10*time.Second))
	d.register(app, sender)
}

// TestMetricsFollowTraffic drives a server with HTTP sends, device
// sessions over the wire protocol and a webhook, and checks that each
// counter and gauge on /metrics moved by what was done.
func TestMetricsFollowTraffic(t *testing.T) {
	const maxStore = 64 << 20
	ms := startMetricsServer(t, func(c *Config) { c.MaxStoreSize = maxStore })
	hook := newWebhook(t, 1) // the first upstream attempt fails
	snd := ms.addSender(hook.URL)
	const app = "com.example.metrics"

	// Every series an alert relies on is there before any traffic.
	s := scrapeMetrics(t, ms.url)
	for _, want := range []struct {
		name   string
		labels []string
	}{
		{"tether_dropped_messages_total", []string{"reason", "expiry"}},
		{"tether_dropped_messages_total", []string{"reason", "ttl0"}},
		{"tether_upstream_delivered_total", []string{"route", "webhook"}},
		{"tether_upstream_retries_total", []string{"route", "xmpp"}},
		{"tether_sessions", []string{"mode", "battery"}},
		{"tether_messages_queued", nil},
		{"tether_oldest_queued_message_age_seconds", nil},
		{"tether_store_size_bytes", nil},
		{"tether_store_free_bytes", nil},
		{"go_goroutines", nil},
		{"process_resident_memory_bytes", nil},
	} {
		if _, ok := s.value(want.name, want.labels...); !ok {
			t.Errorf("no %s%v before traffic", want.name, want.labels)
		}
	}
	if got, _ := s.value("tether_store_max_size_bytes"); got != maxStore {
		t.Errorf("tether_store_max_size_bytes = %v, want %d", got, maxStore)
	}
	if got, _ := s.value("tether_store_size_bytes"); got <= 0 {
		t.Errorf("tether_store_size_bytes = %v", got)
	}

	// A device on mains gets two messages and acks them.
	live := ms.checkIn()
	token := live.register(app, snd.ID)
	var ids []string
	for range 2 {
		ids = append(ids, ms.sendOne(snd.ServerKey, token, map[string]any{"data": map[string]string{"n": "1"}}))
	}
	live.expectMessages(ids...)
	live.ack(ids...)
	syncAcks(live, app+".sync", snd.ID)

	// Sends refused: a wrong key, a token that is none.
	if ans := ms.post("/gcm/send", "not-the-key", "application/json", `{"to":"x"}`); ans.status != http.StatusUnauthorized {
		t.Fatalf("wrong key: %d", ans.status)
	}
	if resp := ms.send(snd.ServerKey, map[string]any{"registration_ids": []string{"nonsense", "nonsense-too"}}); resp.Failure != 2 {
		t.Fatalf("send to no token: %+v", resp)
	}

	// A device that goes away: what is sent to it waits, a newer message
	// under a collapse key replaces the older, and a message with time to
	// live 0 is dropped.
	gone := ms.checkIn()
	goneToken := gone.register(app, snd.ID)
	gone.conn.Close()
	ms.waitFor(t, 1, "tether_sessions", "mode", wire.ModeMains)
	for range 2 {
		ms.sendOne(snd.ServerKey, goneToken, map[string]any{"collapse_key": "state"})
	}
	ms.sendOne(snd.ServerKey, goneToken, map[string]any{"time_to_live": 0})
	ms.clock.Advance(time.Hour)

	// An upstream message, refused once by the webhook.
	sendUpstream(t, live, wire.Upstream{App: app, To: snd.ID, ID: "up-1", TTL: 600})
	hook.next(t)
	s = ms.waitFor(t, 1, "tether_upstream_delivered_total", "route", routeWebhook)

	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"tether_enrollments_total", []string{"method", "fleet"}, 2},
		{"tether_sessions_opened_total", nil, 2},
		{"tether_sessions", []string{"mode", wire.ModeMains}, 1},
		{"tether_sessions", []string{"mode", wire.ModeBattery}, 0},
		{"tether_sends_total", []string{"api", "http", "result", "accepted"}, 5},
		{"tether_sends_total", []string{"api", "http", "result", "Unauthorized"}, 1},
		{"tether_sends_total", []string{"api", "http", "result", errInvalidRegistration}, 2},
		{"tether_deliveries_total", nil, 2},
		{"tether_acks_total", nil, 2},
		{"tether_dropped_messages_total", []string{"reason", "collapse"}, 1},
		{"tether_dropped_messages_total", []string{"reason", "ttl0"}, 1},
		{"tether_dropped_messages_total", []string{"reason", "cap"}, 0},
		{"tether_messages_queued", nil, 1},
		{"tether_upstream_queued_total", nil, 1},
		{"tether_upstream_retries_total", []string{"route", routeWebhook}, 1},
		{"tether_webhook_errors_total", nil, 1},
		{"tether_upstream_dropped_total", nil, 0},
		{"tether_store_scrape_error", nil, 0},
	} {
		if got, ok := s.value(c.name, c.labels...); !ok || got != c.want {
			t.Errorf("%s%v = %v (present: %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	if got, _ := s.value("tether_oldest_queued_message_age_seconds"); got < time.Hour.Seconds() {
		t.Errorf("oldest queued message is %v s old, want at least an hour", got)
	}
	if got, _ := s.value("tether_store_commit_seconds"); got < 5 {
		t.Errorf("%v store commits observed, want one per write at least", got)
	}
	if _, ok := s.value("tether_xmpp_connections"); ok {
		t.Error("tether_xmpp_connections reported without an XMPP endpoint")
	}
}

// TestMetricsRefusedHellos: device hellos refused are counted by stage
// and code, and the enrollment that passes by its method.
func TestMetricsRefusedHellos(t *testing.T) {
	ms := startMetricsServer(t, nil)
	for _, tc := range []struct {
		name  string
		hello wire.Hello
	}{
		{"wrong enrollment key", wire.Hello{Version: wire.Version, EnrollKey: "not-an-enrollment-key-of-this-server"}},
		{"unknown device", wire.Hello{Version: wire.Version, DeviceID: "d-unknown", DeviceSecret: "not-its-secret"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &device{t: t, conn: ms.dial()}
			d.send("", tc.hello)
			d.expectError("", wire.CodeUnauthorized)
		})
	}
	s := scrapeMetrics(t, ms.url)
	for _, stage := range []string{"checkin", "session"} {
		if got, _ := s.value("tether_device_refusals_total", "stage", stage, "code", wire.CodeUnauthorized); got != 1 {
			t.Errorf("refusals at %s = %v, want 1", stage, got)
		}
	}
}

// TestMetricsListener: the metrics are on their own listener only, and
// show no secret.
func TestMetricsListener(t *testing.T) {
	ms := startMetricsServer(t, nil)
	const hookSecret = "hook-secret-in-the-query"
	snd := ms.addSender("http://127.0.0.1:9/hook?token=" + hookSecret)
	d := ms.checkIn()
	token := d.register("com.example.secrets", snd.ID)
	ms.sendOne(snd.ServerKey, token, nil)

	resp, err := http.Get(ms.base + metricsPath)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("public listener answers %s on %s, want 404", resp.Status, metricsPath)
	}

	s := scrapeMetrics(t, ms.url)
	for name, secret := range map[string]string{
		"server key": snd.ServerKey, "registration token": token, "device secret": d.secret,
		"fleet enrollment key": testEnrollKey, "device ID": d.id, "webhook URL's query": hookSecret,
	} {
		if strings.Contains(s.text, secret) {
			t.Errorf("the scrape shows the %s", name)
		}
	}

	// Without MetricsListen nothing listens for metrics.
	plain := startServer(t, nil)
	if plain.MetricsAddr() != nil {
		t.Errorf("metrics listener at %v without MetricsListen", plain.MetricsAddr())
	}
}

// TestMetricsXMPP: sends over XMPP are counted by their ack or nack code,
// upstream messages delivered on a connection by the xmpp route, and the
// connections open. It runs on a cluster node too (TestOnCluster), whose
// store the scrape reads from JetStream.
func TestMetricsXMPP(t *testing.T) {
	ms := startMetricsServer(t, func(c *Config) { c.XMPPListen, c.XMPPPlaintext = "127.0.0.1:0", true })
	snd := ms.addSender("")
	d := ms.checkIn()
	token := d.register(app, snd.ID)
	c := ms.dialCCS(snd)
	for _, stanza := range []string{
		`{"to": "` + token + `", "message_id": "m-1", "data": {"a": "1"}}`,
		`{"to": "nope", "message_id": "m-2"}`,
	} {
		sendStanza(t, c, []byte(stanza))
		nextStanza(t, c)
	}
	d.expectMessage()
	sendUp(t, d, snd.ID, "up-1")
	up := nextStanza(t, c)
	sendStanza(t, c, map[string]string{"to": up.From, "message_id": up.MessageID, "message_type": "ack"})
	s := ms.waitFor(t, 1, "tether_upstream_delivered_total", "route", routeXMPP)
	for _, want := range []struct {
		name   string
		labels []string
		value  float64
	}{
		{"tether_sends_total", []string{"api", "xmpp", "result", "accepted"}, 1},
		{"tether_sends_total", []string{"api", "xmpp", "result", nackBadRegistration}, 1},
		{"tether_sends_total", []string{"api", "http", "result", "accepted"}, 0},
		{"tether_xmpp_connections", nil, 1},
		{"tether_deliveries_total", nil, 1},
		{"tether_store_scrape_error", nil, 0}, // on a cluster too
	} {
		if got, ok := s.value(want.name, want.labels...); !ok || got != want.value {
			t.Errorf("%s%v = %v (present: %v), want %v", want.name, want.labels, got, ok, want.value)
		}
	}
}
