// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"debug/buildinfo"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// report is the outcome, as printed and as -json writes it.
type report struct {
	Date      string     `json:"date"`
	Machine   machine    `json:"machine"`
	Settings  settings   `json:"settings"`
	Tether    sideResult `json:"tether"`
	Mosquitto sideResult `json:"mosquitto"`
	Sizes     sizes      `json:"sizes"`
	// Figures are the comparisons, each with its ratio.
	Figures []figure `json:"figures"`
	// Profiles split the CPU profiles of tetherd and tether-server over
	// each throughput run, with -profile.
	Profiles []profileSplit `json:"profiles,omitempty"`
	// Warnings are what makes some figures less than they seem.
	Warnings []string `json:"warnings,omitempty"`
}

type sideResult struct {
	Idle       idleResult  `json:"idle"`
	Latency    runResult   `json:"latency"`
	Throughput []runResult `json:"throughput"`
}

type machine struct {
	OS     string `json:"os"`
	Arch   string `json:"arch"`
	CPUs   int    `json:"cpus"`
	CPU    string `json:"cpu"`
	Kernel string `json:"kernel"`
	// Disk is the file system of the temporary directory, where the
	// stores commit.
	Disk      string `json:"disk"`
	Go        string `json:"tether_go"` // the Go release tetherd was built with
	Mosquitto string `json:"mosquitto"`
	// LoadBefore and LoadAfter are the 1-minute load averages when the
	// tool began and when it had measured: other work on the machine.
	LoadBefore string `json:"load_before"`
	LoadAfter  string `json:"load_after"`
}

type settings struct {
	PayloadBytes     int     `json:"payload_bytes"`
	LatencyMessages  int     `json:"latency_messages"`
	LatencyRate      float64 `json:"latency_rate"`
	Counts           []int   `json:"throughput_counts"`
	Window           int     `json:"window"`
	TetherConns      int     `json:"tether_http_connections"`
	BatchAcks        bool    `json:"tether_batch_acks"`
	HeartbeatSeconds int     `json:"heartbeat_seconds"`
	IdleSeconds      float64 `json:"idle_seconds"`
	SettleSeconds    float64 `json:"settle_seconds"`
	AutosaveSeconds  int     `json:"mosquitto_autosave_seconds"`
	Quick            bool    `json:"quick,omitempty"`
}

// figure is one comparison.
type figure struct {
	Name      string  `json:"name"`
	Unit      string  `json:"unit"`
	Tether    float64 `json:"tether"`
	Mosquitto float64 `json:"mosquitto"`
	// Ratio is Tether / Mosquitto; absent when Mosquitto's is zero or a
	// run failed.
	Ratio *float64 `json:"ratio"`
	// TetherFailed and MosquittoFailed are set when the run the figure
	// comes from failed: its value is then not a measurement.
	TetherFailed    bool `json:"tether_failed,omitempty"`
	MosquittoFailed bool `json:"mosquitto_failed,omitempty"`
	// Better is "lower" or "higher": which way is better for this figure.
	Better string `json:"better"`
}

func newFigure(name, unit, better string, tether, mosquitto float64) figure {
	f := figure{Name: name, Unit: unit, Better: better, Tether: tether, Mosquitto: mosquitto}
	if mosquitto != 0 {
		r := tether / mosquitto
		f.Ratio = &r
	}
	return f
}

// runFigure is a figure read from a run on each side.
func runFigure(name, unit, better string, t, m runResult, value func(runResult) float64) figure {
	f := newFigure(name, unit, better, value(t), value(m))
	f.TetherFailed, f.MosquittoFailed = t.Error != "", m.Error != ""
	if f.TetherFailed || f.MosquittoFailed {
		f.Ratio = nil
	}
	return f
}

func settingsOf(c config) settings {
	return settings{
		PayloadBytes: c.payload, LatencyMessages: c.latencyN, LatencyRate: c.rate, Counts: c.counts,
		Window: c.window, TetherConns: c.conns, BatchAcks: c.batchAcks, HeartbeatSeconds: int(c.heartbeat.Seconds()),
		IdleSeconds: c.idle.Seconds(), SettleSeconds: c.settle.Seconds(),
		AutosaveSeconds: int(autosaveInterval.Seconds()), Quick: c.quick,
	}
}

