package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"tether/internal/testpki"
)

// fleet is the run's devices, by index, and the sender that messages
// them. It is kept in a state file (mode 0600, it holds secrets) beside
// the server's data, so that devices check in and register once and every
// phase after the first only connects them.
type fleet struct {
	path    string
	Sender  newSender `json:"sender"`
	Devices []device  `json:"devices"`
}

func loadFleet(path string) (*fleet, error) {
	f := &fleet{path: path}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return f, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read state: %w", err)
	}
	if err := json.Unmarshal(b, f); err != nil {
		return nil, fmt.Errorf("read state %s: %w", path, err)
	}
	return f, nil
}

// save writes the state file whole: a new file renamed over the old.
func (f *fleet) save() error {
	b, err := json.Marshal(f)
	if err != nil {
		return err
	}
	tmp := f.path + ".new"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	if err := os.Rename(tmp, f.path); err != nil {
		return fmt.Errorf("write state: %w", err)
	}
	return nil
}

// grow makes sure the fleet has n devices; the new ones have no identity
// yet.
func (f *fleet) grow(n int) {
	for len(f.Devices) < n {
		f.Devices = append(f.Devices, device{})
	}
}

// merge takes the devices a crew's workers report back.
func (f *fleet) merge(c crew, answers []answer) {
	for i, p := range c {
		if len(answers[i].Devices) == p.count {
			copy(f.Devices[p.first:p.first+p.count], answers[i].Devices)
		}
	}
}

// runner runs the steps of one run.
type runner struct {
	cfg       config
	exe       string // this binary, re-executed as the workers
	serverBin string
	work      string // logs
	data      string // the server's data directory
	fleet     *fleet
	progress  io.Writer
	// pki, with -tls, is the server's certificate and the CA that signed it.
	pki *testpki.Files
	// passes counts the dialling passes so far: each dials from its own
	// loopback addresses, clear of the ports that earlier passes' closed
	// connections still hold.
	passes int
}

func (r *runner) say(format string, args ...any) {
	fmt.Fprintf(r.progress, "loadgen: "+format+"\n", args...)
}

func (r *runner) startServer(ctx context.Context, name string) (*server, error) {
	c := serverConfig{
		bin: r.serverBin, data: r.data, logPath: filepath.Join(r.work, name+"-server.log"),
		logLevel: r.cfg.logLevel, fdCap: r.cfg.serverFDs, pki: r.pki,
	}
	if r.cfg.memprobe {
		c.heapProfile = filepath.Join(r.work, name+"-heap")
	}
	return startServer(ctx, c)
}

// memprobe probes srv with -memprobe, and does nothing without.
func (r *runner) memprobe(srv *server) (*memProbe, error) {
	if !r.cfg.memprobe {
		return nil, nil
	}
	return srv.memprobe(time.Minute)
}

// sources gives each worker of the next pass its loopback address.
func (r *runner) sources() func(i int) string {
	pass := r.passes
	r.passes++
	return func(i int) string { return fmt.Sprintf("127.0.%d.%d", 10+pass, 1+i) }
}

func (r *runner) job(srv *server) job {
	j := job{
		URL: srv.url(), Sender: r.fleet.Sender.ID, Heartbeat: r.cfg.heartbeat,
		Concurrency: r.cfg.concurrency, HandshakeTimeout: r.cfg.handshakeTimeout,
	}
	if r.pki != nil {
		j.CAFile = r.pki.CA
	}
	return j
}

// passStats sums the workers' answers to one pass.
type passStats struct {
	Devices  int            `json:"devices"`
	Done     int            `json:"done"`
	Failed   int            `json:"failed"`
	Failures map[string]int `json:"failures,omitempty"`
	// Seconds runs from the pass's start to its last success.
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"`
}

func sumPass(answers []answer) passStats {
	st := passStats{Failures: map[string]int{}}
	var start, end time.Time
	for _, a := range answers {
		st.Done += a.Done
		st.Failed += a.Failed
		for k, v := range a.Failures {
			st.Failures[k] += v
		}
		if start.IsZero() || a.Start.Before(start) {
			start = a.Start
		}
		if a.End.After(end) {
			end = a.End
		}
	}
	st.Devices = st.Done + st.Failed
	if d := end.Sub(start); st.Done > 0 && d > 0 {
		st.Seconds = d.Seconds()
		st.PerSecond = float64(st.Done) / d.Seconds()
	}
	return st
}

