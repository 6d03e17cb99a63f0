// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"fmt"
	"io"
	"math"
	"strings"
)

// report is what a run measured.
type report struct {
	// Scheme is the devices' URL scheme: ws, or wss with -tls.
	Scheme string `json:"scheme"`
	// Nodes and NATSServers, with -cluster, are the tether-server nodes
	// and the nats-servers that hold their state.
	Nodes       int              `json:"nodes,omitempty"`
	NATSServers int              `json:"nats_servers,omitempty"`
	Command     string           `json:"command"`
	Machine     machine          `json:"machine"`
	Server      string           `json:"server"`
	Provision   *provisionReport `json:"provision,omitempty"`
	Phases      []phaseReport    `json:"phases"`
	Projection  *projection      `json:"projection,omitempty"`
	// Problems is every failure: devices without their message, lost
	// sessions, refused sends, failed check-ins.
	Problems []string `json:"problems,omitempty"`
}

type machine struct {
	CPUs        int    `json:"cpus"`
	MemTotalMiB uint64 `json:"mem_total_mib"`
	Kernel      string `json:"kernel"`
	Go          string `json:"go"`
	// ServerFDLimit is the server's open-file limit, ServerFDs the files
	// a fresh server has open; on a cluster, the first node's.
	ServerFDLimit int `json:"server_fd_limit"`
	ServerFDs     int `json:"server_fds"`
}

// projection is what more sessions would take, scaled from the phase that
// held the most. On a cluster the server's figures are a node's, the
// nodes' mean, and the NATS servers' and JetStream's are beside them.
type projection struct {
	Basis      string  `json:"basis"`
	BaseRSSKiB uint64  `json:"base_rss_kib"`
	PerConnKiB float64 `json:"rss_per_conn_kib"`
	BaseFDs    int     `json:"base_fds"`
	// GoroutinesPerConn and BaseGoroutines split the dump's goroutines
	// into those of the sessions and the server's own.
	GoroutinesPerConn int `json:"goroutines_per_conn,omitempty"`
	BaseGoroutines    int `json:"base_goroutines,omitempty"`
	// KernelPerConnKiB is the slab growth per session, half of it: both
	// ends of each connection are on this machine.
	KernelPerConnKiB float64 `json:"kernel_per_conn_kib"`
	// NodeSessions is the sessions a node may hold: its open-file limit
	// less the files a fresh node has open.
	NodeSessions int `json:"node_sessions,omitempty"`
	// NATS* are a NATS server's, the servers' mean: its RSS fresh, what
	// it grows per device registered (when known; the fresh RSS is then
	// the run's first, with the devices registered before it) and per
	// session, its subscriptions fresh and per session.
	NATSBaseRSSKiB   uint64  `json:"nats_base_rss_kib,omitempty"`
	NATSPerDeviceKiB float64 `json:"nats_rss_per_device_kib,omitempty"`
	NATSPerConnKiB   float64 `json:"nats_rss_per_conn_kib,omitempty"`
	NATSBaseSubs     int     `json:"nats_base_subs,omitempty"`
	NATSSubsPerConn  float64 `json:"nats_subs_per_conn,omitempty"`
	// StoreBytesPerDevice is what JetStream stores per device registered,
	// in one replica of Replicas.
	StoreBytesPerDevice float64         `json:"store_bytes_per_device,omitempty"`
	Replicas            int             `json:"replicas,omitempty"`
	Rows                []projectionRow `json:"rows"`
	Assumes             []string        `json:"assumes"`
}

