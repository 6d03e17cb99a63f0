// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	tetheragent "tether/agent"
	"tether/internal/clockknob"
	"tether/internal/faultproxy"
	"tether/internal/natstest"
)

// Knobs of the chaos run, from the environment.
const (
	// chaosSeedEnv seeds the fault schedule and the senders' pacing; a
	// failed run prints the seed to run it again.
	chaosSeedEnv = "TETHER_CHAOS_SEED"
	// chaosCyclesEnv is the number of faults (defaultChaosCycles).
	chaosCyclesEnv = "TETHER_CHAOS_CYCLES"
	// chaosReportEnv, when set, is a file the run's figures are written
	// to as JSON.
	chaosReportEnv = "TETHER_CHAOS_REPORT"

	// chaosHeartbeat is tetherd's fixed heartbeat: a blackhole is found
	// out within it and the agent's pong wait.
	chaosHeartbeat = 2 * time.Second
	// The run is quiet from when tetherd, connected again after a fault,
	// has held its session for quietMargin, to quietTail before the next
	// fault: every process is up, and a message with time to live 0 must
	// reach the app.
	quietMargin = 2 * time.Second
	quietTail   = time.Second
	// settleTimeout bounds the wait, after the last fault, for every
	// message to end as it must.
	settleTimeout = 3 * time.Minute
)

// faultKind is one kind of fault a cycle injects.
type faultKind string

const (
	faultKillAgent  faultKind = "kill-tetherd"
	faultKillServer faultKind = "kill-tether-server"
	faultKillApp    faultKind = "kill-app"
	faultReset      faultKind = "reset"
	faultBlackhole  faultKind = "blackhole"
	faultSlow       faultKind = "slow"
	faultClockJump  faultKind = "clock-jump"
	// On a cluster: a nats-server killed, or cut off from the others.
	faultKillNATS      faultKind = "kill-nats-server"
	faultNATSBlackhole faultKind = "nats-blackhole"
)

var faultKinds = [...]faultKind{faultKillAgent, faultKillServer, faultKillApp, faultReset, faultBlackhole, faultSlow, faultClockJump}

// clusterFaultKinds are the faults of a run on a cluster, where a
// tether-server fault hits one node.
var clusterFaultKinds = append(slices.Clone(faultKinds[:]), faultKillNATS, faultNATSBlackhole)

// faultDeck deals faults from shuffled decks of every kind: a run of
// len(kinds) cycles has one of each, a longer one stays even.
type faultDeck struct {
	rng   *rand.Rand
	kinds []faultKind
	left  []faultKind
}

func (d *faultDeck) deal() faultKind {
	if len(d.left) == 0 {
		d.left = slices.Clone(d.kinds)
		d.rng.Shuffle(len(d.left), func(i, j int) { d.left[i], d.left[j] = d.left[j], d.left[i] })
	}
	k := d.left[0]
	d.left = d.left[1:]
	return k
}

// chaosOffsets are the clock offsets a clock jump picks from.
var chaosOffsets = [...]time.Duration{-time.Hour, -2 * time.Minute, 0, 2 * time.Minute, time.Hour}

// chaosReport is what a run reports, in the log and as JSON.
type chaosReport struct {
	Seed   uint64            `json:"seed"`
	Cycles int               `json:"cycles"`
	Faults map[faultKind]int `json:"faults"`
	// RunSeconds is the time from the first message to the last fault;
	// SettleSeconds the time it then took for every message to end.
	RunSeconds    float64 `json:"run_seconds"`
	SettleSeconds float64 `json:"settle_seconds"`
	// BlackholeDetectSeconds is, for each blackhole, how long tetherd took
	// to find its connection dead.
	BlackholeDetectSeconds []float64 `json:"blackhole_detect_seconds"`
	// QuietSeconds is how much of the run was quiet: no fault on, every
	// process up and connected.
	QuietSeconds float64  `json:"quiet_seconds"`
	ClockJumps   []string `json:"clock_jumps"`
	// StoreChecks counts bbolt consistency checks, each after a process
	// stopped (killed or not), all passed unless the run failed.
	StoreChecks int         `json:"store_checks"`
	Down        downFigures `json:"downstream"`
	Up          upFigures   `json:"upstream"`
}

