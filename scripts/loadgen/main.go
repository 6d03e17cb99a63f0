// SPDX-License-Identifier: Apache-2.0

// Command loadgen loads tether-server with many idle simulated devices
// and measures what they cost it, on the machine it runs on.
//
// It starts one tether-server itself (from -bin) on loopback with a
// temporary data directory and a sender, or with -cluster several (below),
// and plays the devices in worker processes (this binary, started again in
// worker mode, each holding a share of the sessions), so that the server
// has its open-file limit to itself. Each simulated device speaks the device protocol (package wire)
// as tetherd does: it checks in (a hello without credentials, answered
// with a device ID and secret), registers one app with the sender for a
// token, and then holds its session idle with a long announced heartbeat,
// pinging once a heartbeat and acking every message it gets.
//
// Check-ins and registrations are a store commit each, so they happen
// once: the devices' credentials and tokens go to a state file beside the
// server's data and every phase reuses them. Their rates are reported
// apart from the rate of sessions opened with credentials (hello →
// welcome), which each phase measures.
//
// Each phase (-phases, default 10000,max) starts the server afresh on the
// same data, connects its devices, and reports the sessions held, the
// server's RSS before and with them held (VmRSS, anonymous and file-backed,
// and the peak VmHWM), the growth per session, what the garbage
// collector's trace says of the live heap and stacks, its threads and open
// files, and the connect rate. Then it sends one message to every device
// through the GCM HTTP API (multicast, -batch tokens a request, -payload
// bytes of data each), reports the accept rate and the delivery rate from
// the first send to the last ack, and accounts for every message: a device
// without its message, a duplicate or a lost session is a failure, listed
// at the end, and the exit status is 1. Last, every device pings once
// more (the server answers a ping only after the frames before it, so then
// it has stored every ack), and the tool ends the server with SIGQUIT,
// whose goroutine dump gives the goroutine count (the server has no
// endpoint for it). A phase of "max" connects as many devices as the
// server's open-file limit leaves room for, and a few more, and reports
// the real maximum and what stopped it; it then closes a few sessions so
// that the sender's connections can get in. The report ends with what
// 100,000 and 1,000,000 sessions would take, projected from the largest
// phase, and what that projection assumes.
//
//	make build && go build -o bin/loadgen ./scripts/loadgen
//	bin/loadgen -bin bin                             # 10,000 sessions, then the most the server can hold
//	bin/loadgen -bin bin -phases 2000 -json          # a quick look, as JSON
//	bin/loadgen -bin bin -data /tmp/lg -phases max   # keep the devices for the next run
//	bin/loadgen -bin bin -tls                        # the same over wss://
//
// Everything is on loopback and bounded: -conns caps the sessions of any
// phase and -timeout the whole run. Everything it starts is stopped, and
// its temporary directory removed, when it ends, on Ctrl-C too.
//
// With -tls the server serves wss:// and https:// with a certificate of a
// certificate authority made for the run (internal/testpki), which the
// workers and the sender trust; every device makes a full TLS handshake,
// as one whose session ticket has expired does. Without it the server
// listens on ws://, without TLS's cost per connection.
//
// With -memprobe, and a tether-server built with -tags memprobe, each
// phase's server collects garbage and reports what its Go runtime holds
// (cmd/tether-server/memprobe.go) three times: fresh, with the sessions
// held (after its RSS is read) and after delivery. The report splits the
// growth per session into live heap, goroutine stacks, free heap and the
// runtime's own, and each probe leaves a heap profile beside the logs
// (-keep keeps them):
//
//	go build -tags memprobe -o /tmp/probe/ ./cmd/tether-server
//	bin/loadgen -bin /tmp/probe -memprobe -tls -keep -phases 10000
//	go tool pprof -sample_index=inuse_space /tmp/probe/tether-server DIR/phase-10000-heap.2
//
// With -cluster N it runs the same on a cluster (docs/scaling.md): three
// nats-server processes (from -bin, where make nats-server puts it;
// started as internal/natstest starts them, routes through its proxies)
// and N tether-server nodes on them, each with a data directory of its
// own. Each phase restarts the nats-servers (on their stores) and then the
// nodes, so that the memory of both is read fresh. The devices are spread over the nodes device by device, and each
// step of a device goes to another node: it checks in through one,
// registers through the next and holds its session on a third, each
// finding what another wrote. The sends go to the nodes in turn, so that
// most messages reach their device through a node other than the one that
// took them. A max phase connects as many sessions as the nodes' open
// files leave room for together, bounded by -conns: more than one process
// may hold. The report gives each node's sessions, memory, sends and
// deliveries beside their sums; each nats-server's RSS and subscriptions,
// which any client may ask of every server ($SYS.REQ.ACCOUNT.PING.STATZ);
// and what JetStream stores per device, from the streams' state and the
// size of the stores on disk. Its projection says how many nodes, and
// what each node, each nats-server and JetStream need, for 100,000 and
// 1,000,000 devices:
//
//	make build nats-server
//	bin/loadgen -bin bin -cluster 3 -conns 30000 -tls   # make load-cluster, over wss://
//
// It is not a soak test: sessions are held for seconds, so the devices'
// heartbeat (28 minutes by default, the agent's longest) seldom fires.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"tether/internal/procfs"
	"tether/internal/testpki"
)