// lastEnd is when the last of the workers finished a step.
func lastEnd(answers []answer) time.Time {
	var end time.Time
	for _, a := range answers {
		if a.End.After(end) {
			end = a.End
		}
	}
	return end
}

func (st passStats) failureText() string {
	keys := slices.Collect(maps.Keys(st.Failures))
	sort.Slice(keys, func(i, j int) bool { return st.Failures[keys[i]] > st.Failures[keys[j]] })
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s ×%d", k, st.Failures[k]))
	}
	return strings.Join(parts, ", ")
}

type provisionReport struct {
	// CheckIn is hellos without credentials answered with a new device:
	// one store commit each.
	CheckIn passStats `json:"check_in"`
	// Register is one app registered per device: one store commit each.
	Register passStats `json:"register"`
}

// provision checks in and registers the first n devices of the fleet
// that lack either, against srv, and keeps them in the state file.
func (r *runner) provision(ctx context.Context, srv *server, n int) (*provisionReport, error) {
	r.fleet.grow(n)
	devs := r.fleet.Devices[:n]
	missing := 0
	for _, d := range devs {
		if d.Token == "" {
			missing++
		}
	}
	if missing == 0 {
		return nil, nil
	}
	r.say("provisioning %d devices: check-in, then registration", missing)
	c, err := startCrew(r.exe, r.job(srv), devs, 0, r.cfg.workers, r.work, "provision")
	if err != nil {
		return nil, err
	}
	defer c.stop()
	var rep provisionReport
	for _, step := range []struct {
		op  string
		out *passStats
	}{{opCheckIn, &rep.CheckIn}, {opRegister, &rep.Register}} {
		source := r.sources()
		answers, err := c.all(ctx, func(i int) command { return command{Op: step.op, Source: source(i)} })
		if err != nil {
			return nil, err
		}
		r.fleet.merge(c, answers)
		if err := r.fleet.save(); err != nil {
			return nil, err
		}
		*step.out = sumPass(answers)
	}
	return &rep, nil
}

// phaseReport is what one phase measured.
type phaseReport struct {
	Name    string `json:"name"`
	Devices int    `json:"devices"` // sessions tried
	Workers int    `json:"workers"`
	Held    int    `json:"held"`
	// Connect is the hellos with credentials answered with a welcome.
	Connect passStats `json:"connect"`
	// TLS is what the sessions negotiated over wss://, as one reports it.
	TLS string `json:"tls,omitempty"`
	// StoppedBy says what bounded a phase that looked for the maximum.
	StoppedBy string `json:"stopped_by,omitempty"`
	// Before is the fresh server, AtHold with every session held and
	// settled, After once every message was acked.
	Before procStats `json:"server_before"`
	AtHold procStats `json:"server_held"`
	After  procStats `json:"server_after"`
	// PerConnKiB is the RSS growth from Before to AtHold per session held;
	// PerConnAnonKiB the same of anonymous memory (heap and stacks).
	PerConnKiB     float64 `json:"rss_per_conn_kib"`
	PerConnAnonKiB float64 `json:"anon_per_conn_kib"`
	// Probe* are, with -memprobe, what the server's runtime held after a
	// forced collection: fresh, once AtHold was read, and once After was.
	ProbeFresh *memProbe `json:"probe_fresh,omitempty"`
	ProbeHeld  *memProbe `json:"probe_held,omitempty"`
	ProbeAfter *memProbe `json:"probe_after,omitempty"`
	// GC is the last garbage collection before AtHold was read, GCAfter
	// the last before After.
	GC      *gcReport `json:"gc,omitempty"`
	GCAfter *gcReport `json:"gc_after,omitempty"`
	// SlabGrowthKiB is the machine's kernel slab growth over the
	// connections (both ends are on this machine).
	SlabGrowthKiB     int64       `json:"slab_growth_kib"`
	Goroutines        *goroutines `json:"goroutines,omitempty"`
	ConnectCPUSeconds float64     `json:"connect_cpu_seconds"`
	// Dropped is the sessions closed to leave the sender file descriptors.
	Dropped  int           `json:"dropped,omitempty"`
	Send     sendStats     `json:"send"`
	SendCPU  float64       `json:"send_cpu_seconds"`
	Delivery deliveryStats `json:"delivery"`
	// Unsynced is the live sessions that did not answer a ping after the
	// acks: the server may not have stored their acks.
	Unsynced int `json:"unsynced,omitempty"`
	// WorkersRSSKiB is the workers' RSS with every session held.
	WorkersRSSKiB uint64 `json:"workers_rss_kib"`
	// StoreBytes is the server's store file at the end.
	StoreBytes int64 `json:"store_bytes"`
}