type projectionRow struct {
	Sessions int `json:"sessions"`
	// Nodes is the nodes a cluster needs for the sessions; RSS, kernel,
	// files and goroutines are then each node's, with its share of them.
	Nodes      int     `json:"nodes,omitempty"`
	RSSMiB     float64 `json:"rss_mib"`
	KernelMiB  float64 `json:"kernel_mib"`
	FDs        int     `json:"fds"`
	Goroutines int     `json:"goroutines,omitempty"`
	// NATSSubs and NATSRSSMiB are each NATS server's; StoreMiB is
	// JetStream's for the devices, every replica.
	NATSSubs   int     `json:"nats_subs,omitempty"`
	NATSRSSMiB float64 `json:"nats_rss_mib,omitempty"`
	StoreMiB   float64 `json:"store_mib,omitempty"`
}

// project scales the phase that held the most sessions to 100,000 and
// 1,000,000; m says what a node's open files allow.
func project(phases []phaseReport, m machine) *projection {
	var basis *phaseReport
	for i := range phases {
		if p := &phases[i]; p.Held > 0 && (basis == nil || p.Held > basis.Held) {
			basis = p
		}
	}
	if basis == nil {
		return nil
	}
	nodes := max(len(basis.Nodes), 1)
	pj := &projection{
		Basis:      fmt.Sprintf("phase %s: %d sessions held", basis.Name, basis.Held),
		BaseRSSKiB: basis.Before.RSSKiB / uint64(nodes), PerConnKiB: basis.PerConnKiB, BaseFDs: basis.Before.FDs / nodes,
		KernelPerConnKiB: math.Max(float64(basis.SlabGrowthKiB), 0) / 2 / float64(basis.Held),
	}
	g := basis.Goroutines
	if len(basis.Nodes) > 0 {
		pj.Basis += fmt.Sprintf(" on %d nodes", nodes)
		g = basis.Nodes[0].Goroutines
		pj.NodeSessions = m.ServerFDLimit - m.ServerFDs
		for _, ns := range basis.NATS {
			base := ns.Before
			if ns.PerDeviceKiB > 0 {
				base = ns.Start
			}
			pj.NATSBaseRSSKiB += base.RSSKiB / uint64(len(basis.NATS))
			pj.NATSPerDeviceKiB += ns.PerDeviceKiB / float64(len(basis.NATS))
			pj.NATSPerConnKiB += ns.PerConnKiB / float64(len(basis.NATS))
			pj.NATSBaseSubs += ns.SubsBefore / len(basis.NATS)
			pj.NATSSubsPerConn += ns.SubsPerConn / float64(len(basis.NATS))
		}
		if js := basis.JetStream; js != nil {
			pj.StoreBytesPerDevice = js.BytesPerDevice
			for _, s := range js.Streams {
				pj.Replicas = max(pj.Replicas, s.Replicas)
			}
		}
	}
	if g != nil {
		pj.GoroutinesPerConn, pj.BaseGoroutines = g.PerSession, g.Own
	}
	for _, n := range []int{100_000, 1_000_000} {
		row := projectionRow{Sessions: n}
		each := n
		if pj.NodeSessions > 0 {
			row.Nodes = ceilDiv(n, pj.NodeSessions)
			each = ceilDiv(n, row.Nodes)
			row.NATSSubs = pj.NATSBaseSubs + int(math.Round(float64(n)*pj.NATSSubsPerConn))
			// Each device registered holds a session.
			row.NATSRSSMiB = (float64(pj.NATSBaseRSSKiB) + float64(n)*(pj.NATSPerDeviceKiB+pj.NATSPerConnKiB)) / 1024
			row.StoreMiB = float64(n) * pj.StoreBytesPerDevice * float64(pj.Replicas) / (1 << 20)
		}
		row.RSSMiB = (float64(pj.BaseRSSKiB) + float64(each)*pj.PerConnKiB) / 1024
		row.KernelMiB = float64(each) * pj.KernelPerConnKiB / 1024
		row.FDs = pj.BaseFDs + each
		row.Goroutines = pj.BaseGoroutines + each*pj.GoroutinesPerConn
		pj.Rows = append(pj.Rows, row)
	}
	pj.Assumes = []string{
		"idle sessions cost the same each, however many: the server's RSS grows linearly at the figure measured here",
		"the figure is RSS a few seconds after the sessions connected, garbage of their handshakes not yet collected included; a burst of messages leaves the server bigger (the RSS after delivery)",
		transportAssumed(basis.TLS),
		"the server's RSS only: the kernel's memory for each socket is apart (the kernel column, from this machine's slab growth; other work moves it)",
	}
	if pj.NodeSessions == 0 {
		pj.Assumes = append(pj.Assumes,
			"one file descriptor per session beside the server's own: the open-file limit, and for 1,000,000 fs.nr_open, must be above the total",
			"one server process, and a store that holds every device: it grows with the devices registered, not connected, and is memory-mapped",
		)
	} else {
		pj.Assumes = append(pj.Assumes,
			fmt.Sprintf("as many nodes as this machine's open-file limit asks for, %d sessions each, the devices spread evenly; a node with a higher limit holds more, up to its memory", pj.NodeSessions),
			"every NATS server holds every session's subscription, whichever node holds the session (the routes carry the interest), and every device's JetStream state (three replicas on three servers), and grows per session and per device as measured here; more nodes add only their own connections",
			"JetStream stores what these devices left in it: one app registered each, no message waiting, no topic subscription, no upstream message; each message waiting adds its body until it is acked or expires",
		)
	}
	pj.Assumes = append(pj.Assumes, "the rates are not projected: they were measured with the simulated devices on the same CPUs as the server")
	return pj
}