// config is the command line.
type config struct {
	bin              string
	phases           []phaseSpec
	conns            int
	workers          int
	timeout          time.Duration
	heartbeat        time.Duration
	concurrency      int
	handshakeTimeout time.Duration
	settle           time.Duration
	deliverWait      time.Duration
	senders          int
	batch            int
	payload          int
	overshoot        int
	serverFDs        int
	data             string
	logLevel         string
	keep             bool
	json             bool
	jsonFile         string
	goroutines       bool
	tls              bool
	memprobe         bool
	cluster          int
	freshNATS        bool
}

// phaseSpec is one phase: a number of sessions, or the most the server
// can hold.
type phaseSpec struct {
	n   int
	max bool
}

func (p phaseSpec) String() string {
	if p.max {
		return "max"
	}
	return strconv.Itoa(p.n)
}

func parsePhases(s string) ([]phaseSpec, error) {
	var out []phaseSpec
	for part := range strings.SplitSeq(s, ",") {
		part = strings.TrimSpace(part)
		if part == "max" {
			out = append(out, phaseSpec{max: true})
			continue
		}
		n, err := strconv.Atoi(part)
		if err != nil || n < 1 {
			return nil, fmt.Errorf("phase %q: want a number of sessions or max", part)
		}
		out = append(out, phaseSpec{n: n})
	}
	if len(out) > maxPhases {
		return nil, fmt.Errorf("%d phases, at most %d", len(out), maxPhases)
	}
	return out, nil
}

const (
	// maxPhases and maxWorkers keep every pass's loopback addresses
	// (127.0.PASS.WORKER) valid.
	maxPhases  = 20
	maxWorkers = 250
	// maxNodes bounds -cluster: more nodes than this machine has cores
	// many times over would measure the scheduler.
	maxNodes = 9
)

func main() {
	if isWorker() {
		os.Exit(workerMain(os.Stdin, os.Stdout, os.Stderr))
	}
	c, err := parseFlags(os.Args[1:], os.Stderr)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	rep, err := run(ctx, c, os.Stderr)
	interrupted := ctx.Err() != nil
	stop()
	if rep != nil {
		if werr := writeReport(rep, c); werr != nil && err == nil {
			err = werr
		}
	}
	switch {
	case interrupted:
		fmt.Fprintln(os.Stderr, "loadgen: interrupted; everything it started is stopped")
		os.Exit(1)
	case errors.Is(err, context.DeadlineExceeded):
		fmt.Fprintf(os.Stderr, "loadgen: the run took longer than -timeout %v\n", c.timeout)
		os.Exit(1)
	case err != nil:
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	case len(rep.Problems) > 0:
		fmt.Fprintf(os.Stderr, "loadgen: FAILED: %s, listed at the end of the report\n", plural(len(rep.Problems), "problem"))
		os.Exit(1)
	}
}

