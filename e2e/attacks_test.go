// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"golang.org/x/sys/unix"

	"tether/internal/disktest"
	"tether/internal/testwait"
	"tether/server/xmpp/xmpptest"
	"tether/wire"
)

// The attacks of docs/security.md, each run against the real binaries at a
// small scale: the attacker gets refused or limited, and the legitimate
// device and app server are still served, with nothing accepted lost.
// Every process here is on loopback, so an attacker is given addresses of
// its own in 127.0.0.0/8 (its sockets bind them), and the legitimate
// device and app server keep 127.0.0.1.

// attacker dials from its own loopback address.
type attacker struct {
	t    *testing.T
	srv  *server
	from string // 127.0.0.N
}

func (a attacker) dialer() *net.Dialer {
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(a.from)}, Timeout: 10 * time.Second}
}

// hello dials a device connection, sends h and returns the first frame
// of the answer, with the connection; a refused dial is an empty frame.
func (a attacker) hello(h wire.Hello) (wire.Frame, *websocket.Conn) {
	a.t.Helper()
	d := websocket.Dialer{Subprotocols: []string{wire.Subprotocol}, HandshakeTimeout: 10 * time.Second, NetDialContext: a.dialer().DialContext}
	c, _, err := d.Dial(a.srv.url()+wire.Path, nil)
	if err != nil {
		return wire.Frame{}, nil
	}
	a.t.Cleanup(func() { c.Close() })
	h.Version = wire.Version
	raw, _ := wire.Encode("", h)
	c.SetWriteDeadline(time.Now().Add(10 * time.Second))
	c.WriteMessage(websocket.TextMessage, raw)
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, data, err := c.ReadMessage()
	if err != nil {
		return wire.Frame{}, c
	}
	f, _ := wire.Decode(data)
	return f, c
}

// admin runs a tether-server admin command on the server's data and
// decodes its JSON output into out.
func (s *server) admin(out any, args ...string) {
	s.t.Helper()
	b, err := exec.Command(filepath.Join(binDir, "tether-server"), append(args, "--data", s.data, "--json")...).Output()
	if err != nil {
		s.t.Fatalf("tether-server %s: %v: %s", strings.Join(args, " "), err, exitStderr(err))
	}
	if err := json.Unmarshal(b, out); err != nil {
		s.t.Fatalf("tether-server %s printed %q: %v", strings.Join(args, " "), b, err)
	}
}

func (s *server) devices() []map[string]any {
	s.t.Helper()
	var list []map[string]any
	s.admin(&list, "device", "list")
	return list
}

// limitFiles lowers the server process's open-file limit to n, as
// prlimit(1) does, so that a flood at this scale meets it.
func (s *server) limitFiles(n uint64) {
	s.t.Helper()
	lim := unix.Rlimit{Cur: n, Max: n}
	if err := unix.Prlimit(s.p.cmd.Process.Pid, unix.RLIMIT_NOFILE, &lim, nil); err != nil {
		s.t.Fatalf("prlimit: %v", err)
	}
}

// stillServed checks that the legitimate fleet works: the app server's
// send reaches the app.
func (f *fleet) stillServed(t *testing.T, msgs <-chan delivered, what string) {
	t.Helper()
	id := f.sendData(map[string]any{"after": what}, nil)
	for {
		got := next(t, msgs)
		switch {
		case got.MessageID == id:
			f.served = append(f.served, id)
			return
		case slices.Contains(f.served, got.MessageID):
			// Its ack from the listener was not on disk when the agent
			// stopped: it comes again, as docs/ipc.md says.
		default:
			t.Fatalf("after %s the app got %s, want %s", what, got.MessageID, id)
		}
	}
}

