// SPDX-License-Identifier: Apache-2.0

// Command bench measures Tether beside Mosquitto on one machine, in one
// run, with the same message count and payload on both sides, and prints
// each figure with its ratio (Tether / Mosquitto), as markdown for
// docs/benchmarks.md or as JSON, so that a run on another machine can be
// compared with this one by its ratios.
//
// Everything runs on loopback, in a temporary directory:
//
//   - Tether: the tool is the app server, posting one message to one
//     token per request to tether-server's /gcm/send over HTTP keep-alive
//     connections. tetherd reaches the server through a counting TCP
//     proxy, and the tool is also the local app on tetherd's Unix socket:
//     it listens and acks every message. Every hop is durable: the
//     server and the agent commit each message to disk (fsync) before
//     they acknowledge it.
//   - Mosquitto: the tool writes one payload per line to mosquitto_pub -q 1
//     -l, which publishes it to a mosquitto with persistence on (saved
//     every autosave_interval, not per message), and reads what
//     mosquitto_sub -c -q 1 (a persistent session, through the same kind
//     of proxy) prints of each message.
//
// Each payload carries its run, its sequence number and the time it was
// sent, padded to -payload bytes. Latency is from the moment the tool
// hands a message to the publisher (the HTTP request, the line on
// mosquitto_pub's input) to the moment it reads it from the subscriber.
//
// What it measures, in this order:
//
//   - sizes: tetherd (host and ARMv7, stripped, static) against
//     mosquitto_sub alone and with its shared libraries.
//   - idle: tetherd measured by idle-report (from -bin) and mosquitto_sub
//     measured here alike, side by side, with the same heartbeat
//     (mosquitto_sub's keepalive): wake-ups per minute, bytes per heartbeat,
//     VmRSS.
//   - latency, on Tether then on Mosquitto: -latency-n messages paced at
//     -rate per second: p50, p99, max, and the bytes each message costs on
//     the device's link.
//   - throughput, for each count in -n, on Tether then on Mosquitto:
//     messages sent as fast as a window of -window messages in flight
//     allows, until the subscriber has every one (and, for Tether, has
//     acked it): messages per second.
//
// The window exists because neither system queues without bound: at each
// of Tether's hops a window of 100 messages flows (the connection server's
// to the device, unacked by the agent; the agent's to the app, unacked by
// the app), and behind it at most 100 more wait for one app, one more
// dropping them (GCM's rule on the server, the agent's quota); mosquitto
// queues at most 1000 for a client. Both publishers keep the same window,
// at most 200 (maxWindow).
//
// A run that loses messages (tetherd tells the app with deleted_messages)
// or stalls for a minute is reported as failed, with what did arrive; the
// tool goes on with the next run, prints the report and exits with status
// 1. A program that dies ends the tool.
//
//	make build && go build -o bin/idle-report ./scripts/idle-report
//	go run ./scripts/bench -bin bin                 # full size, several minutes
//	go run ./scripts/bench -bin bin -quick          # tiny counts, under a minute
//	go run ./scripts/bench -bin bin -json -md report.md >report.json
//	go run ./scripts/bench -render report.json       # its markdown again
//	go run ./scripts/bench -median a.json,b.json,c.json  # medians of runs
//
// mosquitto, mosquitto_pub and mosquitto_sub are looked up on PATH, then
// in /usr/sbin and /usr/local/sbin. The temporary directory is under
// $TMPDIR: its file system is where Tether's stores commit.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is the command line.
type config struct {
	bin       string
	counts    []int // throughput runs
	latencyN  int
	rate      float64
	payload   int
	window    int
	conns     int // Tether's concurrent HTTP connections for throughput
	batchAcks bool
	heartbeat time.Duration
	idle      time.Duration
	settle    time.Duration
	quick     bool
	json      bool
	mdFile    string
	keep      bool
	// profile is where tetherd and tether-server write their profiles
	// of each throughput run; "" for none.
	profile string
	// armBuild lets the tool build tetherd for ARMv7 when -bin has no
	// cross/linux-armv7/tetherd.
	armBuild bool
	// render names a JSON report to print again, as markdown, instead of
	// measuring.
	render string
	// median names JSON reports to sum up, instead of measuring.
	median string
}

