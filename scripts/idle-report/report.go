// SPDX-License-Identifier: Apache-2.0

package main

import (
	"cmp"
	"debug/buildinfo"
	"fmt"
	"io"
	"os"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"tether/internal/procfs"
)

// ipTCPHeader is the bytes an IPv4 and TCP header add to each segment,
// with the timestamps option Linux uses by default (20 + 20 + 12).
const ipTCPHeader = 52

// reportInput is what a run gathered.
type reportInput struct {
	cfg     config
	tetherd string
	samples []procfs.Sample
	// states is where each thread waited at the end (threadStates).
	states map[int]string
	// wire is what passed through the proxy between the first and the
	// last sample.
	wire   wireCounts
	events []event
	// before and after are the agent's status just before and just after
	// the measured period, and statusWire what the proxy saw between the
	// two, to check the agent's heartbeat counter against the wire.
	before, after agentStatus
	statusWire    wireCounts
}

// report is the outcome, as printed and as -json writes it.
type report struct {
	Machine   machine `json:"machine"`
	Transport string  `json:"transport"`
	// HeartbeatSetting is the --heartbeat given to tetherd, or "learned".
	HeartbeatSetting string  `json:"heartbeat_setting"`
	HeartbeatSeconds int     `json:"heartbeat_seconds"` // in use at the end, as the agent reports it
	PowerMode        string  `json:"power_mode"`
	Seconds          float64 `json:"seconds"`

	Wakeups             uint64  `json:"wakeups"`
	Voluntary           uint64  `json:"voluntary"`
	Involuntary         uint64  `json:"involuntary"`
	WakeupsPerMinute    float64 `json:"wakeups_per_minute"`
	WakeupsPerHeartbeat float64 `json:"wakeups_per_heartbeat,omitempty"`

	// Heartbeats are the agent's pings in the period: read on the wire on
	// ws://, from the agent's counter on wss://.
	Heartbeats        uint64  `json:"heartbeats"`
	HeartbeatsPerHour float64 `json:"heartbeats_per_hour"`
	// AgentHeartbeats and WireHeartbeats are the agent's counter and the
	// pings seen on the wire between the two status calls around the
	// period: they must agree.
	AgentHeartbeats uint64 `json:"agent_heartbeats"`
	WireHeartbeats  uint64 `json:"wire_heartbeats,omitempty"`

	BytesUp           uint64  `json:"bytes_up"`
	BytesDown         uint64  `json:"bytes_down"`
	BytesUpPerHour    float64 `json:"bytes_up_per_hour"`
	BytesDownPerHour  float64 `json:"bytes_down_per_hour"`
	BytesPerHeartbeat float64 `json:"bytes_per_heartbeat,omitempty"` // both ways
	SegmentsUp        uint64  `json:"segments_up"`
	SegmentsDown      uint64  `json:"segments_down"`
	// IPBytesPerHour adds an IPv4 and TCP header to every segment, both
	// ways: what the network carries above its link layer.
	IPBytesPerHour float64 `json:"ip_bytes_per_hour"`

	Pongs            uint64 `json:"pongs"`
	ProbePings       uint64 `json:"probe_pings"`
	OtherFramesUp    uint64 `json:"other_frames_up"`
	OtherFramesDown  uint64 `json:"other_frames_down"`
	NewConnections   uint64 `json:"new_connections"`
	ProbeConnections uint64 `json:"probe_connections"`
	Reconnects       uint64 `json:"reconnects"`

	GCs       int `json:"gcs"`
	ForcedGCs int `json:"forced_gcs"`

	CPUMillis     uint64 `json:"cpu_ms"`
	RSSKiB        uint64 `json:"rss_kib"`
	Threads       int    `json:"threads"`
	ThreadsExited int    `json:"threads_exited,omitempty"`

	// Causes attributes the wake-ups, burst by burst, to what happened
	// within a sampling interval of each burst.
	Causes []cause `json:"causes"`
	Bursts []burst `json:"bursts"`
	// PerThread is each thread's context switches in the period.
	PerThread []threadDelta `json:"per_thread"`
	Warnings  []string      `json:"warnings,omitempty"`
}