// compare fills in the figures from the results.
func (r *report) compare() {
	t, m := r.Tether, r.Mosquitto
	lat := fmt.Sprintf("%d messages at %g/s", r.Settings.LatencyMessages, r.Settings.LatencyRate)
	p50 := func(r runResult) float64 { return r.P50Millis }
	p99 := func(r runResult) float64 { return r.P99Millis }
	maxMs := func(r runResult) float64 { return r.MaxMillis }
	perSecond := func(r runResult) float64 { return r.PerSecond }
	perMessage := func(r runResult) float64 { return r.BytesPerMessage }
	r.Figures = []figure{
		runFigure("latency p50 ("+lat+")", "ms", "lower", t.Latency, m.Latency, p50),
		runFigure("latency p99", "ms", "lower", t.Latency, m.Latency, p99),
		runFigure("latency max", "ms", "lower", t.Latency, m.Latency, maxMs),
	}
	for i := range min(len(t.Throughput), len(m.Throughput)) {
		r.Figures = append(r.Figures, runFigure(
			fmt.Sprintf("throughput, %s messages", thousands(float64(t.Throughput[i].Messages))), "messages/s", "higher",
			t.Throughput[i], m.Throughput[i], perSecond))
	}
	kib := func(n int64) float64 { return float64(n) / 1024 }
	r.Figures = append(r.Figures,
		newFigure("idle agent VmRSS (tetherd, mosquitto_sub)", "MiB", "lower", float64(t.Idle.RSSKiB)/1024, float64(m.Idle.RSSKiB)/1024),
		newFigure("agent binary alone", "KiB", "lower", kib(r.Sizes.Tetherd), kib(r.Sizes.MosquittoSub)),
		newFigure("agent binary with its shared libraries", "KiB", "lower", kib(r.Sizes.Tetherd), kib(r.Sizes.WithLibraries)),
		newFigure("idle wake-ups per minute", "wake-ups", "lower", t.Idle.WakeupsPerMinute, m.Idle.WakeupsPerMinute),
		newFigure("bytes per heartbeat, both ways", "bytes", "lower", t.Idle.BytesPerHeartbeat, m.Idle.BytesPerHeartbeat),
		runFigure("bytes per message on the device link, paced (latency run)", "bytes", "lower", t.Latency, m.Latency, perMessage),
	)
	for _, side := range []struct {
		name, agent string
		res         sideResult
	}{{"Tether", "tetherd", t}, {"Mosquitto", "mosquitto_sub", m}} {
		lat := side.res.Latency
		if lat.Error == "" && lat.PerSecond < 0.9*r.Settings.LatencyRate {
			r.Warnings = append(r.Warnings, fmt.Sprintf(
				"%s took the latency run's messages at %s/s, not %g/s: the window of %d messages in flight held the sends back, so its latencies are those of a queue.",
				side.name, num(lat.PerSecond), r.Settings.LatencyRate, r.Settings.Window))
		}
		for _, w := range side.res.Idle.Warnings {
			r.Warnings = append(r.Warnings, fmt.Sprintf("idle %s: %s", side.agent, w))
		}
	}
	if n := min(len(t.Throughput), len(m.Throughput)); n > 0 {
		tl, ml := t.Throughput[n-1], m.Throughput[n-1]
		r.Figures = append(r.Figures, runFigure(
			fmt.Sprintf("bytes per message on the device link, %s messages at full speed", thousands(float64(tl.Messages))),
			"bytes", "lower", tl, ml, perMessage))
		for _, c := range []struct {
			who string
			of  func(runResult) float64
		}{
			{"agent CPU per message (tetherd, mosquitto_sub)", func(r runResult) float64 { return r.AgentCPUMicros }},
			{"server CPU per message (tether-server, mosquitto)", func(r runResult) float64 { return r.ServerCPUMicros }},
			{"CPU per message of every process of the run (with the publisher, the app and the proxy)", func(r runResult) float64 { return r.AllCPUMicros }},
		} {
			name := fmt.Sprintf("%s, %s messages at full speed", c.who, thousands(float64(tl.Messages)))
			if c.of(tl) > 0 && c.of(ml) > 0 {
				r.Figures = append(r.Figures, runFigure(name, "µs", "lower", tl, ml, c.of))
			} else {
				// /proc counts CPU time in 10 ms ticks: a short run may
				// not last one of a side's.
				r.Warnings = append(r.Warnings, fmt.Sprintf("%s: not shown, as a side used less CPU than /proc counts (10 ms); run more messages", name))
			}
		}
		r.Figures = append(r.Figures, runFigure("agent peak VmRSS (VmHWM) after the throughput runs", "MiB", "lower", tl, ml,
			func(r runResult) float64 { return float64(r.PeakRSSKiB) / 1024 }))
	}
}