// TestAttackCheckInFlood: the check-in flood, the registration flood and
// the session flood of security.md's first attack. Without a key nobody
// enrolls; with a leaked fleet key one address enrolls a few devices a
// minute; a device registers only short app IDs and at most 100; a
// 24-hour heartbeat is capped; one address holds a bounded share of the
// server's files, under a lowered open-file limit, and the legitimate
// device and app server are served throughout.
func TestAttackCheckInFlood(t *testing.T) {
	f := &fleet{hook: startWebhook(t)}
	f.srv = startServer(t, "--checkin-limit", "10", "--sessions-per-ip", "40", "--conns-per-ip", "20")
	f.srv.limitFiles(200)
	f.sender, f.key = f.srv.addSender("thermo-backend", f.hook.url())
	f.agent = startAgent(t, f.srv.url())
	f.token = f.agent.register(app, f.sender)
	msgs, _ := f.agent.listen(app)

	stranger := attacker{t, f.srv, "127.0.0.2"}
	for i := range 300 {
		if fr, _ := stranger.hello(wire.Hello{}); fr.Type == wire.TypeWelcome {
			t.Fatalf("check-in %d without a key was welcomed", i)
		}
	}
	if n := len(f.srv.devices()); n != 1 {
		t.Errorf("%d devices after a flood of check-ins without a key, want the legitimate one", n)
	}

	leaked := attacker{t, f.srv, "127.0.0.3"}
	var enrolled []wire.Welcome
	for range 100 {
		fr, c := leaked.hello(wire.Hello{EnrollKey: e2eEnrollKey, Heartbeat: 86400})
		if fr.Type == wire.TypeWelcome {
			var w wire.Welcome
			fr.Decode(&w)
			enrolled = append(enrolled, w)
			if w.Heartbeat > 1800 {
				t.Errorf("a 24-hour heartbeat was welcomed as %d s", w.Heartbeat)
			}
		}
		if c != nil {
			c.Close()
		}
	}
	if len(enrolled) == 0 || len(enrolled) > 11 {
		t.Errorf("one address with the fleet key enrolled %d devices in a burst of 100, want 1 to 11", len(enrolled))
	}

	// One enrolled device registers: 1 KB app IDs are refused, and no more
	// than 100 registrations are kept.
	fr, c := leaked.hello(wire.Hello{DeviceID: enrolled[0].DeviceID, DeviceSecret: enrolled[0].DeviceSecret})
	if fr.Type != wire.TypeWelcome {
		t.Fatalf("the enrolled device's session answered %s", fr.Type)
	}
	d := &rawDevice{t: t, c: c}
	d.write(fmt.Appendf(nil, `{"type": "register", "ref": "long", "body": {"app": %q, "sender": %q}}`, strings.Repeat("a", 1024), f.sender))
	d.expectError("a 1 KB app ID", wire.CodeBadFrame)
	refused := 0
	for i := range 120 {
		d.send(fmt.Sprint(i), wire.Register{App: fmt.Sprintf("com.example.squat%03d", i), Sender: f.sender})
		if fr, err := d.read(); err != nil {
			t.Fatal(err)
		} else if fr.Type == wire.TypeError {
			refused++
		}
	}
	if refused != 20 {
		t.Errorf("%d of 120 registrations refused, want the 20 over 100", refused)
	}
	c.Close()

	// A flood of connections from one address takes no more than its
	// share of the server's 200 files.
	flood := attacker{t, f.srv, "127.0.0.4"}
	held := 0
	for range 150 {
		if fr, c := flood.hello(wire.Hello{DeviceID: enrolled[0].DeviceID, DeviceSecret: enrolled[0].DeviceSecret, Heartbeat: 86400}); fr.Type == wire.TypeWelcome {
			held++
			defer c.Close()
		}
	}
	if held > 40 {
		t.Errorf("one address holds %d sessions, over its cap of 40", held)
	}
	f.stillServed(t, msgs, "the floods")
	f.agent.p.stop()
	f.agent.start()
	msgs, _ = f.agent.listen(app)
	f.stillServed(t, msgs, "a reconnection during the flood")
}

