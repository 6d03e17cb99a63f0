// SPDX-License-Identifier: Apache-2.0

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
	"sync"
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

// registered counts the devices with a registration.
func (f *fleet) registered() int {
	n := 0
	for _, d := range f.Devices {
		if d.Token != "" {
			n++
		}
	}
	return n
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
	// data is the server's data directory; a cluster node's is in it.
	data string
	// nats, with -cluster, holds the nodes' state; nil without.
	nats     *natsCluster
	fleet    *fleet
	progress io.Writer
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

// nodes are the servers of a step: the one server, or the nodes of a
// cluster.
type nodes []*server

// startNodes starts the server, or each node of the cluster in turn: the
// first to start creates the cluster's streams, if the sender's creation
// has not, and the others find them.
func (r *runner) startNodes(ctx context.Context, name string) (nodes, error) {
	var ns nodes
	for i := range max(r.cfg.cluster, 1) {
		c := serverConfig{
			bin: r.serverBin, data: r.data, logPath: filepath.Join(r.work, name+"-server.log"),
			logLevel: r.cfg.logLevel, fdCap: r.cfg.serverFDs, pki: r.pki,
		}
		heap := name + "-heap"
		if r.nats != nil {
			node := fmt.Sprintf("node%d", i+1)
			c.data = filepath.Join(r.data, node)
			c.nats = r.nats.url()
			c.logPath = filepath.Join(r.work, name+"-"+node+".log")
			heap = name + "-" + node + "-heap"
		}
		if r.cfg.memprobe {
			c.heapProfile = filepath.Join(r.work, heap)
		}
		s, err := startServer(ctx, c)
		if err != nil {
			ns.stop()
			if r.nats != nil {
				return nil, fmt.Errorf("node %d: %w", i+1, err)
			}
			return nil, err
		}
		ns = append(ns, s)
	}
	return ns, nil
}

// stop stops every node at once: each says goodbye to its sessions.
func (ns nodes) stop() {
	var wg sync.WaitGroup
	for _, s := range ns {
		wg.Go(s.stop)
	}
	wg.Wait()
}

func (ns nodes) stats() ([]procStats, error) {
	out := make([]procStats, len(ns))
	for i, s := range ns {
		var err error
		if out[i], err = s.stats(); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// onNode names node i in progress lines of a cluster; one server needs
// no name.
func (r *runner) onNode(i int) string {
	if r.nats == nil {
		return ""
	}
	return fmt.Sprintf(" on node %d", i+1)
}

// store names the state for admin commands: the server's data directory,
// or the cluster's NATS servers.
func (r *runner) store() []string {
	if r.nats != nil {
		return []string{"--nats", r.nats.url()}
	}
	return []string{"--data", r.data}
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

func (r *runner) job(ns nodes) job {
	j := job{
		Sender: r.fleet.Sender.ID, Heartbeat: r.cfg.heartbeat, EnrollKey: enrollKey,
		Concurrency: r.cfg.concurrency, HandshakeTimeout: r.cfg.handshakeTimeout,
	}
	for _, s := range ns {
		j.URLs = append(j.URLs, s.url())
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
	sort.Slice(keys, func(i, j int) bool {
		if st.Failures[keys[i]] != st.Failures[keys[j]] {
			return st.Failures[keys[i]] > st.Failures[keys[j]]
		}
		return keys[i] < keys[j] // a cluster's nodes in order
	})
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
// that lack either, through ns, and keeps them in the state file.
func (r *runner) provision(ctx context.Context, ns nodes, n int) (*provisionReport, error) {
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
	c, err := startCrew(r.exe, r.job(ns), devs, 0, r.cfg.workers, r.work, "provision")
	if err != nil {
		return nil, err
	}
	defer c.stop()
	var rep provisionReport
	for _, step := range []struct {
		op   string
		turn int
		out  *passStats
	}{{opCheckIn, turnCheckIn, &rep.CheckIn}, {opRegister, turnRegister, &rep.Register}} {
		source := r.sources()
		answers, err := c.all(ctx, func(i int) command { return command{Op: step.op, Source: source(i), Turn: step.turn} })
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
	// serverReport is the server's; on a cluster, the nodes' together:
	// their sums, and their growth over all their sessions. The Go
	// runtime's figures (GC, goroutines, memprobe) are then each node's,
	// in Nodes.
	serverReport
	// SlabGrowthKiB is the machine's kernel slab growth over the
	// connections (both ends are on this machine).
	SlabGrowthKiB int64 `json:"slab_growth_kib"`
	// Dropped is the sessions closed to leave the sender file descriptors.
	Dropped  int           `json:"dropped,omitempty"`
	Send     sendStats     `json:"send"`
	Delivery deliveryStats `json:"delivery"`
	// Unsynced is the live sessions that did not answer a ping after the
	// acks: the server may not have stored their acks.
	Unsynced int `json:"unsynced,omitempty"`
	// WorkersRSSKiB is the workers' RSS with every session held.
	WorkersRSSKiB uint64 `json:"workers_rss_kib"`
	// StoreBytes is the server's store file at the end; on a cluster, the
	// NATS servers' JetStream stores, every replica.
	StoreBytes int64 `json:"store_bytes"`
	// On a cluster: each node's figures, each NATS server's, and what
	// JetStream holds once every message was acked.
	Nodes     []nodeReport       `json:"nodes,omitempty"`
	NATS      []natsServerReport `json:"nats,omitempty"`
	JetStream *jetStreamReport   `json:"jetstream,omitempty"`
}

// serverReport is what one tether-server process measured in a phase.
type serverReport struct {
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
	GC                *gcReport   `json:"gc,omitempty"`
	GCAfter           *gcReport   `json:"gc_after,omitempty"`
	Goroutines        *goroutines `json:"goroutines,omitempty"`
	ConnectCPUSeconds float64     `json:"connect_cpu_seconds"`
	SendCPU           float64     `json:"send_cpu_seconds"`
}

// perSession sets the growth per session of the held sessions.
func (sr *serverReport) perSession(held int) {
	if held > 0 {
		sr.PerConnKiB = (float64(sr.AtHold.RSSKiB) - float64(sr.Before.RSSKiB)) / float64(held)
		sr.PerConnAnonKiB = (float64(sr.AtHold.AnonKiB) - float64(sr.Before.AnonKiB)) / float64(held)
	}
}

// nodeReport is one node's part of a phase on a cluster.
type nodeReport struct {
	Node    int `json:"node"`    // from 1
	Devices int `json:"devices"` // sessions tried on it
	Held    int `json:"held"`
	serverReport
	// Send is the requests made to it; Delivery the messages to the
	// devices whose sessions it held, whichever node took their sends.
	Send     sendStats     `json:"send"`
	Delivery deliveryStats `json:"delivery"`
}

// together is the phase's server figures: the one server's own, or the
// sums of a cluster's nodes.
func together(ns []nodeReport, held int) serverReport {
	if len(ns) == 1 {
		return ns[0].serverReport
	}
	var t serverReport
	for _, n := range ns {
		t.Before = t.Before.plus(n.Before)
		t.AtHold = t.AtHold.plus(n.AtHold)
		t.After = t.After.plus(n.After)
		t.ConnectCPUSeconds += n.ConnectCPUSeconds
		t.SendCPU += n.SendCPU
	}
	t.perSession(held)
	return t
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

// phase holds n sessions on fresh server processes (on the same data
// directory, or the same cluster), measures them, sends every device a
// message and accounts for each one.
func (r *runner) phase(ctx context.Context, spec phaseSpec, n int) (pr phaseReport, err error) {
	pr = phaseReport{Name: spec.String(), Devices: n}
	name := "phase-" + pr.Name
	if r.nats != nil && r.cfg.freshNATS {
		r.say("phase %s: restarting the nats-servers", pr.Name)
		if err := r.nats.restart(); err != nil {
			return pr, err
		}
	}
	ns, err := r.startNodes(ctx, name)
	if err != nil {
		return pr, err
	}
	defer ns.stop()
	nodes := make([]nodeReport, len(ns))
	for i := range nodes {
		nodes[i].Node = i + 1
	}
	for d := range n {
		nodes[nodeOf(d, turnConnect, len(ns))].Devices++
	}
	// However the phase ends, the report has what it measured.
	defer func() {
		pr.serverReport = together(nodes, pr.Held)
		if r.nats != nil {
			pr.Nodes = nodes
		}
	}()
	befores, err := ns.stats()
	if err != nil {
		return pr, err
	}
	for i, s := range ns {
		nodes[i].Before = befores[i]
		if nodes[i].ProbeFresh, err = r.memprobe(s); err != nil {
			return pr, err
		}
	}
	natsBefore, err := r.nats.sample(ctx)
	if err != nil {
		return pr, err
	}
	slabBefore := slabKiB()
	c, err := startCrew(r.exe, r.job(ns), r.fleet.Devices[:n], 0, r.cfg.workers, r.work, name)
	if err != nil {
		return pr, err
	}
	defer c.stop()
	pr.Workers = len(c)

	r.say("phase %s: connecting %d devices from %d workers%s", pr.Name, n, len(c), r.spread(len(ns)))
	source := r.sources()
	answers, err := c.all(ctx, func(i int) command { return command{Op: opConnect, Source: source(i), Turn: turnConnect} })
	if err != nil {
		return pr, err
	}
	pr.Connect = sumPass(answers)
	var held []int
	for _, a := range answers {
		held = append(held, a.Held...)
	}
	pr.Held = len(held)
	for _, d := range held {
		nodes[nodeOf(d, turnConnect, len(ns))].Held++
	}
	pr.WorkersRSSKiB = rssKiB(answers)
	for _, a := range answers {
		pr.TLS = cmp.Or(pr.TLS, a.TLS)
	}
	if err := sleep(ctx, r.cfg.settle); err != nil {
		return pr, err
	}
	atHold, err := ns.stats()
	if err != nil {
		return pr, err
	}
	pr.SlabGrowthKiB = int64(slabKiB()) - int64(slabBefore)
	natsHeld, err := r.nats.sample(ctx)
	if err != nil {
		return pr, err
	}
	var rss uint64
	for i, s := range ns {
		nd := &nodes[i]
		nd.AtHold = atHold[i]
		nd.ConnectCPUSeconds = nd.AtHold.CPUSeconds - nd.Before.CPUSeconds
		if nd.GC = s.lastGC(); nd.GC != nil {
			nd.GC.Early = nd.GC.at.Before(lastEnd(answers))
		}
		nd.perSession(nd.Held)
		rss += nd.AtHold.RSSKiB
	}
	// Each probe collects garbage: after every node's RSS is read.
	for i, s := range ns {
		if nodes[i].ProbeHeld, err = r.memprobe(s); err != nil {
			return pr, err
		}
	}
	if spec.max {
		pr.StoppedBy = stoppedBy(n, r.cfg.conns, pr.Connect, befores, atHold)
	}
	rssOf := "server"
	if r.nats != nil {
		rssOf = "the nodes'"
	}
	r.say("phase %s: %d sessions held (%.0f/s); %s RSS %.1f MiB", pr.Name, pr.Held, pr.Connect.PerSecond, rssOf, float64(rss)/1024)
	if pr.Held == 0 {
		return pr, nil
	}

	dropped, err := r.makeRoom(ctx, ns, c, atHold)
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
	r.say("phase %s: sending one message to each of %d devices%s", pr.Name, len(targets), r.spread(len(ns)))
	sc := sendConfig{
		key: r.fleet.Sender.ServerKey, batch: r.cfg.batch, parallel: r.cfg.senders, payload: r.cfg.payload,
	}
	for _, s := range ns {
		sc.bases = append(sc.bases, s.base())
	}
	if r.pki != nil {
		sc.roots = r.pki.Pool
	}
	sent, sendOn, sendStart, err := sendRound(ctx, sc, tokens, round)
	pr.Send = mergeSends(sendOn)
	for i := range nodes {
		nodes[i].Send = sendOn[i]
	}
	if err != nil {
		return pr, err
	}
	answers, err = c.all(ctx, func(int) command { return command{Op: opAwait, Round: round, Wait: r.cfg.deliverWait} })
	if err != nil {
		return pr, err
	}
	pr.Delivery = account(targets, sent, sendStart, answers)
	targetsOn := make([]int, len(ns))
	for i := range nodes {
		t, s, a := onNode(i, len(ns), targets, sent, answers)
		nodes[i].Delivery = account(t, s, sendStart, a)
		targetsOn[i] = len(t)
	}
	// Every ack stored before the server is read, and before SIGQUIT ends
	// it: an ack it had not stored would bring the message back next phase.
	answers, err = c.all(ctx, func(int) command { return command{Op: opSync, Wait: r.cfg.deliverWait} })
	if err != nil {
		return pr, err
	}
	pr.Unsynced = sumPass(answers).Failed
	after, err := ns.stats()
	if err != nil {
		return pr, err
	}
	for i, s := range ns {
		nd := &nodes[i]
		nd.After = after[i]
		nd.SendCPU = nd.After.CPUSeconds - nd.AtHold.CPUSeconds
		if nd.GCAfter = s.lastGC(); nd.GCAfter != nil {
			nd.GCAfter.Early = nd.GCAfter.at.Before(lastEnd(answers))
		}
	}
	for i, s := range ns {
		if nodes[i].ProbeAfter, err = r.memprobe(s); err != nil {
			return pr, err
		}
	}
	natsAfter, err := r.nats.sample(ctx)
	if err != nil {
		return pr, err
	}
	pr.NATS = r.nats.reports(natsBefore, natsHeld, natsAfter, pr.Held, r.fleet.registered(), r.cfg.freshNATS)
	if pr.JetStream, err = r.nats.jetStream(ctx, r.fleet.registered()); err != nil {
		return pr, err
	}
	if pr.JetStream != nil {
		pr.StoreBytes = pr.JetStream.DiskBytes
	} else if fi, err := os.Stat(filepath.Join(r.data, "server.db")); err == nil {
		pr.StoreBytes = fi.Size()
	}
	r.say("phase %s: %d of %d messages acked", pr.Name, pr.Delivery.Delivered, pr.Delivery.Expected)
	if r.cfg.goroutines {
		for i, s := range ns {
			g, err := s.dumpGoroutines(2 * time.Minute)
			if err != nil {
				return pr, err
			}
			g.split(targetsOn[i])
			nodes[i].Goroutines = &g
		}
	}
	return pr, nil
}

// spread says, in progress lines, that the devices are spread over a
// cluster's nodes.
func (r *runner) spread(nodes int) string {
	if r.nats == nil {
		return ""
	}
	return fmt.Sprintf(" over %d nodes", nodes)
}

// who names node i in messages: the server, or node i of a cluster.
func (r *runner) who(i int) string {
	if r.nats == nil {
		return "the server"
	}
	return fmt.Sprintf("node %d", i+1)
}

// onNode keeps, of a round's targets, what was sent to them and the
// workers' answers, those of the devices whose sessions node holds.
func onNode(node, nodes int, targets []int, sent []sentMessage, answers []answer) ([]int, []sentMessage, []answer) {
	mine := func(d int) bool { return nodeOf(d, turnConnect, nodes) == node }
	var t []int
	var s []sentMessage
	for i, d := range targets {
		if mine(d) {
			t = append(t, d)
			s = append(s, sent[i])
		}
	}
	var a answer
	for _, ans := range answers {
		for _, rc := range ans.Receipts {
			if mine(rc.Device) {
				a.Receipts = append(a.Receipts, rc)
			}
		}
		for _, l := range ans.Lost {
			if mine(l.Device) {
				a.Lost = append(a.Lost, l)
			}
		}
	}
	return t, s, []answer{a}
}

// makeRoom closes sessions until each server has a file descriptor for
// each of the sender's connections and one to spare, and waits until it
// has them. It returns the devices whose sessions it closed.
func (r *runner) makeRoom(ctx context.Context, ns nodes, c crew, held []procStats) ([]int, error) {
	need := r.cfg.senders + 1
	var dropped []int
	for node, st := range held {
		short := need - (st.FDLimit - st.FDs)
		if short <= 0 {
			continue
		}
		var closed []int
		for i := len(c) - 1; i >= 0 && len(closed) < short; i-- {
			a, err := c[i].do(ctx, command{Op: opDrop, Node: node, N: short - len(closed)})
			if err != nil {
				return append(dropped, closed...), err
			}
			closed = append(closed, a.Dropped...)
		}
		dropped = append(dropped, closed...)
		r.say("closed %d sessions%s to leave the sender %d file descriptors", len(closed), r.onNode(node), need)
		if err := r.awaitRoom(ctx, ns[node], node, need, len(closed)); err != nil {
			return dropped, err
		}
	}
	return dropped, nil
}

// awaitRoom waits until s, node of ns, has need file descriptors free
// once closed sessions were closed. It frees them once it has read the
// closes, and accepts the handshakes it left waiting, which their dialers
// have given up.
func (r *runner) awaitRoom(ctx context.Context, s *server, node, need, closed int) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		now, err := s.stats()
		if err != nil {
			return err
		}
		if now.FDLimit-now.FDs >= need {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s still has %d of %d file descriptors open 30 s after %d sessions closed", r.who(node), now.FDs, now.FDLimit, closed)
		}
		if err := sleep(ctx, 100*time.Millisecond); err != nil {
			return err
		}
	}
}

// stoppedBy says what bounded the search for the most sessions, on the
// server or a cluster's nodes.
func stoppedBy(tried, conns int, connect passStats, before, held []procStats) string {
	if connect.Failed == 0 {
		if tried >= conns {
			return fmt.Sprintf("the -conns bound of %d: every session connected, with %s", conns, filesOpen(held))
		}
		return fmt.Sprintf("nothing: all %d sessions tried connected, with %s", tried, filesOpen(held))
	}
	var full []string
	for i, h := range held {
		if h.FDs < h.FDLimit-1 {
			continue
		}
		who := "it"
		if len(held) > 1 {
			who = fmt.Sprintf("node %d", i+1)
		}
		full = append(full, fmt.Sprintf("%s had %d of %d file descriptors open (%d of them before any device connected)", who, h.FDs, h.FDLimit, before[i].FDs))
	}
	if len(full) > 0 {
		limit := "the server's open-file limit"
		if len(held) > 1 {
			limit = "the nodes' open-file limits"
		}
		return fmt.Sprintf("%s: %s, and the %d handshakes beyond failed: %s. An accept that finds no free descriptor leaves the connection in the listen queue, and the device's handshake times out",
			limit, strings.Join(full, "; "), connect.Failed, connect.failureText())
	}
	return fmt.Sprintf("%d handshakes failed (%s) with %s", connect.Failed, connect.failureText(), filesOpen(held))
}

// filesOpen says how many file descriptors the server, or each node, had
// open.
func filesOpen(held []procStats) string {
	if len(held) == 1 {
		return fmt.Sprintf("%d of the server's %d file descriptors open", held[0].FDs, held[0].FDLimit)
	}
	parts := make([]string, len(held))
	for i, h := range held {
		parts[i] = fmt.Sprintf("node %d %d of %d", i+1, h.FDs, h.FDLimit)
	}
	return "file descriptors open on the nodes: " + strings.Join(parts, ", ")
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