func ceilDiv(a, b int) int { return (a + b - 1) / b }

// transportAssumed says what the connections were: tls is what they
// negotiated, empty without TLS.
func transportAssumed(tls string) string {
	if tls == "" {
		return "ws:// on loopback: TLS adds its own state to every connection (crypto/tls buffers and keys)"
	}
	return "wss:// on loopback, with what these devices negotiated (" + tls + "): another cipher suite or key exchange keeps keys of other sizes"
}

func (r *report) write(w io.Writer, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	p := &printer{w: w}
	m := r.Machine
	what, whose := "tether-server", "server"
	if r.Nodes > 0 {
		what = fmt.Sprintf("%s on %d nats-servers", plural(r.Nodes, "tether-server node"), r.NATSServers)
		whose = "each node's"
	}
	p.f("%s under load over %s://: %s, %d CPUs, %s memory, Linux %s, %s", what, r.Scheme, r.Server, m.CPUs, mib(m.MemTotalMiB*1024), m.Kernel, m.Go)
	p.f("%s open-file limit %d, %d open when it starts", whose, m.ServerFDLimit, m.ServerFDs)
	p.f("command: %s", r.Command)
	if pr := r.Provision; pr != nil {
		p.f("")
		p.f("provisioning (once per data directory; phases reuse the devices)")
		p.pass("check-in", "hello without credentials → welcome with ID and secret; one store commit each", pr.CheckIn)
		p.pass("register", "register → registered with a token; one store commit each", pr.Register)
	}
	for _, ph := range r.Phases {
		p.phase(ph)
	}
	if pj := r.Projection; pj != nil {
		p.projection(pj)
	}
	p.f("")
	if len(r.Problems) == 0 {
		p.f("every message accounted for: no device missed its message, none was lost or duplicated")
	} else {
		p.f("FAILED: %s", plural(len(r.Problems), "problem"))
		for _, pr := range r.Problems {
			p.f("  ! %s", pr)
		}
	}
	return p.err
}