func (r chaosReport) summary() string {
	kinds := make([]string, 0, len(r.Faults))
	for _, k := range clusterFaultKinds {
		if n := r.Faults[k]; n > 0 {
			kinds = append(kinds, fmt.Sprintf("%s=%d", k, n))
		}
	}
	d, u := r.Down, r.Up
	return fmt.Sprintf("chaos seed=%d cycles=%d faults[%s] run=%.0fs (quiet %.0fs) settle=%.0fs | downstream accepted=%d delivered=%d duplicated(before ack)=%d after-ack=%d expired=%d replaced=%d deleted=%d ttl0-lost=%d (quiet %d) unanswered-delivered=%d | upstream accepted=%d at-webhook=%d repeated-posts=%d (across a server kill %d, a graceful stop %d) | store checks=%d",
		r.Seed, r.Cycles, strings.Join(kinds, " "), r.RunSeconds, r.QuietSeconds, r.SettleSeconds,
		d.Accepted, d.Delivered, d.Duplicated, d.AfterAck, d.Expired, d.Replaced, d.Deleted, d.TTL0Lost, d.TTL0LostQuiet, d.Unanswered,
		u.Accepted, u.AtWebhook, u.Repeated, u.RepeatedAcrossKill, u.RepeatedAcrossStop, r.StoreChecks)
}

// TestChaos streams messages both ways, downstream from an app server and
// upstream from a local app, while faults hit at random moments, one per
// cycle: tetherd, tether-server or the app killed with SIGKILL and started
// again, the connection between tetherd and tether-server reset,
// blackholed until tetherd finds it dead, or slowed, and a process's clock
// jumping. Then every message is accounted for: each downstream message the
// server accepted reached the app, or expired (only those with a short time
// to live, counting clock jumps), or was replaced under its collapse key,
// or is counted in a deleted_messages notice, or had time to live 0; none
// reached the app after its ack was confirmed; each upstream message the
// agent accepted reached the webhook. Every bbolt file passes a
// consistency check after every stop. TETHER_CHAOS_SEED reruns a run,
// TETHER_CHAOS_CYCLES sets its length (one fault of each kind by default),
// TETHER_CHAOS_REPORT writes its figures as JSON.
func TestChaos(t *testing.T) { runChaos(t, false) }

// TestChaosCluster is TestChaos on a cluster (make chaos-cluster): three
// tether-server nodes on three nats-server processes, the agent given every
// node; the faults also kill a node, kill a nats-server (R3 keeps quorum),
// and cut a nats-server off from the others until the partition heals.
// It runs when TETHER_CHAOS_CLUSTER is set, with TestChaos's knobs.
func TestChaosCluster(t *testing.T) {
	if os.Getenv(chaosClusterEnv) == "" {
		t.Skipf("a long run of its own: make chaos-cluster (%s=1)", chaosClusterEnv)
	}
	runChaos(t, true)
}

// chaosClusterEnv runs TestChaosCluster.
const chaosClusterEnv = "TETHER_CHAOS_CLUSTER"