// TestAttackLoginThrottling: failed server keys from one address slow
// that address's failures, but its right keys are served, over HTTP and
// XMPP, as when every app server comes through one proxy.
func TestAttackLoginThrottling(t *testing.T) {
	xmppAddr := freeAddr(t)
	srv := startServer(t, "--xmpp-listen", xmppAddr, "--xmpp-plaintext")
	sender, key := srv.addSender("backend", "")
	send := func(k string) int {
		t.Helper()
		status, _, err := srv.postTo("/gcm/send", k, "application/json", []byte(`{"to": "x"}`))
		if err != nil {
			t.Fatal(err)
		}
		return status
	}
	for i := range 21 {
		send(fmt.Sprintf("guess-%d", i))
	}
	if got := send("guess-22"); got != http.StatusTooManyRequests {
		t.Errorf("the 22nd wrong key answered %d, want 429", got)
	}
	if got := send(key); got != http.StatusOK {
		t.Errorf("the right key after 22 wrong ones answered %d, want 200", got)
	}
	login := func(password string) error {
		c, err := xmpptest.Dial(context.Background(), xmpptest.Config{Addr: xmppAddr, User: sender, Password: password})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := login("guess"); err == nil || !strings.Contains(err.Error(), "temporary-auth-failure") {
		t.Errorf("a wrong XMPP login over the budget: %v, want temporary-auth-failure", err)
	}
	if err := login(key); err != nil {
		t.Errorf("the right XMPP login after many wrong ones: %v", err)
	}
	if n := strings.Count(srv.p.log(), "app server refused"); n > 2 {
		t.Errorf("%d log lines for 23 refusals from one address within a minute", n)
	}
}

// TestAttackEnrollKeyGuessing: thousands of guessed enrollment keys from
// one address are refused, slowed after a few, and make one log line;
// the right key still enrolls from there; a short key or a key file that
// others can read stop the server at start.
func TestAttackEnrollKeyGuessing(t *testing.T) {
	srv := startServer(t)
	guesser := attacker{t, srv, "127.0.0.2"}
	answers := map[string]int{}
	began := time.Now()
	for i := range 3000 {
		fr, c := guesser.hello(wire.Hello{EnrollKey: fmt.Sprintf("guess-%06d-of-the-fleet-key", i)})
		switch fr.Type {
		case wire.TypeWelcome:
			t.Fatalf("guess %d was welcomed", i)
		case wire.TypeGoAway:
			var g wire.GoAway
			fr.Decode(&g)
			if g.RetryAfter < 30 {
				t.Fatalf("guess %d: goaway %+v, want a wait of about a minute", i, g)
			}
		}
		answers[string(fr.Type)]++
		if c != nil {
			c.Close()
		}
	}
	// The limit is a bucket of 10 refused credentials a minute, which
	// refills one every 6 s: a slow machine's guesses earn a few more.
	refills := int(time.Since(began) / (time.Minute / 10))
	if answers["error"] < 10 || answers["error"] > 10+refills || answers["error"]+answers["goaway"] != 3000 {
		t.Errorf("answers to 3000 guesses in %v: %v; want 10 errors (up to %d more refilled), then goaways", time.Since(began).Round(time.Second), answers, refills)
	}
	if fr, _ := guesser.hello(wire.Hello{EnrollKey: e2eEnrollKey}); fr.Type != wire.TypeWelcome {
		t.Errorf("the right key from the guessing address answered %s", fr.Type)
	}
	if n := strings.Count(srv.p.log(), `msg="device refused"`); n > 3 {
		t.Errorf("%d log lines for 3000 refusals from one address", n)
	}

	readable := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(readable, []byte(e2eEnrollKey), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"--enroll-key", "a"}, {"--enroll-key-file", readable}} {
		cmd := exec.Command(filepath.Join(binDir, "tether-server"), append([]string{"serve", "--listen", freeAddr(t), "--data", t.TempDir()}, args...)...)
		if out, err := cmd.CombinedOutput(); cmd.ProcessState.ExitCode() != 1 {
			t.Errorf("serve %q: %v %s; want exit 1", args, err, out)
		}
	}
}