func (p *printer) projection(pj *projection) {
	p.f("")
	p.f("projection, from %s", pj.Basis)
	goroutines := "goroutines not counted"
	if pj.GoroutinesPerConn > 0 {
		goroutines = fmt.Sprintf("%d goroutines + %d per session", pj.BaseGoroutines, pj.GoroutinesPerConn)
	}
	if pj.NodeSessions == 0 {
		p.f("  %-10s %12s %14s %12s %12s", "sessions", "server RSS", "kernel (est.)", "open files", "goroutines")
		for _, row := range pj.Rows {
			p.f("  %-10d %12s %14s %12d %12d", row.Sessions, mib(uint64(row.RSSMiB*1024)), mib(uint64(row.KernelMiB*1024)), row.FDs, row.Goroutines)
		}
		p.f("  = %s + %.1f KiB per session; %s; kernel %.1f KiB per socket", mib(pj.BaseRSSKiB), pj.PerConnKiB, goroutines, pj.KernelPerConnKiB)
	} else {
		p.f("  %-10s %6s | %12s %14s %12s %12s | %14s %12s | %14s", "sessions", "nodes", "node RSS", "kernel (est.)", "open files", "goroutines",
			"subscriptions", "RSS", "JetStream")
		for _, row := range pj.Rows {
			p.f("  %-10d %6d | %12s %14s %12d %12d | %14d %12s | %14s", row.Sessions, row.Nodes,
				mib(uint64(row.RSSMiB*1024)), mib(uint64(row.KernelMiB*1024)), row.FDs, row.Goroutines,
				row.NATSSubs, fmt.Sprintf("%.1f MiB", row.NATSRSSMiB), mib(uint64(row.StoreMiB*1024)))
		}
		p.f("  each node (at most %d sessions) = %s + %.1f KiB per session; %s; kernel %.1f KiB per socket",
			pj.NodeSessions, mib(pj.BaseRSSKiB), pj.PerConnKiB, goroutines, pj.KernelPerConnKiB)
		p.f("  each nats-server = %s + %.2f KiB per device registered + %.2f KiB per session; %d subscriptions + %.2f per session",
			mib(pj.NATSBaseRSSKiB), pj.NATSPerDeviceKiB, pj.NATSPerConnKiB, pj.NATSBaseSubs, pj.NATSSubsPerConn)
		p.f("  JetStream = %.0f bytes per device registered, in each of %d replicas", pj.StoreBytesPerDevice, pj.Replicas)
	}
	p.f("  assumes:")
	for _, a := range pj.Assumes {
		p.f("    - %s", a)
	}
}

type printer struct {
	w   io.Writer
	err error
}

func (p *printer) f(format string, args ...any) {
	if p.err == nil {
		_, p.err = fmt.Fprintf(p.w, format+"\n", args...)
	}
}

func (p *printer) pass(name, what string, st passStats) {
	p.f("  %-9s %d of %d in %.1f s: %.0f/s (%s)", name, st.Done, st.Devices, st.Seconds, st.PerSecond, what)
	if st.Failed > 0 {
		p.f("  %-9s %d failed: %s", "", st.Failed, st.failureText())
	}
}