func runChaos(t *testing.T, clustered bool) {
	kinds := faultKinds[:]
	if clustered {
		kinds = clusterFaultKinds
	}
	seed, cycles := chaosKnobs(t, len(kinds))
	t.Logf("%s=%d %s=%d", chaosSeedEnv, seed, chaosCyclesEnv, cycles)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("the run failed: rerun it with %s=%d %s=%d", chaosSeedEnv, seed, chaosCyclesEnv, cycles)
		}
	})
	rng := rand.New(rand.NewPCG(seed, 0))
	deck := faultDeck{rng: rng, kinds: kinds}
	r := newChaosRig(t, clustered)
	report := chaosReport{Seed: seed, Cycles: cycles, Faults: map[faultKind]int{}}

	ctx, stopSending := context.WithCancel(context.Background())
	var sending sync.WaitGroup
	defer func() {
		stopSending()
		sending.Wait()
	}()
	sending.Go(func() { r.sendDown(ctx, rand.New(rand.NewPCG(seed, 1))) })
	sending.Go(func() { r.sendUp(ctx, rand.New(rand.NewPCG(seed, 2))) })

	began := time.Now()
	r.quietBegins()
	for cycle := 1; cycle <= cycles; cycle++ {
		sleepBetween(rng, 1500*time.Millisecond, 4500*time.Millisecond) // traffic flows, the run quiet
		kind := deck.deal()
		r.logf("cycle %d of %d: %s", cycle, cycles, kind)
		r.quietEnds()
		r.inject(kind, rng)
		r.quietBegins()
		report.Faults[kind]++
	}
	report.RunSeconds = time.Since(began).Seconds()
	time.Sleep(quietTail + time.Second) // traffic after the last fault, in a quiet window
	stopSending()
	sending.Wait() // what was in flight is now accepted or not: the ledger is final
	r.quietEnds()

	settling := time.Now()
	r.logf("faults over; settling")
	settleErr := r.settle(settleTimeout)
	report.SettleSeconds = time.Since(settling).Seconds()
	r.shutdown()

	records, err := readAppRecords(r.records)
	if err != nil {
		t.Fatalf("read the app's records: %v", err)
	}
	r.mu.Lock()
	r.run.end = time.Now()
	down, downProblems := accountDown(r.run, records)
	up, upProblems, repeats := accountUp(r.up, r.posts, r.serverStops, records)
	report.Down, report.Up = down, up
	report.BlackholeDetectSeconds = r.detections
	for _, w := range r.run.quiet {
		report.QuietSeconds += w.to.Sub(w.from).Seconds()
	}
	for _, j := range r.run.jumps {
		report.ClockJumps = append(report.ClockJumps, fmt.Sprintf("%s %v -> %v", j.process, j.from, j.to))
	}
	report.StoreChecks = r.storeChecks
	r.mu.Unlock()

	t.Log(report.summary())
	if path := os.Getenv(chaosReportEnv); path != "" {
		b, err := json.MarshalIndent(report, "", "  ")
		if err == nil {
			err = os.WriteFile(path, append(b, '\n'), 0o644)
		}
		if err != nil {
			t.Errorf("write %s: %v", chaosReportEnv, err)
		}
	}
	for _, rep := range repeats {
		t.Log("repeated webhook post: " + rep)
	}
	if settleErr != nil {
		t.Errorf("the run did not settle within %v: %v", settleTimeout, settleErr)
	}
	for _, p := range slices.Concat(downProblems, upProblems) {
		t.Error(p)
	}
	if down.Accepted == 0 || down.Delivered == 0 || up.Accepted == 0 {
		t.Error("the run carried no messages one way or the other: it proved nothing")
	}
	if n := up.Repeated - up.RepeatedAcrossKill - up.RepeatedAcrossStop; n > 0 {
		t.Errorf("%d upstream messages posted to the webhook again with no stop of tether-server between, which drops a device's repeats", n)
	}
}

func chaosKnobs(t *testing.T, kinds int) (seed uint64, cycles int) {
	t.Helper()
	seed = uint64(time.Now().UnixNano())
	if s := os.Getenv(chaosSeedEnv); s != "" {
		var err error
		if seed, err = strconv.ParseUint(s, 10, 64); err != nil {
			t.Fatalf("%s=%q: want an unsigned integer", chaosSeedEnv, s)
		}
	}
	cycles = kinds
	if s := os.Getenv(chaosCyclesEnv); s != "" {
		var err error
		if cycles, err = strconv.Atoi(s); err != nil || cycles < 0 {
			t.Fatalf("%s=%q: want a number of cycles", chaosCyclesEnv, s)
		}
	}
	return seed, cycles
}