type machine struct {
	OS      string `json:"os"`
	Arch    string `json:"arch"`
	CPUs    int    `json:"cpus"`
	Kernel  string `json:"kernel"`
	Tetherd string `json:"tetherd_go"` // the Go release tetherd was built with
}

// burst is a run of sampling intervals in which the agent woke.
type burst struct {
	At      float64 `json:"at"` // seconds into the period, where it began
	Wakeups uint64  `json:"wakeups"`
	Cause   string  `json:"cause"`
}

type cause struct {
	Cause   string `json:"cause"`
	Bursts  int    `json:"bursts"`
	Wakeups uint64 `json:"wakeups"`
}

// causeNone is the cause of a burst with nothing on the wire or in the
// garbage collector around it: the Go runtime's own timers (sysmon) or
// the agent's.
const causeNone = "none seen"

func buildReport(in reportInput) report {
	first, last := in.samples[0], in.samples[len(in.samples)-1]
	secs := last.At.Sub(first.At).Seconds()
	perHour := func(n uint64) float64 { return float64(n) * 3600 / secs }
	deltas, exited := threadDeltas(first, last)
	var wakeups uint64
	for i, d := range deltas {
		wakeups += d.Switches
		deltas[i].Waits = in.states[d.TID]
	}
	slices.SortFunc(deltas, func(a, b threadDelta) int { return cmp.Compare(b.Switches, a.Switches) })

	r := report{
		Machine:          machineInfo(in.tetherd),
		Transport:        "ws",
		HeartbeatSetting: in.cfg.heartbeat,
		HeartbeatSeconds: in.after.Heartbeat,
		PowerMode:        in.after.PowerMode,
		Seconds:          secs,
		Wakeups:          wakeups,
		Voluntary:        last.Voluntary - min(first.Voluntary, last.Voluntary),
		Involuntary:      last.Involuntary - min(first.Involuntary, last.Involuntary),
		WakeupsPerMinute: float64(wakeups) * 60 / secs,
		AgentHeartbeats:  in.after.Heartbeats - in.before.Heartbeats,
		BytesUp:          in.wire.UpBytes,
		BytesDown:        in.wire.DownBytes,
		BytesUpPerHour:   perHour(in.wire.UpBytes),
		BytesDownPerHour: perHour(in.wire.DownBytes),
		SegmentsUp:       in.wire.UpSegments,
		SegmentsDown:     in.wire.DownSegments,
		IPBytesPerHour:   perHour(in.wire.UpBytes + in.wire.DownBytes + ipTCPHeader*(in.wire.UpSegments+in.wire.DownSegments)),
		Pongs:            in.wire.Pongs,
		ProbePings:       in.wire.ProbePings,
		OtherFramesUp:    in.wire.OtherUp,
		OtherFramesDown:  in.wire.OtherDown,
		NewConnections:   in.wire.Connections,
		ProbeConnections: in.wire.ProbeConnections,
		Reconnects:       in.after.Reconnects - in.before.Reconnects,
		CPUMillis:        (last.CPUTicks - min(first.CPUTicks, last.CPUTicks)) * 1000 / procfs.UserHZ,
		RSSKiB:           last.RSSKiB,
		Threads:          len(last.Threads),
		ThreadsExited:    exited,
		PerThread:        deltas,
	}
	if in.cfg.tls {
		r.Transport = "wss"
		r.Heartbeats = r.AgentHeartbeats
	} else {
		r.Heartbeats = in.wire.Pings
		r.WireHeartbeats = in.statusWire.Pings
		if r.WireHeartbeats != r.AgentHeartbeats {
			r.Warnings = append(r.Warnings, fmt.Sprintf("the agent counted %d heartbeats and the wire carried %d pings over the same span", r.AgentHeartbeats, r.WireHeartbeats))
		}
	}
	r.HeartbeatsPerHour = perHour(r.Heartbeats)
	if r.Heartbeats > 0 {
		r.WakeupsPerHeartbeat = float64(wakeups) / float64(r.Heartbeats)
		r.BytesPerHeartbeat = float64(in.wire.UpBytes+in.wire.DownBytes) / float64(r.Heartbeats)
	}
	for _, e := range in.events {
		if e.at.Before(first.At) || e.at.After(last.At) {
			continue
		}
		switch e.kind {
		case "forced gc":
			r.ForcedGCs++
			r.GCs++
		case "gc":
			r.GCs++
		}
	}
	r.Bursts, r.Causes = attribute(in.samples, in.events, in.cfg.sample)
	if r.Reconnects > 0 || in.wire.Connections > in.wire.ProbeConnections {
		r.Warnings = append(r.Warnings, "the agent reconnected during the period: it was not idle")
	}
	if in.wire.Unparsed > 0 && !in.cfg.tls {
		r.Warnings = append(r.Warnings, "some connections could not be followed as WebSocket")
	}
	if exited > 0 {
		r.Warnings = append(r.Warnings, fmt.Sprintf("%d threads exited during the period; their last switches are not counted", exited))
	}
	return r
}