func (r *report) markdown(w io.Writer) {
	s := r.Settings
	fmt.Fprintf(w, "## Tether beside Mosquitto\n\n")
	fmt.Fprintf(w, "`go run ./scripts/bench`, %s, on %s (%d CPUs, %s, Linux %s, load average %s before, %s after); stores on %s. "+
		"tetherd built with %s; %s.\n\n",
		r.Date, r.Machine.CPU, r.Machine.CPUs, r.Machine.Arch, r.Machine.Kernel, r.Machine.LoadBefore, r.Machine.LoadAfter,
		r.Machine.Disk, r.Machine.Go, r.Machine.Mosquitto)
	if s.Quick {
		fmt.Fprintf(w, "**-quick: tiny counts, to check the tool; not figures to compare.**\n\n")
	}
	fmt.Fprintf(w, "| | unit | Tether | Mosquitto | Tether / Mosquitto |\n|---|---|---:|---:|---:|\n")
	for _, f := range r.Figures {
		ratio := "–"
		if f.Ratio != nil {
			ratio = fmt.Sprintf("%.2f", *f.Ratio)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s |\n", f.Name, f.Unit, value(f.Tether, f.TetherFailed), value(f.Mosquitto, f.MosquittoFailed), ratio)
	}
	fmt.Fprintf(w, "\nA ratio above 1 means Tether's figure is the larger: worse for everything but throughput. A run that failed (below) shows what arrived before it did, and no ratio.\n\n")
	for _, warn := range r.Warnings {
		fmt.Fprintf(w, "**Warning:** %s\n\n", warn)
	}

	r.markdownProfiles(w)
	fmt.Fprintf(w, "### Every message accounted for\n\n")
	fmt.Fprintf(w, "| run | system | sent | received | duplicates | acked by the app | missing | seconds | messages/s | outcome |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---|\n")
	for _, side := range []struct {
		name string
		res  sideResult
	}{{"Tether", r.Tether}, {"Mosquitto", r.Mosquitto}} {
		for _, run := range append([]runResult{side.res.Latency}, side.res.Throughput...) {
			acked := "–"
			if side.name == "Tether" {
				acked = strconv.Itoa(run.Acked)
			}
			outcome := "complete"
			if run.Error != "" {
				outcome = "**failed**: " + run.Error
			}
			fmt.Fprintf(w, "| %s | %s | %d | %d | %d | %s | %d | %.2f | %s | %s |\n",
				run.Name, side.name, run.Sent, run.Received, run.Duplicates, acked, run.Missing, run.Seconds, thousands(run.PerSecond), outcome)
		}
	}

	z := r.Sizes
	fmt.Fprintf(w, "\n### Sizes\n\n")
	fmt.Fprintf(w, "- tetherd, static and stripped: %s KiB for %s", thousands(float64(z.Tetherd)/1024), r.Machine.Arch)
	if z.TetherdARMv7 > 0 {
		fmt.Fprintf(w, ", %s KiB for ARMv7 (%s)", thousands(float64(z.TetherdARMv7)/1024), z.ARMv7From)
	}
	fmt.Fprintf(w, "; it needs no shared library.\n")
	fmt.Fprintf(w, "- mosquitto_sub: %s KiB, %s KiB with ", thousands(float64(z.MosquittoSub)/1024), thousands(float64(z.WithLibraries)/1024))
	var libs []string
	for _, l := range z.Libraries {
		libs = append(libs, fmt.Sprintf("%s (%s KiB)", l.Name, thousands(float64(l.Bytes)/1024)))
	}
	fmt.Fprintf(w, "%s; the C library and the loader, which every program loads, are not counted.\n", strings.Join(libs, ", "))

	fmt.Fprintf(w, "\n### How it was measured\n\n")
	acks := "acks every message with an `ack` of its own, as soon as it has it, without waiting for the answers to earlier ones"
	if s.BatchAcks {
		acks = "acks, in one `ack`, every message it received since its last ack was answered (`-batch-acks`)"
	}
	for _, line := range []string{
		fmt.Sprintf("Both systems run on loopback on the same machine, with %d-byte payloads. Each payload carries its sequence number and its send time; latency is from the moment the tool hands a message to the publisher to the moment the subscriber hands it to the tool.", s.PayloadBytes),
		"Tether: the tool posts each message to one token (`to`) on tether-server's `/gcm/send`, over HTTP keep-alive connections; tetherd delivers it on its Unix socket to the tool's app, which " + acks + ". The server and the agent commit every message (and every ack) to disk, with fsync, before they acknowledge it.",
		fmt.Sprintf("Mosquitto: the tool writes each payload as a line to `mosquitto_pub -q 1 -l`; `mosquitto_sub -c -q 1` (a persistent session) prints it. mosquitto runs with its defaults and `persistence true`: it saves its state every %d s (`autosave_interval`) and when it stops, not per message, so a crash loses what came since the last save.", s.AutosaveSeconds),
		fmt.Sprintf("Latency: %d messages paced at %g/s; Tether's app server sends from up to 4 connections, so that one slow answer does not hold the next send.", s.LatencyMessages, s.LatencyRate),
		fmt.Sprintf("Throughput: messages sent as fast as a window of %d messages sent and not yet received allows, timed from the first send until the subscriber has every message (and, for Tether, the agent has answered every ack). Tether's app server sends from %d concurrent connections, mosquitto_pub from its one. The window keeps the publishers from outrunning the queue limits: Tether keeps 100 messages in flight at each hop (the connection server's to the device until the agent acks them, the agent's to the app until the app acks them), and at most 100 more waiting for an app behind them (GCM's rule on the server, the agent's quota), dropping them all beyond; mosquitto queues at most 1000 for a client. The agent's peak VmRSS is its VmHWM read after the last throughput run (mosquitto_sub's alike).", s.Window, s.TetherConns),
		fmt.Sprintf("Idle: tetherd with `--heartbeat %ds`, measured by `scripts/idle-report` (its own server and proxy), and mosquitto_sub with `-k %d`, side by side for %g s after %g s to settle. Wake-ups are the context switches of all the process's threads (/proc/PID/task/*/status). VmRSS is read at the end: tetherd's counts the pages of its binary it has touched, mosquitto_sub's those of its shared libraries.", s.HeartbeatSeconds, s.HeartbeatSeconds, s.IdleSeconds, s.SettleSeconds),
		"Bytes are TCP payload bytes on the device's link (tetherd to tether-server, mosquitto_sub to mosquitto), counted by a proxy that follows the WebSocket frames and MQTT packets: per heartbeat, every byte over the heartbeats; per message, the frames other than heartbeats over the messages.",
		"CPU per message: the user and system CPU time of a process's threads over the run (/proc/PID/stat, in 10 ms ticks), over the messages received: the agent's (tetherd, mosquitto_sub), the server's (tether-server, mosquitto), and that of every process of the run, the tool's own (the publisher's HTTP client or the pipe to mosquitto_pub, the app, the proxy) and mosquitto_pub's among them. The cores' time over the last figure bounds the messages per second.",
	} {
		fmt.Fprintf(w, "- %s\n", line)
	}
}

// value prints a figure, or says that its run failed.
func value(v float64, failed bool) string {
	if failed {
		return fmt.Sprintf("failed (%s)", num(v))
	}
	return num(v)
}

// num prints a figure with a precision that suits its size.
func num(v float64) string {
	switch {
	case v == 0:
		return "0"
	case v >= 100:
		return thousands(v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// thousands rounds v and groups its digits by three: 12,345.
func thousands(v float64) string {
	s := strconv.FormatInt(int64(v+0.5), 10)
	var b strings.Builder
	for i, ch := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(ch)
	}
	return b.String()
}

func machineInfo(bins binaries, tools mosquittoTools, work string) machine {
	m := machine{OS: runtime.GOOS, Arch: runtime.GOARCH, CPUs: runtime.NumCPU()}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.Lines(string(b)) {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if info, err := buildinfo.ReadFile(bins.agent); err == nil {
		m.Go = info.GoVersion
	}
	m.Disk = fileSystem(work)
	m.LoadBefore = loadAverage()
	// mosquitto -h prints its version first, and exits with an error.
	out, _ := exec.Command(tools.broker, "-h").CombinedOutput()
	first, _, _ := bytes.Cut(out, []byte("\n"))
	m.Mosquitto = strings.TrimSpace(string(first))
	return m
}

// loadAverage is the 1-minute load average.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	first, _, _ := strings.Cut(string(b), " ")
	return first
}

// fileSystem names the file system that holds dir, from /proc/mounts:
// the mount with the longest path that contains it.
func fileSystem(dir string) string {
	b, err := os.ReadFile("/proc/mounts")
	if err != nil {
		return "unknown"
	}
	best, found := "", "unknown"
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		mnt := f[1]
		inside := dir == mnt || strings.HasPrefix(dir, strings.TrimSuffix(mnt, "/")+"/")
		if inside && len(mnt) >= len(best) {
			best, found = mnt, fmt.Sprintf("%s (%s on %s)", mnt, f[2], f[0])
		}
	}
	return found
}

func today() string { return time.Now().UTC().Format(time.DateOnly) }