// sleepBetween sleeps for a random time in [lo, hi).
func sleepBetween(rng *rand.Rand, lo, hi time.Duration) {
	time.Sleep(lo + time.Duration(rng.Int64N(int64(hi-lo))))
}

// chaosRig is the run's processes, the proxies between tetherd and
// tether-server, and the ledger of what was sent.
type chaosRig struct {
	t     *testing.T
	began time.Time
	// srvs are tether-server: one, or the nodes of a cluster on nats.
	srvs  []*server
	nats  *natstest.Processes
	agent *agent
	// proxies stand between tetherd and each tether-server.
	proxies []*faultproxy.Proxy
	hook    *webhook
	sender  string
	key     string
	token   string
	// app is the running instance of the local app, records the files of
	// every instance, in the order they ran.
	app     *proc
	records []string
	// offsets are the clock offsets tetherd and tether-server run with.
	offsets map[string]time.Duration

	mu sync.Mutex // guards what follows, written by the senders and the webhook's drain
	// run is what was sent downstream, and when faults were on.
	run downRun
	// quietFrom is when the current quiet window began; zero while a
	// fault is on.
	quietFrom time.Time
	// up holds the upstream IDs the agent accepted; posts what reached
	// the webhook.
	up          map[string]bool
	posts       []webhookPost
	serverStops []serverStop
	detections  []float64
	storeChecks int
}

func newChaosRig(t *testing.T, clustered bool) *chaosRig {
	t.Helper()
	r := &chaosRig{
		t: t, began: time.Now(), hook: startWebhook(t), offsets: map[string]time.Duration{},
		run: downRun{sent: map[string]downSend{}, attempted: -1}, up: map[string]bool{},
	}
	// No reconnection limit: the faults make tetherd reconnect far more
	// often than any device should, and that limit is tested elsewhere.
	// No limits on one address either: the agent, the app servers and the
	// faults' reconnections all come from 127.0.0.1, as no fleet does. No
	// upstream rate: the run sends upstream faster than a device should.
	flags := []string{"--reconnect-limit", "0", "--shutdown-spread", "1s", "--upstream-rate-limit", "0",
		"--checkin-limit", "0", "--enroll-failure-limit", "0", "--sessions-per-ip", "0", "--conns-per-ip", "0"}
	if !clustered {
		r.srvs = []*server{newServer(t, flags...)}
	} else {
		r.nats = natstest.StartProcesses(t, natstest.ProcConfig{Bin: natsBin, Dir: t.TempDir()})
		for range 3 {
			s := newServer(t, append(flags, "--nats", r.nats.URL(), "--shards", "4")...)
			s.args = append(s.args, "--public-url", "ws://"+s.addr)
			r.srvs = append(r.srvs, s)
		}
	}
	for _, s := range r.srvs {
		s.start()
	}
	r.sender, r.key = r.srvs[0].addSender("chaos-backend", r.hook.url())

	var urls []string
	for _, s := range r.srvs {
		proxy, err := faultproxy.New(faultproxy.Config{Upstream: s.addr})
		if err != nil {
			t.Fatal(err)
		}
		r.proxies = append(r.proxies, proxy)
		urls = append(urls, "ws://"+proxy.Addr())
		served := make(chan error, 1)
		go func() { served <- proxy.Serve(context.Background()) }()
		t.Cleanup(func() {
			proxy.Close()
			if err := <-served; err != nil {
				t.Errorf("fault proxy: %v", err)
			}
		})
	}

	// Reconnections come fast, so that the run spends its time on faults
	// rather than on backoff.
	r.agent = newAgent(t, strings.Join(urls, ","), "--heartbeat", chaosHeartbeat.String(), "--min-backoff", "1s", "--max-backoff", "3s")
	r.agent.start()
	r.token = r.agent.register(app, r.sender)
	t.Cleanup(func() { checkNoSecretsLogged(t, r.key, r.token) })
	r.startApp()

	// The webhook's channel is for tests that wait on it; here posts are
	// taken off it as they come, with the time they came.
	drained := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		defer close(drained)
		for {
			select {
			case b := <-r.hook.ch:
				id, _ := b["message_id"].(string)
				r.mu.Lock()
				r.posts = append(r.posts, webhookPost{id: id, at: time.Now()})
				r.mu.Unlock()
			case <-stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(stop)
		<-drained
	})
	return r
}