// attribute groups the sampling intervals in which the agent woke into
// bursts, and names each by the events within one interval of it.
func attribute(samples []procfs.Sample, events []event, interval time.Duration) ([]burst, []cause) {
	var bursts []burst
	open := false
	var from time.Time
	for i := 1; i < len(samples); i++ {
		d := samples[i].Total() - min(samples[i-1].Total(), samples[i].Total())
		if d == 0 {
			open = false
			continue
		}
		if !open {
			open = true
			from = samples[i-1].At
			bursts = append(bursts, burst{At: from.Sub(samples[0].At).Seconds()})
		}
		b := &bursts[len(bursts)-1]
		b.Wakeups += d
		b.Cause = causeOf(events, from.Add(-interval), samples[i].At.Add(interval), gcAftermath)
	}
	var causes []cause
	for _, b := range bursts {
		i := slices.IndexFunc(causes, func(c cause) bool { return c.Cause == b.Cause })
		if i < 0 {
			causes = append(causes, cause{Cause: b.Cause})
			i = len(causes) - 1
		}
		causes[i].Bursts++
		causes[i].Wakeups += b.Wakeups
	}
	slices.SortFunc(causes, func(a, b cause) int { return cmp.Compare(b.Wakeups, a.Wakeups) })
	return bursts, causes
}

// gcAftermath is how long after a garbage collection ends the runtime
// may still wake for it: the background scavenger returns the memory
// the collection freed to the kernel in steps, on a timer.
const gcAftermath = 2 * time.Second

// causeOf names the kinds of event from a to b, in a fixed order; a
// garbage collection counts up to aftermath before a.
func causeOf(events []event, a, b time.Time, aftermath time.Duration) string {
	var kinds []string
	for _, k := range []string{"heartbeat", "probe ping", "agent sent (wss)", "forced gc", "gc"} {
		from := a
		if strings.HasSuffix(k, "gc") {
			from = a.Add(-aftermath)
		}
		for _, e := range events {
			if e.kind == k && !e.at.Before(from) && !e.at.After(b) {
				kinds = append(kinds, k)
				break
			}
		}
	}
	if len(kinds) == 0 {
		return causeNone
	}
	return strings.Join(kinds, " + ")
}

func machineInfo(tetherd string) machine {
	m := machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if info, err := buildinfo.ReadFile(tetherd); err == nil {
		m.Tetherd = info.GoVersion
	}
	return m
}