func (p *printer) phase(ph phaseReport) {
	p.f("")
	// The figures of the server, or of every node together.
	server, onNodes := "server", ""
	if len(ph.Nodes) > 0 {
		server, onNodes = "all nodes", fmt.Sprintf(", on %d nodes", len(ph.Nodes))
	}
	p.f("phase %s: %d of %d sessions held, from %d worker processes%s", ph.Name, ph.Held, ph.Devices, ph.Workers, onNodes)
	p.pass("connect", "hello with credentials → welcome", ph.Connect)
	if ph.TLS != "" {
		p.f("  TLS           %s, a full handshake each", ph.TLS)
	}
	if ph.StoppedBy != "" {
		p.f("  stopped by %s", ph.StoppedBy)
	}
	b, h, a := ph.Before, ph.AtHold, ph.After
	p.f("  %-13s %s fresh → %s held (anon %s → %s, file %s → %s); %s after delivery, peak %s",
		server+" RSS", mib(b.RSSKiB), mib(h.RSSKiB), mib(b.AnonKiB), mib(h.AnonKiB), mib(b.FileKiB), mib(h.FileKiB), mib(a.RSSKiB), mib(a.HWMKiB))
	p.f("  per session   %.1f KiB of RSS (%.1f KiB anonymous)", ph.PerConnKiB, ph.PerConnAnonKiB)
	if ph.ProbeFresh != nil && ph.ProbeHeld != nil && ph.Held > 0 {
		p.f("  memprobe      per session, after a forced GC: %s", ph.ProbeHeld.perSession(*ph.ProbeFresh, ph.Held))
	}
	switch g := ph.GC; {
	case g == nil || ph.Held == 0:
	case g.Early:
		p.f("  Go runtime    no GC since the last session connected (the last, %.0f s before, found a live heap of %d MiB)", g.SecondsBefore, g.LiveMB)
	default:
		p.f("  Go runtime    last GC %.0f s before: live heap %d MiB (%.1f KiB per session), stacks in use %d MiB (%.1f KiB), next GC at %d MiB; %d GCs",
			g.SecondsBefore, g.LiveMB, float64(g.LiveMB)*1024/float64(ph.Held), g.StacksMB, float64(g.StacksMB)*1024/float64(ph.Held), g.GoalMB, g.Collections)
	}
	p.f("  %-13s %d threads, %d of %d files open, %.1f s CPU to connect; kernel slab %+.1f MiB (both ends)",
		server, h.Threads, h.FDs, h.FDLimit, ph.ConnectCPUSeconds, float64(ph.SlabGrowthKiB)/1024)
	if g := ph.Goroutines; g != nil {
		var top []string
		for _, grp := range g.Groups[:min(len(g.Groups), 4)] {
			top = append(top, fmt.Sprintf("%s %d", grp.Name, grp.Count))
		}
		p.f("  goroutines    %d: %d per session and %d of the server's own; %s", g.Total, g.PerSession, g.Own, strings.Join(top, ", "))
	}
	p.f("  workers       %s RSS in all with the sessions held", mib(ph.WorkersRSSKiB))
	if ph.Held == 0 {
		return
	}
	if ph.Dropped > 0 {
		p.f("  closed        %d sessions to leave the sender file descriptors; %d devices messaged", ph.Dropped, ph.Send.Messages)
	}
	s := ph.Send
	p.f("  send          %d messages in %d requests: %d accepted in %.2f s, %.0f/s (%.1f s server CPU to send and deliver)",
		s.Messages, s.Requests, s.Accepted, s.Seconds, s.PerSecond, ph.SendCPU)
	d := ph.Delivery
	p.f("  delivery      %d of %d acked, %.2f s from the first send to the last ack: %.0f/s; latency p50 %.2f s, p99 %.2f s, max %.2f s",
		d.Delivered, d.Expected, d.Seconds, d.PerSecond, d.LatencyP50, d.LatencyP99, d.LatencyMax)
	if g := ph.GCAfter; g != nil && !g.Early && (ph.GC == nil || g.Collections > ph.GC.Collections) {
		p.f("  Go runtime    after delivery: last GC %.0f s before, live heap %d MiB (%.1f KiB per session), stacks in use %d MiB, next GC at %d MiB",
			g.SecondsBefore, g.LiveMB, float64(g.LiveMB)*1024/float64(ph.Held), g.StacksMB, g.GoalMB)
	}
	if ph.ProbeFresh != nil && ph.ProbeAfter != nil {
		p.f("  memprobe      after delivery, per session, after a forced GC: %s", ph.ProbeAfter.perSession(*ph.ProbeFresh, ph.Held))
	}
	for _, n := range ph.Nodes {
		p.node(n)
	}
	for _, n := range ph.NATS {
		perDevice := ""
		if n.PerDeviceKiB > 0 {
			perDevice = fmt.Sprintf(", %.2f KiB per device registered over its %s at the run's start", n.PerDeviceKiB, mib(n.Start.RSSKiB))
		}
		p.f("  nats-server %s RSS %s fresh%s → %s held (%.2f KiB per session); %s after delivery; subscriptions %d → %d (%.2f per session)",
			n.Name, mib(n.Before.RSSKiB), perDevice, mib(n.AtHold.RSSKiB), n.PerConnKiB, mib(n.After.RSSKiB), n.SubsBefore, n.SubsHeld, n.SubsPerConn)
	}
	if js := ph.JetStream; js != nil {
		p.f("  JetStream     %d streams, one replica: %d messages, %s, %d subjects; per device registered (%d): %.2f subjects, %.0f bytes; stores %s on disk (every replica, indexes, Raft logs)",
			len(js.Streams), js.Messages, mib(js.Bytes/1024), js.Subjects, js.Devices, js.SubjectsPerDevice, js.BytesPerDevice, mib(uint64(js.DiskBytes)/1024))
		return
	}
	p.f("  store         %s on disk", mib(uint64(ph.StoreBytes)/1024))
}