// logf logs a line of the run's timeline, with the wall-clock time to
// match the processes' logs.
func (r *chaosRig) logf(format string, args ...any) {
	r.t.Helper()
	now := time.Now()
	r.t.Logf("%s +%.1fs %s", now.Format("15:04:05.000"), now.Sub(r.began).Seconds(), fmt.Sprintf(format, args...))
}

// startApp starts a new instance of the local app, with records of its own.
func (r *chaosRig) startApp() {
	t := r.t
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, fmt.Sprintf("records-%03d.jsonl", len(r.records)+1))
	// The app exits when the test process, which holds stdin's write
	// end, is gone.
	stdin, holder, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { holder.Close() })
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), chaosAppEnv+"="+path, chaosAppSocketEnv+"="+r.agent.sock)
	cmd.Stdin = stdin
	logPath := filepath.Join(dir, "app.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	r.app = startCmd(t, "chaos-app", cmd, logPath, logFile, nil)
	stdin.Close()
	r.records = append(r.records, path)
}

// quietBegins starts a quiet window once tetherd has held one session
// for quietMargin: a status read just after a fault may still show the
// session the fault ended, and a reconnection within the margin starts it
// again.
func (r *chaosRig) quietBegins() {
	t := r.t
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		r.agent.waitConnected()
		before, err1 := readChaosStatus(r.agent)
		time.Sleep(quietMargin)
		after, err2 := readChaosStatus(r.agent)
		if err := errors.Join(err1, err2); err == nil && before.Connected && after.Connected && before.Reconnects == after.Reconnects {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("tetherd did not hold a session for %v within a minute (status %+v, then %+v, %v)", quietMargin, before, after, err)
		}
	}
	r.mu.Lock()
	r.quietFrom = time.Now()
	r.mu.Unlock()
}

// quietEnds ends the current quiet window as a fault begins; what was
// sent in the last moments before it may be caught in flight.
func (r *chaosRig) quietEnds() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if to := time.Now().Add(-quietTail); !r.quietFrom.IsZero() && to.After(r.quietFrom) {
		r.run.quiet = append(r.run.quiet, window{r.quietFrom, to})
	}
	r.quietFrom = time.Time{}
}

func (r *chaosRig) setFaults(f faultproxy.Faults) {
	r.t.Helper()
	for _, p := range r.proxies {
		if err := p.Set(f); err != nil {
			r.t.Fatal(err)
		}
	}
}

// resetAll resets every connection through the proxies.
func (r *chaosRig) resetAll() int {
	n := 0
	for _, p := range r.proxies {
		n += p.Reset()
	}
	return n
}