type gcReport struct {
	gcLine
	// SecondsBefore is how long before the reading it ran.
	SecondsBefore float64 `json:"seconds_before"`
	Collections   int     `json:"collections"`
	// Early is set when it ran before the step measured was over (some
	// devices not connected yet): its heap is not per session.
	Early bool `json:"early,omitempty"`
}

// phase holds n sessions on a fresh server process (the same data
// directory), measures it, sends every device a message and accounts for
// each one.
func (r *runner) phase(ctx context.Context, spec phaseSpec, n int) (pr phaseReport, err error) {
	pr = phaseReport{Name: spec.String(), Devices: n}
	name := "phase-" + pr.Name
	srv, err := r.startServer(ctx, name)
	if err != nil {
		return pr, err
	}
	defer srv.stop()
	if pr.Before, err = srv.stats(); err != nil {
		return pr, err
	}
	if pr.ProbeFresh, err = r.memprobe(srv); err != nil {
		return pr, err
	}
	slabBefore := slabKiB()
	c, err := startCrew(r.exe, r.job(srv), r.fleet.Devices[:n], 0, r.cfg.workers, r.work, name)
	if err != nil {
		return pr, err
	}
	defer c.stop()
	pr.Workers = len(c)

	r.say("phase %s: connecting %d devices from %d workers", pr.Name, n, len(c))
	source := r.sources()
	answers, err := c.all(ctx, func(i int) command { return command{Op: opConnect, Source: source(i)} })
	if err != nil {
		return pr, err
	}
	pr.Connect = sumPass(answers)
	var held []int
	for _, a := range answers {
		held = append(held, a.Held...)
	}
	pr.Held = len(held)
	pr.WorkersRSSKiB = rssKiB(answers)
	for _, a := range answers {
		pr.TLS = cmp.Or(pr.TLS, a.TLS)
	}
	if err := sleep(ctx, r.cfg.settle); err != nil {
		return pr, err
	}
	if pr.AtHold, err = srv.stats(); err != nil {
		return pr, err
	}
	pr.SlabGrowthKiB = int64(slabKiB()) - int64(slabBefore)
	pr.ConnectCPUSeconds = pr.AtHold.CPUSeconds - pr.Before.CPUSeconds
	if pr.GC = srv.lastGC(); pr.GC != nil {
		pr.GC.Early = pr.GC.at.Before(lastEnd(answers))
	}
	if pr.ProbeHeld, err = r.memprobe(srv); err != nil {
		return pr, err
	}
	if pr.Held > 0 {
		pr.PerConnKiB = (float64(pr.AtHold.RSSKiB) - float64(pr.Before.RSSKiB)) / float64(pr.Held)
		pr.PerConnAnonKiB = (float64(pr.AtHold.AnonKiB) - float64(pr.Before.AnonKiB)) / float64(pr.Held)
	}
	if spec.max {
		pr.StoppedBy = stoppedBy(n, r.cfg.conns, pr.Connect, pr.Before, pr.AtHold)
	}
	r.say("phase %s: %d sessions held (%.0f/s); server RSS %.1f MiB", pr.Name, pr.Held, pr.Connect.PerSecond, float64(pr.AtHold.RSSKiB)/1024)
	if pr.Held == 0 {
		return pr, nil
	}

	dropped, err := r.makeRoom(ctx, srv, c, pr.AtHold)
	if err != nil {
		return pr, err
	}
	pr.Dropped = len(dropped)
	targets := without(held, dropped)

	round := pr.Name + "-" + rand.Text()[:8]
	tokens := make([]string, len(targets))
	for i, d := range targets {
		tokens[i] = r.fleet.Devices[d].Token
	}
	r.say("phase %s: sending one message to each of %d devices", pr.Name, len(targets))
	sc := sendConfig{
		base: srv.base(), key: r.fleet.Sender.ServerKey,
		batch: r.cfg.batch, parallel: r.cfg.senders, payload: r.cfg.payload,
	}
	if r.pki != nil {
		sc.roots = r.pki.Pool
	}
	sent, st, sendStart, err := sendRound(ctx, sc, tokens, round)
	pr.Send = st
	if err != nil {
		return pr, err
	}
	answers, err = c.all(ctx, func(int) command { return command{Op: opAwait, Round: round, Wait: r.cfg.deliverWait} })
	if err != nil {
		return pr, err
	}
	pr.Delivery = account(targets, sent, sendStart, answers)
	// Every ack stored before the server is read, and before SIGQUIT ends
	// it: an ack it had not stored would bring the message back next phase.
	answers, err = c.all(ctx, func(int) command { return command{Op: opSync, Wait: r.cfg.deliverWait} })
	if err != nil {
		return pr, err
	}
	pr.Unsynced = sumPass(answers).Failed
	if pr.After, err = srv.stats(); err != nil {
		return pr, err
	}
	if pr.GCAfter = srv.lastGC(); pr.GCAfter != nil {
		pr.GCAfter.Early = pr.GCAfter.at.Before(lastEnd(answers))
	}
	if pr.ProbeAfter, err = r.memprobe(srv); err != nil {
		return pr, err
	}
	pr.SendCPU = pr.After.CPUSeconds - pr.AtHold.CPUSeconds
	if fi, err := os.Stat(filepath.Join(r.data, "server.db")); err == nil {
		pr.StoreBytes = fi.Size()
	}
	r.say("phase %s: %d of %d messages acked", pr.Name, pr.Delivery.Delivered, pr.Delivery.Expected)
	if r.cfg.goroutines {
		g, err := srv.dumpGoroutines(2 * time.Minute)
		if err != nil {
			return pr, err
		}
		g.split(len(targets))
		pr.Goroutines = &g
	}
	return pr, nil
}