// node prints one node's part of a phase on a cluster.
func (p *printer) node(n nodeReport) {
	name := fmt.Sprintf("node %d", n.Node)
	b, h, a := n.Before, n.AtHold, n.After
	p.f("  %-13s %d of %d sessions held; RSS %s fresh → %s held, %.1f KiB per session (%.1f KiB anonymous); %s after delivery; %d of %d files open, %d threads, %.1f s CPU to connect, %.1f s to send and deliver",
		name, n.Held, n.Devices, mib(b.RSSKiB), mib(h.RSSKiB), n.PerConnKiB, n.PerConnAnonKiB, mib(a.RSSKiB), h.FDs, h.FDLimit, h.Threads, n.ConnectCPUSeconds, n.SendCPU)
	if n.ProbeFresh != nil && n.ProbeHeld != nil && n.Held > 0 {
		p.f("  %-13s memprobe per session, after a forced GC: %s", "", n.ProbeHeld.perSession(*n.ProbeFresh, n.Held))
	}
	if g := n.GC; g != nil && !g.Early && n.Held > 0 {
		p.f("  %-13s last GC %.0f s before: live heap %d MiB (%.1f KiB per session), stacks in use %d MiB", "", g.SecondsBefore, g.LiveMB, float64(g.LiveMB)*1024/float64(n.Held), g.StacksMB)
	}
	if g := n.Goroutines; g != nil {
		p.f("  %-13s goroutines %d: %d per session and %d of its own", "", g.Total, g.PerSession, g.Own)
	}
	s, d := n.Send, n.Delivery
	p.f("  %-13s sends through it: %d messages in %d requests, %d accepted, %.0f/s; its devices: %d of %d acked, %.0f/s, latency p50 %.2f s, p99 %.2f s",
		"", s.Messages, s.Requests, s.Accepted, s.PerSecond, d.Delivered, d.Expected, d.PerSecond, d.LatencyP50, d.LatencyP99)
	if s.Failed > 0 || d.Missing+d.Duplicates+d.Unexpected+d.Lost > 0 {
		p.f("  %-13s %d sends refused %v; %d devices missed their message, %d duplicates, %d unexpected, %d sessions lost", "", s.Failed, s.Errors, d.Missing, d.Duplicates, d.Unexpected, d.Lost)
	}
}

// perSession says what p holds beyond fresh, per session.
func (p memProbe) perSession(fresh memProbe, sessions int) string {
	kib := func(now, then uint64) float64 { return (float64(now) - float64(then)) / 1024 / float64(sessions) }
	return fmt.Sprintf("live heap %.1f KiB, stacks %.1f KiB, free heap %.1f KiB, runtime %.1f KiB; %d goroutines",
		kib(p.Live, fresh.Live), kib(p.Stacks, fresh.Stacks), kib(p.Free, fresh.Free), kib(p.Other, fresh.Other), p.Goroutines)
}

func mib(kib uint64) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return fmt.Sprintf("%d %ss", n, noun)
}