// inject makes one fault happen and end.
func (r *chaosRig) inject(kind faultKind, rng *rand.Rand) {
	t := r.t
	t.Helper()
	down := func() { sleepBetween(rng, 0, time.Second) } // how long a killed process stays down
	switch kind {
	case faultKillAgent:
		r.agent.p.kill()
		r.checkStores(r.agent.data)
		down()
		r.agent.start()
	case faultKillServer:
		s := r.srvs[rng.IntN(len(r.srvs))]
		r.logf("kill tether-server on %s", s.addr)
		r.stopServer(s, true)
		down()
		s.start()
	case faultKillApp:
		r.app.kill()
		down()
		r.startApp()
	case faultReset:
		for i := range 1 + rng.IntN(3) {
			if i > 0 {
				sleepBetween(rng, 0, 700*time.Millisecond)
			}
			r.logf("reset %d connections", r.resetAll())
		}
	case faultBlackhole:
		r.blackhole(rng)
	case faultSlow:
		f := faultproxy.Faults{
			Latency:   time.Duration(50+rng.IntN(450)) * time.Millisecond,
			Bandwidth: 1<<10 + rng.IntN(15<<10),
		}
		r.setFaults(f)
		r.logf("latency %v, %d bytes/s each way", f.Latency, f.Bandwidth)
		sleepBetween(rng, 2*time.Second, 8*time.Second)
		r.setFaults(faultproxy.Faults{})
	case faultClockJump:
		r.clockJump(rng)
	case faultKillNATS:
		i := rng.IntN(3)
		r.logf("kill nats-server %d", i+1)
		r.nats.Kill(i)
		r.natsFault()
		down()
		if err := r.nats.Start(i); err != nil {
			t.Fatal(err)
		}
		r.waitNATS()
	case faultNATSBlackhole:
		i := rng.IntN(3)
		r.logf("cut nats-server %d off from the others", i+1)
		if err := r.nats.Blackhole(i, true); err != nil {
			t.Fatal(err)
		}
		r.natsFault()
		sleepBetween(rng, 2*time.Second, 8*time.Second)
		if err := r.nats.Blackhole(i, false); err != nil {
			t.Fatal(err)
		}
		r.logf("nats-server %d back", i+1)
		r.waitNATS()
	default:
		t.Fatalf("no fault %q", kind)
	}
}

// natsFault notes a NATS fault as a kill of tether-server for the
// webhook's accounts: the nodes on a nats-server killed or cut off may
// lose their partitions, and the node that takes one over posts again
// what the other had in flight.
func (r *chaosRig) natsFault() {
	r.mu.Lock()
	r.serverStops = append(r.serverStops, serverStop{at: time.Now(), killed: true})
	r.mu.Unlock()
}

// waitNATS waits until JetStream answers through every nats-server again.
func (r *chaosRig) waitNATS() {
	r.t.Helper()
	if err := r.nats.WaitReady(time.Minute); err != nil {
		r.t.Fatal(err)
	}
}

// stopServer kills a tether-server, or stops it gracefully (the test fails
// unless it exits 0), notes when for the webhook's accounts, and checks its
// store: a single server's bbolt file.
func (r *chaosRig) stopServer(s *server, kill bool) {
	r.t.Helper()
	if kill {
		s.p.kill()
	} else {
		s.p.stop()
	}
	// Once it is gone: a post it made while stopping comes before.
	r.mu.Lock()
	r.serverStops = append(r.serverStops, serverStop{at: time.Now(), killed: kill})
	r.mu.Unlock()
	if r.nats == nil {
		r.checkStores(s.data)
	}
}

// blackhole stops all traffic between tetherd and tether-server until
// tetherd finds the connection dead by its heartbeat, and a little
// longer, while its new connections hang.
func (r *chaosRig) blackhole(rng *rand.Rand) {
	t := r.t
	t.Helper()
	r.agent.waitConnected() // a connection to lose
	r.setFaults(faultproxy.Faults{Blackhole: true})
	began := time.Now()
	limit := chaosHeartbeat + tetheragent.DefaultPongWait + 30*time.Second
	for {
		st, err := readChaosStatus(r.agent)
		if err == nil && !st.Connected {
			took := time.Since(began)
			r.mu.Lock()
			r.detections = append(r.detections, took.Seconds())
			r.mu.Unlock()
			r.logf("tetherd found the blackholed connection dead after %v: %q", took.Round(time.Millisecond), st.LastDisconnect)
			if st.LastDisconnect != tetheragent.ReasonHeartbeatTimeout {
				t.Errorf("tetherd lost a blackholed connection for %q, want %q", st.LastDisconnect, tetheragent.ReasonHeartbeatTimeout)
			}
			break
		}
		if time.Since(began) > limit {
			t.Errorf("tetherd did not find a blackholed connection dead within %v (heartbeat %v, pong wait %v); lifting the blackhole", limit, chaosHeartbeat, tetheragent.DefaultPongWait)
			break
		}
		time.Sleep(250 * time.Millisecond)
	}
	sleepBetween(rng, 0, 2*time.Second) // its new connections hang meanwhile
	r.setFaults(faultproxy.Faults{})
}