// TestAttackSlowClients: slow-header and slow-body connections from two
// addresses each hold at most their cap of connections, under a lowered
// open-file limit, and the app server and the device are served.
func TestAttackSlowClients(t *testing.T) {
	f := &fleet{hook: startWebhook(t)}
	f.srv = startServer(t, "--conns-per-ip", "30")
	f.srv.limitFiles(200)
	f.sender, f.key = f.srv.addSender("thermo-backend", f.hook.url())
	f.agent = startAgent(t, f.srv.url())
	f.token = f.agent.register(app, f.sender)
	msgs, _ := f.agent.listen(app)

	var mu sync.Mutex
	open := map[string]int{}
	var wg sync.WaitGroup
	for _, a := range []struct{ from, start string }{
		{"127.0.0.2", "POST /gcm/send HTTP/1.1\r\nHost: x\r\nAuthorization: key=k\r\nContent-Length: 100000\r\n\r\n{"},
		{"127.0.0.3", "POST /gcm/send HTTP/1.1\r\nHost: x\r\n"},
	} {
		at := attacker{t, f.srv, a.from}
		for range 150 {
			wg.Go(func() {
				c, err := at.dialer().Dial("tcp", f.srv.addr)
				if err != nil {
					return
				}
				t.Cleanup(func() { c.Close() })
				c.Write([]byte(a.start))
				// A connection the server closed reads EOF at once; one it
				// holds times out here.
				c.SetReadDeadline(time.Now().Add(2 * time.Second))
				if _, err := c.Read(make([]byte, 1)); err != nil && os.IsTimeout(err) {
					mu.Lock()
					open[a.from]++
					mu.Unlock()
				}
			})
		}
	}
	wg.Wait()
	for from, n := range open {
		if n > 30 {
			t.Errorf("%s holds %d slow connections, over its cap of 30", from, n)
		}
	}
	f.stillServed(t, msgs, "the slow clients")
}

// TestAttackRegistrationSquatting: a local user who is not root registers
// app IDs until its cap; root, and everyone else, can still register.
func TestAttackRegistrationSquatting(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run an app as another user")
	}
	const nobody = 65534
	f := newFleet(t)
	for _, dir := range []string{binDir, filepath.Dir(f.agent.sock), filepath.Dir(filepath.Dir(f.agent.sock))} {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	registered, refused := 0, 0
	for i := range 97 {
		out, err := f.agent.ctlAs(nobody, "register", "--app", fmt.Sprintf("com.example.squat%02d", i), "--sender", f.sender)
		switch {
		case err == nil:
			registered++
		case strings.Contains(out, "TooManyRegistrations"):
			refused++
		default:
			t.Fatalf("registration %d as nobody: %v %s", i, err, out)
		}
	}
	if registered != 20 || refused != 77 {
		t.Errorf("nobody registered %d app IDs and was refused %d, want 20 and 77", registered, refused)
	}
	for i := range 3 {
		f.agent.register(fmt.Sprintf("com.example.root%d", i), f.sender)
	}
}

// TestAttackOneAppFillsTheDevice: one sender floods an app that does not
// listen on a device with a small disk. Past its quota the app's oldest
// messages go, with a deleted_messages notice; another vendor's app on the
// device gets every message, and the agent keeps its session.
func TestAttackOneAppFillsTheDevice(t *testing.T) {
	disk := disktest.Small(t, "4m")
	hook := startWebhook(t)
	srv := startServer(t)
	flooder, floodKey := srv.addSender("flooder", hook.url())
	vendor, vendorKey := srv.addSender("vendor", hook.url())
	a := newAgent(t, srv.url())
	a.data = filepath.Join(disk, "agent")
	a.start()
	const victim, other = "com.example.flooded", "com.example.other"
	floodToken := a.register(victim, flooder)
	otherToken := a.register(other, vendor)
	msgs, _ := a.listen(other)

	pad := strings.Repeat("f", 3900)
	var want []string
	for i := range 300 {
		srv.mustSend(floodKey, map[string]any{"to": floodToken, "data": map[string]string{"n": fmt.Sprint(i), "pad": pad}})
		if i%30 == 0 {
			id := srv.mustSend(vendorKey, map[string]any{"to": otherToken, "data": map[string]string{"n": fmt.Sprint(i)}})
			want = append(want, id)
		}
	}
	if got := collectDistinct(t, msgs, len(want)); !sameIDs(got, want) {
		t.Errorf("the other app got %v, want %v", got, want)
	}
	flooded, _ := a.listen(victim)
	notice := nextEvent(t, flooded, "deleted_messages")
	if notice.Count < 150 {
		t.Errorf("deleted_messages counts %d, want the messages over the quota", notice.Count)
	}
	kept := collectDistinct(t, flooded, 300-notice.Count)
	if len(kept) == 0 {
		t.Error("the flooded app kept none of its newest messages")
	}
	if log := a.p.log(); strings.Contains(log, "no space left") || strings.Contains(log, "session closed") && strings.Contains(log, "store") {
		t.Errorf("the agent ran out of room:\n%s", log)
	}
}

