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
	Scheme     string           `json:"scheme"`
	Command    string           `json:"command"`
	Machine    machine          `json:"machine"`
	Server     string           `json:"server"`
	Provision  *provisionReport `json:"provision,omitempty"`
	Phases     []phaseReport    `json:"phases"`
	Projection *projection      `json:"projection,omitempty"`
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
	// a fresh server has open.
	ServerFDLimit int `json:"server_fd_limit"`
	ServerFDs     int `json:"server_fds"`
}

// projection is what more sessions would take, scaled from the phase that
// held the most.
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
	KernelPerConnKiB float64         `json:"kernel_per_conn_kib"`
	Rows             []projectionRow `json:"rows"`
	Assumes          []string        `json:"assumes"`
}

type projectionRow struct {
	Sessions   int     `json:"sessions"`
	RSSMiB     float64 `json:"rss_mib"`
	KernelMiB  float64 `json:"kernel_mib"`
	FDs        int     `json:"fds"`
	Goroutines int     `json:"goroutines,omitempty"`
}

func project(phases []phaseReport) *projection {
	var basis *phaseReport
	for i := range phases {
		if p := &phases[i]; p.Held > 0 && (basis == nil || p.Held > basis.Held) {
			basis = p
		}
	}
	if basis == nil {
		return nil
	}
	pj := &projection{
		Basis:      fmt.Sprintf("phase %s: %d sessions held", basis.Name, basis.Held),
		BaseRSSKiB: basis.Before.RSSKiB, PerConnKiB: basis.PerConnKiB, BaseFDs: basis.Before.FDs,
		KernelPerConnKiB: math.Max(float64(basis.SlabGrowthKiB), 0) / 2 / float64(basis.Held),
	}
	if g := basis.Goroutines; g != nil {
		pj.GoroutinesPerConn, pj.BaseGoroutines = g.PerSession, g.Own
	}
	for _, n := range []int{100_000, 1_000_000} {
		pj.Rows = append(pj.Rows, projectionRow{
			Sessions:   n,
			RSSMiB:     (float64(pj.BaseRSSKiB) + float64(n)*pj.PerConnKiB) / 1024,
			KernelMiB:  float64(n) * pj.KernelPerConnKiB / 1024,
			FDs:        pj.BaseFDs + n,
			Goroutines: pj.BaseGoroutines + n*pj.GoroutinesPerConn,
		})
	}
	pj.Assumes = []string{
		"idle sessions cost the same each, however many: the server's RSS grows linearly at the figure measured here",
		"the figure is RSS a few seconds after the sessions connected, garbage of their handshakes not yet collected included; a burst of messages leaves the server bigger (the RSS after delivery)",
		transportAssumed(basis.TLS),
		"the server's RSS only: the kernel's memory for each socket is apart (the kernel column, from this machine's slab growth; other work moves it)",
		"one file descriptor per session beside the server's own: the open-file limit, and for 1,000,000 fs.nr_open, must be above the total",
		"one server process, and a store that holds every device: it grows with the devices registered, not connected, and is memory-mapped",
		"the rates are not projected: they were measured with the simulated devices on the same CPUs as the server",
	}
	return pj
}

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
	p.f("tether-server under load over %s://: %s, %d CPUs, %s memory, Linux %s, %s", r.Scheme, r.Server, m.CPUs, mib(m.MemTotalMiB*1024), m.Kernel, m.Go)
	p.f("server open-file limit %d, %d open when it starts", m.ServerFDLimit, m.ServerFDs)
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
		p.f("")
		p.f("projection, from %s", pj.Basis)
		p.f("  %-10s %12s %14s %12s %12s", "sessions", "server RSS", "kernel (est.)", "open files", "goroutines")
		for _, row := range pj.Rows {
			p.f("  %-10d %12s %14s %12d %12d", row.Sessions, mib(uint64(row.RSSMiB*1024)), mib(uint64(row.KernelMiB*1024)), row.FDs, row.Goroutines)
		}
		goroutines := "goroutines not counted"
		if pj.GoroutinesPerConn > 0 {
			goroutines = fmt.Sprintf("%d goroutines + %d per session", pj.BaseGoroutines, pj.GoroutinesPerConn)
		}
		p.f("  = %s + %.1f KiB per session; %s; kernel %.1f KiB per socket", mib(pj.BaseRSSKiB), pj.PerConnKiB, goroutines, pj.KernelPerConnKiB)
		p.f("  assumes:")
		for _, a := range pj.Assumes {
			p.f("    - %s", a)
		}
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
	p.f("phase %s: %d of %d sessions held, from %d worker processes", ph.Name, ph.Held, ph.Devices, ph.Workers)
	p.pass("connect", "hello with credentials → welcome", ph.Connect)
	if ph.TLS != "" {
		p.f("  TLS           %s, a full handshake each", ph.TLS)
	}
	if ph.StoppedBy != "" {
		p.f("  stopped by %s", ph.StoppedBy)
	}
	b, h, a := ph.Before, ph.AtHold, ph.After
	p.f("  server RSS    %s fresh → %s held (anon %s → %s, file %s → %s); %s after delivery, peak %s",
		mib(b.RSSKiB), mib(h.RSSKiB), mib(b.AnonKiB), mib(h.AnonKiB), mib(b.FileKiB), mib(h.FileKiB), mib(a.RSSKiB), mib(a.HWMKiB))
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
	p.f("  server        %d threads, %d of %d files open, %.1f s CPU to connect; kernel slab %+.1f MiB (both ends)",
		h.Threads, h.FDs, h.FDLimit, ph.ConnectCPUSeconds, float64(ph.SlabGrowthKiB)/1024)
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
	p.f("  store         %s on disk", mib(uint64(ph.StoreBytes)/1024))
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