// clockJump restarts tetherd or tether-server, gracefully, with another
// clock offset.
func (r *chaosRig) clockJump(rng *rand.Rand) {
	r.t.Helper()
	process := "tetherd"
	if rng.IntN(2) == 1 {
		process = "tether-server"
	}
	from := r.offsets[process]
	to := from
	for to == from {
		to = chaosOffsets[rng.IntN(len(chaosOffsets))]
	}
	r.offsets[process] = to
	env := []string{clockknob.Env + "=" + to.String()}
	r.logf("%s's clock jumps from %v to %v", process, from, to)
	r.mu.Lock()
	r.run.jumps = append(r.run.jumps, clockJump{at: time.Now(), process: process, from: from, to: to})
	r.mu.Unlock()
	if process == "tetherd" {
		r.agent.p.stop()
		r.checkStores(r.agent.data)
		r.agent.env = env
		r.agent.start()
		return
	}
	s := r.srvs[rng.IntN(len(r.srvs))]
	r.stopServer(s, false)
	s.env = env
	s.start()
}

// checkStores checks every bbolt file in dir, whose process has stopped.
func (r *chaosRig) checkStores(dir string) {
	r.t.Helper()
	paths, err := filepath.Glob(filepath.Join(dir, "*.db"))
	if err != nil || len(paths) == 0 {
		r.t.Fatalf("no bbolt file in %s: %v", dir, err)
	}
	for _, path := range paths {
		for _, err := range checkBolt(path) {
			r.t.Errorf("%s: %v", path, err)
		}
		r.mu.Lock()
		r.storeChecks++
		r.mu.Unlock()
	}
}

// checkBolt opens a bbolt file read-only and returns every inconsistency
// bbolt's own check finds.
func checkBolt(path string) []error {
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 10 * time.Second})
	if err != nil {
		return []error{fmt.Errorf("open read-only: %w", err)}
	}
	defer db.Close()
	var errs []error
	err = db.View(func(tx *bolt.Tx) error {
		for err := range tx.Check() {
			errs = append(errs, err)
		}
		return nil
	})
	if err != nil {
		errs = append(errs, err)
	}
	return errs
}

// chaosStatus is the part of the status op the chaos run reads, straight
// off the socket (tetherctl would be a process per look).
type chaosStatus struct {
	Connected        bool   `json:"connected"`
	QueuedDownstream int    `json:"queued_downstream"`
	PendingUpstream  int    `json:"pending_upstream"`
	LastDisconnect   string `json:"last_disconnect"`
	// Reconnects counts the sessions after the process's first.
	Reconnects int `json:"reconnects"`
}

func readChaosStatus(a *agent) (chaosStatus, error) {
	c, err := dialApp(a.sock)
	if err != nil {
		return chaosStatus{}, err
	}
	defer c.close()
	resp, err := c.call(map[string]any{"op": "status"})
	if err != nil {
		return chaosStatus{}, err
	}
	var st struct {
		Status chaosStatus `json:"status"`
	}
	if err := json.Unmarshal(resp, &st); err != nil {
		return chaosStatus{}, fmt.Errorf("status %q: %w", resp, err)
	}
	return st.Status, nil
}