// makeRoom closes sessions until the server has a file descriptor for
// each of the sender's connections and one to spare, and waits until it
// has them. It returns the devices whose sessions it closed.
func (r *runner) makeRoom(ctx context.Context, srv *server, c crew, st procStats) ([]int, error) {
	need := r.cfg.senders + 1
	short := need - (st.FDLimit - st.FDs)
	if short <= 0 {
		return nil, nil
	}
	var dropped []int
	for i := len(c) - 1; i >= 0 && len(dropped) < short; i-- {
		a, err := c[i].do(ctx, command{Op: opDrop, N: short - len(dropped)})
		if err != nil {
			return dropped, err
		}
		dropped = append(dropped, a.Dropped...)
	}
	r.say("closed %d sessions to leave the sender %d file descriptors", len(dropped), need)
	// The server frees them once it has read the close, and accepts the
	// handshakes it left waiting, which their dialers have given up.
	deadline := time.Now().Add(30 * time.Second)
	for {
		now, err := srv.stats()
		if err != nil {
			return dropped, err
		}
		if now.FDLimit-now.FDs >= need {
			return dropped, nil
		}
		if time.Now().After(deadline) {
			return dropped, fmt.Errorf("the server still has %d of %d file descriptors open 30 s after %d sessions closed", now.FDs, now.FDLimit, len(dropped))
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return dropped, err
		}
	}
}

// stoppedBy says what bounded the search for the most sessions.
func stoppedBy(tried, conns int, connect passStats, before, held procStats) string {
	if connect.Failed == 0 {
		if tried >= conns {
			return fmt.Sprintf("the -conns bound of %d: every session connected, with %d of the server's %d file descriptors open",
				conns, held.FDs, held.FDLimit)
		}
		return fmt.Sprintf("nothing: all %d sessions tried connected, with %d of the server's %d file descriptors open",
			tried, held.FDs, held.FDLimit)
	}
	if held.FDs >= held.FDLimit-1 {
		return fmt.Sprintf("the server's open-file limit: it had %d of %d file descriptors open (%d of them before any device connected), "+
			"and the %d handshakes beyond failed: %s. An accept that finds no free descriptor leaves the connection in the listen queue, and the device's handshake times out",
			held.FDs, held.FDLimit, before.FDs, connect.Failed, connect.failureText())
	}
	return fmt.Sprintf("%d handshakes failed (%s) with %d of the server's %d file descriptors open",
		connect.Failed, connect.failureText(), held.FDs, held.FDLimit)
}

func without(all, drop []int) []int {
	gone := map[int]bool{}
	for _, d := range drop {
		gone[d] = true
	}
	var out []int
	for _, d := range all {
		if !gone[d] {
			out = append(out, d)
		}
	}
	sort.Ints(out)
	return out
}