// TestAttackUpstreamFlood: a device enrolled with a leaked key floods a
// public sender with upstream messages of 4 KB and four weeks to live. The
// server keeps at most 20 of each of its apps and takes them at its rate;
// behind them, the legitimate device's message reaches the app server's
// slow webhook after a few of the flood's, not after all of them.
func TestAttackUpstreamFlood(t *testing.T) {
	var mu sync.Mutex
	var arrivals []string // the "from" of each upstream message, in order
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var body struct {
			From string `json:"from"`
		}
		json.NewDecoder(r.Body).Decode(&body)
		time.Sleep(50 * time.Millisecond) // an app server that takes its time
		mu.Lock()
		arrivals = append(arrivals, body.From)
		mu.Unlock()
	}))
	t.Cleanup(hook.Close)
	srv := startServer(t)
	sender, _ := srv.addSender("public", hook.URL)
	a := startAgent(t, srv.url())
	token := a.register(app, sender)

	flood := attacker{t, srv, "127.0.0.2"}
	fr, c := flood.hello(wire.Hello{EnrollKey: e2eEnrollKey})
	var w wire.Welcome
	if fr.Decode(&w) != nil || w.DeviceID == "" {
		t.Fatalf("the attacker's check-in answered %s", fr.Type)
	}
	d := &rawDevice{t: t, c: c}
	const apps = 5
	for i := range apps {
		d.send(fmt.Sprint(i), wire.Register{App: fmt.Sprintf("com.example.flood%d", i), Sender: sender})
		if fr, err := d.read(); err != nil || fr.Type != wire.TypeRegistered {
			t.Fatalf("the attacker's register answered %s, %v", fr.Type, err)
		}
	}
	pad := map[string]string{"pad": strings.Repeat("u", 4000)}
	stored, refused, later := 0, 0, 0
	for i := range 2000 {
		d.send(fmt.Sprint(i), wire.Upstream{App: fmt.Sprintf("com.example.flood%d", i%apps), To: sender, ID: fmt.Sprint(i), TTL: wire.MaxTTL, Data: pad})
		fr, err := d.read()
		if err != nil {
			t.Fatalf("upstream %d: %v", i, err)
		}
		var ack wire.UpstreamAck
		switch {
		case fr.Type == wire.TypeUpstreamAck && fr.Decode(&ack) == nil && ack.Error == "":
			stored++
		case ack.Error == wire.UpstreamTooManyMessages:
			refused++
		case fr.Type == wire.TypeError:
			later++ // over the device's rate: the agent would try again later
		default:
			t.Fatalf("upstream %d answered %s %s", i, fr.Type, fr.Body)
		}
	}
	if stored > apps*20 || refused+later < 2000-apps*20 {
		t.Errorf("the flood stored %d, was refused %d for the cap and %d for the rate; want at most %d stored", stored, refused, later, apps*20)
	}

	// The webhook is busy with the flood; the legitimate message goes
	// after at most the deliveries under way and one turn.
	testwait.For(t, "the flood to reach the webhook", 30*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		if len(arrivals) == 0 {
			return errors.New("not yet")
		}
		return nil
	})
	mu.Lock()
	before := len(arrivals)
	mu.Unlock()
	if _, err := a.ctl("send", "--app", app, "--to", sender, "k=v"); err != nil {
		t.Fatal(err)
	}
	var ahead int
	testwait.For(t, "the legitimate message at the webhook", 60*time.Second, func() error {
		mu.Lock()
		defer mu.Unlock()
		for i, from := range arrivals[before:] {
			if from == token {
				ahead = i
				return nil
			}
		}
		return errors.New("not yet")
	})
	if ahead > 4 {
		t.Errorf("%d of the flood's messages reached the webhook before the legitimate one, want at most 4", ahead)
	}
}