// sendDown is the app server: it sends downstream until ctx ends,
// retrying each message until the server accepts it, as GCM clients do.
func (r *chaosRig) sendDown(ctx context.Context, rng *rand.Rand) {
	for seq := 0; ctx.Err() == nil; seq++ {
		msg, ttl := downMessage(r.token, seq)
		r.mu.Lock()
		r.run.attempted = seq
		r.mu.Unlock()
		for try := 0; ; try++ {
			asked := time.Now()
			// Any node takes a send; one that is down, the next.
			res, err := r.srvs[(seq+try)%len(r.srvs)].send(r.key, msg)
			if err == nil && len(res.Results) == 1 && res.Results[0].MessageID != "" {
				r.mu.Lock()
				r.run.sent[res.Results[0].MessageID] = downSend{seq: seq, kind: downKindOf(seq), ttl: ttl, asked: asked, at: time.Now()}
				r.mu.Unlock()
				break
			}
			if err == nil && (len(res.Results) != 1 || res.Results[0].Error != "Unavailable" && res.Results[0].Error != "InternalServerError") {
				r.t.Errorf("message %d refused for good: %+v", seq, res)
				return
			}
			if !sleepCtx(ctx, 200*time.Millisecond) { // the server is down or busy
				return
			}
		}
		// About 1.7 messages a second, 1.2 of them stored without a
		// collapse key: a blackhole found out after a minute leaves fewer
		// than the server's 100 stored per app, most times.
		if !sleepCtx(ctx, 350*time.Millisecond+time.Duration(rng.Int64N(int64(500*time.Millisecond)))) {
			return
		}
	}
}

// sendUp is a local app sending upstream until ctx ends, retrying each
// message, under the same ID, until the agent accepts it.
func (r *chaosRig) sendUp(ctx context.Context, rng *rand.Rand) {
	for n := 0; ctx.Err() == nil; n++ {
		id := fmt.Sprintf("up-%d", n)
		for {
			c, err := dialApp(r.agent.sock)
			if err == nil {
				_, err = c.call(map[string]any{"op": "send", "app": app, "to": r.sender, "message_id": id, "data": map[string]any{"n": strconv.Itoa(n)}})
				c.close()
			}
			if err == nil {
				r.mu.Lock()
				r.up[id] = true
				r.mu.Unlock()
				break
			}
			var refused *callError
			if errors.As(err, &refused) && refused.Code != "TooManyMessages" && refused.Code != "StorageUnavailable" {
				r.t.Errorf("upstream %s refused for good: %v", id, err)
				return
			}
			if !sleepCtx(ctx, 200*time.Millisecond) { // the agent is down, or 20 are pending
				return
			}
		}
		if !sleepCtx(ctx, 700*time.Millisecond+time.Duration(rng.Int64N(int64(600*time.Millisecond)))) {
			return
		}
	}
}

// sleepCtx sleeps for d unless ctx ends first, and says whether it slept.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// settle waits, with the faults over and every process up, for every
// message to have ended as it must: the agent connected with nothing
// queued or pending, every downstream message accounted for, every
// upstream one at the webhook.
func (r *chaosRig) settle(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		err := r.settled()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func (r *chaosRig) settled() error {
	if r.app.exited() {
		return fmt.Errorf("the app exited on its own: %v\n%s", r.app.err, r.app.log())
	}
	st, err := readChaosStatus(r.agent)
	switch {
	case err != nil:
		return fmt.Errorf("agent status: %w", err)
	case !st.Connected:
		return errors.New("tetherd is not connected")
	case st.QueuedDownstream > 0 || st.PendingUpstream > 0:
		return fmt.Errorf("tetherd has %d messages queued for apps and %d upstream pending", st.QueuedDownstream, st.PendingUpstream)
	}
	records, err := readAppRecords(r.records)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	run := r.run
	run.end = time.Now()
	down, _ := accountDown(run, records)
	if down.Lost > 0 {
		return fmt.Errorf("%d downstream messages not delivered yet", down.Lost)
	}
	up, _, _ := accountUp(r.up, r.posts, r.serverStops, records)
	if up.AtWebhook < up.Accepted {
		return fmt.Errorf("%d upstream messages not at the webhook yet", up.Accepted-up.AtWebhook)
	}
	return nil
}

// shutdown ends the run: the app is killed, tetherd and tether-server stop
// as on a shutdown (the test fails unless they exit 0), and their stores
// are checked.
func (r *chaosRig) shutdown() {
	r.app.kill()
	r.agent.p.stop()
	r.checkStores(r.agent.data)
	for _, s := range r.srvs {
		r.stopServer(s, false)
	}
}