// deliveryStats accounts for every message of a round.
type deliveryStats struct {
	// Expected is the messages the server accepted; Delivered those the
	// right device acked with the ID the send returned.
	Expected  int `json:"expected"`
	Delivered int `json:"delivered"`
	// Missing is devices that did not ack their message; MissingDevices
	// names the first of them.
	Missing        int   `json:"missing"`
	MissingDevices []int `json:"missing_devices,omitempty"`
	// Duplicates is acks of a message more than once; Unexpected acks of
	// IDs no send returned for the device; Stray messages of other rounds.
	Duplicates int `json:"duplicates"`
	Unexpected int `json:"unexpected"`
	Stray      int `json:"stray"`
	// Lost is sessions that ended while held, by why.
	Lost        int            `json:"lost"`
	LostReasons map[string]int `json:"lost_reasons,omitempty"`
	// Seconds runs from the first send to the last ack.
	Seconds    float64 `json:"seconds"`
	PerSecond  float64 `json:"per_second"`
	LatencyP50 float64 `json:"latency_p50_seconds"`
	LatencyP99 float64 `json:"latency_p99_seconds"`
	LatencyMax float64 `json:"latency_max_seconds"`
}

// maxNamed bounds the devices named in a report.
const maxNamed = 20

// account matches the workers' receipts against what was sent: targets[i]
// was sent sent[i].
func account(targets []int, sent []sentMessage, sendStart time.Time, answers []answer) deliveryStats {
	var st deliveryStats
	got := map[int][]receipt{}
	for _, a := range answers {
		for _, rc := range a.Receipts {
			got[rc.Device] = append(got[rc.Device], rc)
		}
		st.Stray += a.Stray
		for _, l := range a.Lost {
			if st.LostReasons == nil {
				st.LostReasons = map[string]int{}
			}
			st.Lost++
			st.LostReasons[l.Why]++
		}
	}
	var latencies []time.Duration
	var last time.Time
	expected := map[int]bool{}
	for i, d := range targets {
		if sent[i].id == "" {
			continue // the send failed and says so
		}
		expected[d] = true
		st.Expected++
		matched := 0
		for _, rc := range got[d] {
			if rc.ID != sent[i].id {
				st.Unexpected++
				continue
			}
			if matched == 0 {
				latencies = append(latencies, rc.At.Sub(sent[i].at))
				if rc.At.After(last) {
					last = rc.At
				}
			}
			matched++
		}
		switch {
		case matched == 0:
			st.Missing++
			if len(st.MissingDevices) < maxNamed {
				st.MissingDevices = append(st.MissingDevices, d)
			}
		default:
			st.Delivered++
			st.Duplicates += matched - 1
		}
	}
	for d, rcs := range got {
		if !expected[d] {
			st.Unexpected += len(rcs)
		}
	}
	if d := last.Sub(sendStart); st.Delivered > 0 && d > 0 {
		st.Seconds = d.Seconds()
		st.PerSecond = float64(st.Delivered) / d.Seconds()
	}
	if len(latencies) > 0 {
		slices.Sort(latencies)
		at := func(q float64) float64 { return latencies[int(q*float64(len(latencies)-1))].Seconds() }
		st.LatencyP50, st.LatencyP99, st.LatencyMax = at(0.5), at(0.99), at(1)
	}
	return st
}

// problems lists what went wrong in a phase, for the report's loudest line.
func (pr phaseReport) problems(numbered bool) []string {
	var out []string
	p := func(format string, args ...any) {
		out = append(out, fmt.Sprintf("phase %s: ", pr.Name)+fmt.Sprintf(format, args...))
	}
	if numbered && pr.Connect.Failed > 0 {
		p("%d of %d sessions failed to connect: %s", pr.Connect.Failed, pr.Devices, pr.Connect.failureText())
	}
	if pr.Held == 0 {
		p("no session connected")
		return out
	}
	if pr.Send.Failed > 0 {
		p("%d of %d messages were not accepted: %v", pr.Send.Failed, pr.Send.Messages, pr.Send.Errors)
	}
	d := pr.Delivery
	if d.Missing > 0 {
		p("%d devices did not get their message (devices %v)", d.Missing, d.MissingDevices)
	}
	if d.Duplicates > 0 {
		p("%d messages were delivered more than once", d.Duplicates)
	}
	if d.Unexpected > 0 {
		p("%d messages came to a device they were not sent to", d.Unexpected)
	}
	if d.Stray > 0 {
		p("%d messages of earlier rounds came back", d.Stray)
	}
	if d.Lost > 0 {
		p("%d held sessions ended: %v", d.Lost, d.LostReasons)
	}
	if pr.Unsynced > 0 {
		p("%d sessions did not answer a ping after their ack", pr.Unsynced)
	}
	return out
}

// sleep waits d, or until ctx ends.
func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