func (r report) print(w io.Writer, timeline bool) {
	fmt.Fprintf(w, "idle tetherd for %s: heartbeat %s (%d s in use), power %s, %s:// on loopback through a counting proxy\n",
		time.Duration(r.Seconds*float64(time.Second)).Round(time.Second), r.HeartbeatSetting, r.HeartbeatSeconds, r.PowerMode, r.Transport)
	fmt.Fprintf(w, "machine: %s/%s, %d CPUs, kernel %s; tetherd built with %s\n\n", r.Machine.OS, r.Machine.Arch, r.Machine.CPUs, r.Machine.Kernel, r.Machine.Tetherd)

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	perBeat := func(n uint64) string {
		if r.Heartbeats == 0 {
			return "-"
		}
		return fmt.Sprintf("%.1f", float64(n)/float64(r.Heartbeats))
	}
	perHour := func(n uint64) string { return fmt.Sprintf("%.0f", float64(n)*3600/r.Seconds) }
	fmt.Fprintf(tw, "\tmeasured\tper hour\tper heartbeat\t\n")
	fmt.Fprintf(tw, "wake-ups (context switches)\t%d\t%s\t%s\t\n", r.Wakeups, perHour(r.Wakeups), perBeat(r.Wakeups))
	fmt.Fprintf(tw, "heartbeats\t%d\t%s\t\t\n", r.Heartbeats, perHour(r.Heartbeats))
	fmt.Fprintf(tw, "bytes agent → server\t%d\t%s\t%s\t\n", r.BytesUp, perHour(r.BytesUp), perBeat(r.BytesUp))
	fmt.Fprintf(tw, "bytes server → agent\t%d\t%s\t%s\t\n", r.BytesDown, perHour(r.BytesDown), perBeat(r.BytesDown))
	fmt.Fprintf(tw, "TCP segments agent → server\t%d\t%s\t%s\t\n", r.SegmentsUp, perHour(r.SegmentsUp), perBeat(r.SegmentsUp))
	fmt.Fprintf(tw, "TCP segments server → agent\t%d\t%s\t%s\t\n", r.SegmentsDown, perHour(r.SegmentsDown), perBeat(r.SegmentsDown))
	ip := r.BytesUp + r.BytesDown + ipTCPHeader*(r.SegmentsUp+r.SegmentsDown)
	fmt.Fprintf(tw, "IPv4 bytes, both ways\t%d\t%s\t%s\t\n", ip, perHour(ip), perBeat(ip))
	fmt.Fprintf(tw, "garbage collections (forced)\t%d (%d)\t%s\t\t\n", r.GCs, r.ForcedGCs, perHour(uint64(r.GCs)))
	fmt.Fprintf(tw, "CPU time, ms\t%d\t%s\t%s\t\n", r.CPUMillis, perHour(r.CPUMillis), perBeat(r.CPUMillis))
	tw.Flush()

	fmt.Fprintf(w, "\nwake-ups per minute: %.1f (%d voluntary, %d involuntary)\n", r.WakeupsPerMinute, r.Voluntary, r.Involuntary)
	fmt.Fprintf(w, "heartbeats per hour: %.1f; the agent's counter says %d", r.HeartbeatsPerHour, r.AgentHeartbeats)
	if r.Transport == "ws" {
		fmt.Fprintf(w, ", the wire %d, over the same span", r.WireHeartbeats)
	}
	fmt.Fprintf(w, "\nframes besides: %d pongs down, %d other up, %d other down; %d probe pings on %d probe connections\n",
		r.Pongs, r.OtherFramesUp, r.OtherFramesDown, r.ProbePings, r.ProbeConnections)
	fmt.Fprintf(w, "memory: VmRSS %.1f MiB, %d threads\n", float64(r.RSSKiB)/1024, r.Threads)
	fmt.Fprintf(w, "\nwake-ups by what happened around them:\n")
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	for _, c := range r.Causes {
		fmt.Fprintf(tw, "  %s\t%d bursts\t%d wake-ups\t%.1f per burst\n", c.Cause, c.Bursts, c.Wakeups, float64(c.Wakeups)/float64(c.Bursts))
	}
	tw.Flush()
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "warning: %s\n", warn)
	}
	if !timeline {
		return
	}
	fmt.Fprintf(w, "\nbursts:\n")
	for _, b := range r.Bursts {
		fmt.Fprintf(w, "  %8.2fs  %4d  %s\n", b.At, b.Wakeups, b.Cause)
	}
	fmt.Fprintf(w, "\nthreads:\n")
	for _, t := range r.PerThread {
		note := ""
		if t.New {
			note = " (started during the period)"
		}
		fmt.Fprintf(w, "  %7d  %5d  %s%s\n", t.TID, t.Switches, t.Waits, note)
	}
}