func writeReport(rep *report, c config) error {
	if c.jsonFile != "" {
		f, err := os.Create(c.jsonFile)
		if err != nil {
			return err
		}
		if err := rep.write(f, true); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	}
	return rep.write(os.Stdout, c.json)
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("loadgen", flag.ContinueOnError)
	fs.SetOutput(stderr)
	phases := fs.String("phases", "10000,max", "comma-separated `phases`: a number of sessions, or max for the most the server can hold")
	fs.StringVar(&c.bin, "bin", "bin", "`directory` holding tether-server")
	fs.IntVar(&c.conns, "conns", 25000, "the most sessions any phase opens")
	fs.IntVar(&c.workers, "workers", 4, "worker processes that play the devices, sharing them")
	fs.DurationVar(&c.timeout, "timeout", 30*time.Minute, "bound on the whole run")
	fs.DurationVar(&c.heartbeat, "heartbeat", 28*time.Minute, "heartbeat the devices announce, and ping at (whole seconds, up to the server's cap of 30m)")
	fs.IntVar(&c.concurrency, "dial-concurrency", 32, "handshakes in flight per worker")
	fs.DurationVar(&c.handshakeTimeout, "handshake-timeout", 10*time.Second, "bound on one device's dial, hello and welcome")
	fs.DurationVar(&c.settle, "settle", 5*time.Second, "wait after the last session connects before reading the server's memory")
	fs.DurationVar(&c.deliverWait, "deliver-wait", 2*time.Minute, "how long to wait for every message after the sends")
	fs.IntVar(&c.senders, "senders", 2, "send requests in flight")
	fs.IntVar(&c.batch, "batch", 1000, "registration_ids per send request (GCM allows 1000)")
	fs.IntVar(&c.payload, "payload", 200, "`bytes` of data per message, keys and values")
	fs.IntVar(&c.overshoot, "overshoot", 16, "sessions a max phase tries beyond the server's free file descriptors")
	fs.IntVar(&c.serverFDs, "server-fds", 0, "cap the server's open files at `N` (0: leave its limit), to find the maximum at a small scale")
	fs.StringVar(&c.data, "data", "", "keep the server's data and the devices' state in `directory` and reuse them next time (default: a temporary directory)")
	fs.StringVar(&c.logLevel, "log-level", "info", "the server's log `level`")
	fs.BoolVar(&c.keep, "keep", false, "keep the temporary directory (logs, store, state) and print where it is")
	fs.BoolVar(&c.json, "json", false, "print the report as JSON")
	fs.StringVar(&c.jsonFile, "json-file", "", "also write the report as JSON to `file`")
	fs.BoolVar(&c.goroutines, "goroutines", true, "end each phase's server with SIGQUIT and count the goroutines in its dump")
	fs.BoolVar(&c.tls, "tls", false, "serve and connect over TLS (wss:// and https://), with a test certificate authority the devices and the sender trust")
	fs.BoolVar(&c.memprobe, "memprobe", false, "have each phase's server, built with -tags memprobe, collect garbage and report its live heap and stacks: fresh, with the sessions held and after delivery")
	fs.IntVar(&c.cluster, "cluster", 0, "run `N` tether-server nodes on three nats-server processes (-bin holds nats-server too), the devices spread over them; 0: one server with its own store")
	fs.BoolVar(&c.freshNATS, "fresh-nats", true, "with -cluster, restart the nats-servers before each phase, as the nodes are, so that their memory is read fresh; false saves the leader elections' seconds, and their memory then carries what the writes before left")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	bad := func(format string, args ...any) (config, error) {
		fmt.Fprintf(stderr, "loadgen: "+format+"\n", args...)
		return c, errors.New("usage")
	}
	if fs.NArg() > 0 {
		return bad("unexpected argument %q", fs.Arg(0))
	}
	var err error
	if c.phases, err = parsePhases(*phases); err != nil {
		return bad("-phases: %v", err)
	}
	for _, p := range c.phases {
		if p.n > c.conns {
			return bad("phase %d is over -conns %d", p.n, c.conns)
		}
	}
	switch {
	case c.conns < 1:
		return bad("-conns must be at least 1")
	case c.workers < 1 || c.workers > maxWorkers:
		return bad("-workers must be 1 to %d", maxWorkers)
	case c.timeout <= 0 || c.handshakeTimeout <= 0 || c.deliverWait <= 0 || c.settle < 0:
		return bad("-timeout, -handshake-timeout and -deliver-wait must be positive, -settle not negative")
	case c.heartbeat < time.Second || c.heartbeat > maxHeartbeat || c.heartbeat%time.Second != 0:
		return bad("-heartbeat must be whole seconds from 1s to %v, the cap of the servers it runs", maxHeartbeat)
	case c.concurrency < 1 || c.senders < 1 || c.overshoot < 0 || c.serverFDs < 0:
		return bad("-dial-concurrency and -senders must be at least 1, -overshoot and -server-fds not negative")
	case c.batch < 1 || c.batch > 1000:
		return bad("-batch must be 1 to 1000")
	case c.cluster < 0 || c.cluster > maxNodes:
		return bad("-cluster must be 0 to %d", maxNodes)
	}
	if _, err := payloadData(strings.Repeat("x", 40), c.payload); err != nil {
		return bad("-payload: %v", err)
	}
	return c, nil
}