func main() {
	c, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		os.Exit(2)
	}
	if c.median != "" {
		if err := medians(strings.Split(c.median, ","), os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	if c.render != "" {
		if err := render(c.render, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			os.Exit(1)
		}
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	r, err := run(ctx, c, os.Stderr)
	stop()
	if r != nil {
		if werr := write(r, c, os.Stdout); werr != nil {
			err = errors.Join(err, werr)
		}
	}
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "bench: interrupted; everything it started is stopped")
		os.Exit(1)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// quickConfig is what -quick sets: enough of everything to go through
// every step, in well under a minute.
func quickConfig(c config) config {
	c.counts = []int{100, 300}
	c.latencyN = 40
	c.heartbeat = 5 * time.Second // mosquitto_sub's shortest keepalive
	c.idle = 11 * time.Second
	c.settle = time.Second
	c.armBuild = false
	return c
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c config
	counts := fs.String("n", "10000,100000", "message `counts` of the throughput runs, comma-separated")
	fs.StringVar(&c.bin, "bin", "bin", "`directory` holding tether-server, tetherd and idle-report")
	fs.IntVar(&c.latencyN, "latency-n", 1000, "messages in the latency run")
	fs.Float64Var(&c.rate, "rate", 200, "messages per `second` in the latency run")
	fs.IntVar(&c.payload, "payload", 200, "payload `bytes` per message (Tether: one data value of this size)")
	fs.IntVar(&c.window, "window", 100, "most messages sent and not yet received, in the throughput runs, on both sides (at most 200: Tether keeps 100 in flight at each hop and at most 100 waiting behind them for an app)")
	fs.IntVar(&c.conns, "conns", 16, "concurrent HTTP connections of Tether's app server in the throughput runs")
	fs.BoolVar(&c.batchAcks, "batch-acks", false, "Tether's app acks in one request every message received since its last ack was answered, instead of one request per message")
	fs.DurationVar(&c.heartbeat, "heartbeat", time.Minute, "tetherd's heartbeat and mosquitto_sub's keepalive, whole seconds, at least 5s")
	fs.DurationVar(&c.idle, "idle", 2*time.Minute, "how long the idle agents are measured")
	fs.DurationVar(&c.settle, "settle", 35*time.Second, "how long the idle agents settle after they connect, before they are measured")
	fs.BoolVar(&c.quick, "quick", false, "tiny counts and short idle periods, to check the tool (overrides the counts and durations)")
	fs.BoolVar(&c.json, "json", false, "print the report as JSON instead of markdown")
	fs.StringVar(&c.mdFile, "md", "", "also write the markdown report to this `file`")
	fs.BoolVar(&c.keep, "keep", false, "keep the temporary directory (logs, stores) and print where it is")
	fs.StringVar(&c.render, "render", "", "print the JSON report in this `file` (from -json) as markdown, and measure nothing")
	fs.StringVar(&c.median, "median", "", "print, for JSON reports in these comma-separated `files` (from -json), each figure's median with the lowest and highest, as markdown, and measure nothing")
	fs.StringVar(&c.profile, "profile", "", "write CPU and allocation profiles of tetherd and tether-server over each throughput run into this `directory` (DIR/tetherd.N.cpu, .allocs); -bin's binaries must be built with -tags cpuprobe (make bench-profile)")
	fs.BoolVar(&c.armBuild, "arm-build", true, "build tetherd for ARMv7 when BIN/cross/linux-armv7/tetherd is missing (make cross builds it)")
	if err := fs.Parse(args); err != nil {
		return c, err
	}
	fail := func(format string, a ...any) (config, error) {
		err := fmt.Errorf(format, a...)
		fmt.Fprintln(stderr, "bench:", err)
		return c, err
	}
	if fs.NArg() > 0 {
		return fail("unexpected argument %q", fs.Arg(0))
	}
	for _, s := range strings.Split(*counts, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(s))
		if err != nil || n <= 0 {
			return fail("-n %q: want positive counts such as 10000,100000", *counts)
		}
		c.counts = append(c.counts, n)
	}
	if c.quick {
		c = quickConfig(c)
	}
	switch {
	case c.latencyN <= 0 || c.rate <= 0:
		return fail("-latency-n and -rate must be positive")
	case c.payload < minPayload || c.payload > maxPayload:
		return fail("-payload %d: want %d to %d bytes", c.payload, minPayload, maxPayload)
	case c.window <= 0 || c.window > maxWindow:
		return fail("-window %d: want 1 to %d", c.window, maxWindow)
	case c.conns <= 0:
		return fail("-conns must be positive")
	case c.heartbeat < 5*time.Second || c.heartbeat%time.Second != 0:
		return fail("-heartbeat %s: want whole seconds, at least 5s (mosquitto_sub's shortest keepalive)", c.heartbeat)
	case c.idle <= 0 || c.settle < 0:
		return fail("-idle must be positive and -settle not negative")
	}
	return c, nil
}

// render prints an earlier JSON report as markdown, its figures worked
// out again from its results.
func render(path string, w io.Writer) error {
	r, err := loadReport(path)
	if err != nil {
		return err
	}
	r.markdown(w)
	return nil
}

// loadReport reads a JSON report and works its figures out again from
// its results.
func loadReport(path string) (*report, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var r report
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	r.Warnings = nil
	r.compare()
	return &r, nil
}

// write prints the report as the flags ask.
func write(r *report, c config, stdout io.Writer) error {
	if c.mdFile != "" {
		f, err := os.Create(c.mdFile)
		if err != nil {
			return fmt.Errorf("write the markdown report: %w", err)
		}
		r.markdown(f)
		if err := f.Close(); err != nil {
			return fmt.Errorf("write the markdown report: %w", err)
		}
	}
	if c.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	r.markdown(stdout)
	return nil
}