// run measures each phase in turn and returns the report, as far as it
// got when it fails. Whatever happens, it stops what it started and
// removes its temporary files before it returns.
func run(ctx context.Context, c config, progress io.Writer) (*report, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	serverBin, err := filepath.Abs(filepath.Join(c.bin, "tether-server"))
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(serverBin); err != nil {
		return nil, fmt.Errorf("%w (make build first, or give -bin)", err)
	}
	if c.memprobe {
		ok, err := builtWithTag(serverBin, "memprobe")
		if err != nil {
			return nil, err
		}
		if !ok {
			return nil, fmt.Errorf("-memprobe: %s was not built with -tags memprobe", serverBin)
		}
	}
	exe, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find this binary, to start the workers: %w", err)
	}
	work, err := os.MkdirTemp("", "tether-loadgen.")
	if err != nil {
		return nil, err
	}
	if c.keep {
		defer fmt.Fprintf(progress, "loadgen: kept %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	stateDir := work
	if c.data != "" {
		stateDir = c.data
	}
	if c.cluster > 0 {
		// A cluster's devices are in its JetStream store, not in the
		// single server's: they have a state file of their own.
		stateDir = filepath.Join(stateDir, "cluster")
	}
	if err := os.MkdirAll(stateDir, 0o700); err != nil {
		return nil, err
	}
	r := &runner{cfg: c, exe: exe, serverBin: serverBin, work: work, data: filepath.Join(stateDir, "server"), progress: progress}
	if r.fleet, err = loadFleet(filepath.Join(stateDir, "state.json")); err != nil {
		return nil, err
	}
	if c.cluster > 0 {
		natsBin := filepath.Join(filepath.Dir(serverBin), "nats-server")
		if _, err := os.Stat(natsBin); err != nil {
			return nil, fmt.Errorf("%w (make nats-server first)", err)
		}
		r.say("starting %d nats-servers", natsServers)
		if r.nats, err = startNATS(natsBin, filepath.Join(stateDir, "nats"), r.fleet.registered()); err != nil {
			return nil, err
		}
		defer r.nats.stop()
	}
	if c.tls {
		// Made afresh for every run: it lasts a day, and it keeps no secret
		// the next run needs.
		pki, err := testpki.Write(work)
		if err != nil {
			return nil, fmt.Errorf("make the server's test certificate: %w", err)
		}
		r.pki = &pki
	}
	if r.fleet.Sender.ID == "" {
		if r.fleet.Sender, err = addSender(ctx, serverBin, r.store()); err != nil {
			return nil, err
		}
		if err := r.fleet.save(); err != nil {
			return nil, err
		}
	}
	rep := &report{Scheme: "ws", Command: commandLine(), Machine: readMachine(), Server: serverVersion(ctx, serverBin)}
	if c.tls {
		rep.Scheme = "wss"
	}
	if c.cluster > 0 {
		rep.Nodes, rep.NATSServers = c.cluster, natsServers
	}

	// A first server, or set of nodes, says how many sessions their open
	// files allow, and checks in and registers the devices the phases
	// need.
	ns, err := r.startNodes(ctx, "provision")
	if err != nil {
		return rep, err
	}
	fresh, err := ns.stats()
	if err != nil {
		ns.stop()
		return rep, err
	}
	rep.Machine.ServerFDLimit = fresh[0].FDLimit
	rep.Machine.ServerFDs = fresh[0].FDs
	room := c.overshoot
	for _, st := range fresh {
		room += st.FDLimit - st.FDs
	}
	sizes := make([]int, len(c.phases))
	for i, p := range c.phases {
		sizes[i] = p.n
		if p.max {
			sizes[i] = min(c.conns, room)
		}
	}
	rep.Provision, err = r.provision(ctx, ns, maxOf(sizes))
	ns.stop()
	if err != nil {
		return rep, err
	}
	if p := rep.Provision; p != nil {
		for _, st := range []struct {
			what string
			st   passStats
		}{{"check-in", p.CheckIn}, {"registration", p.Register}} {
			if st.st.Failed > 0 {
				rep.Problems = append(rep.Problems, fmt.Sprintf("%d %ss failed: %s", st.st.Failed, st.what, st.st.failureText()))
			}
		}
	}

	for i, p := range c.phases {
		pr, err := r.phase(ctx, p, sizes[i])
		rep.Phases = append(rep.Phases, pr)
		rep.Problems = append(rep.Problems, pr.problems(!p.max)...)
		if err != nil {
			return rep, fmt.Errorf("phase %s: %w", p, err)
		}
	}
	rep.Projection = project(rep.Phases, rep.Machine)
	return rep, nil
}

func maxOf(xs []int) int {
	m := 0
	for _, x := range xs {
		m = max(m, x)
	}
	return m
}

func commandLine() string {
	return strings.Join(append([]string{filepath.Base(os.Args[0])}, os.Args[1:]...), " ")
}

// readMachine describes the machine: what bounds the figures.
func readMachine() machine {
	m := machine{CPUs: runtime.NumCPU(), Go: runtime.Version()}
	if mi, err := procfs.Meminfo(); err == nil {
		m.MemTotalMiB = mi["MemTotal"] / 1024
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	return m
}

func serverVersion(ctx context.Context, bin string) string {
	out, err := exec.CommandContext(ctx, bin, "version").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}
