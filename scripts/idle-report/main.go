// SPDX-License-Identifier: Apache-2.0

// Command idle-report measures what an idle tetherd costs. It starts
// tether-server on loopback and tetherd connected to it through a TCP
// proxy that counts every byte and TCP segment each way and, on ws://, reads
// the WebSocket frames as they pass. Once the agent is connected and has
// settled, it measures, for -duration, the agent's context switches (the
// sum over /proc/PID/task/*/status, which is how often its threads went
// to sleep and were woken), its heartbeats, the bytes each way, its CPU
// time, memory and threads, and prints them per minute, per hour and per
// heartbeat. Each burst of wake-ups is attributed to what happened at that
// moment: a heartbeat on the wire, a garbage collection (tetherd runs with
// GODEBUG=gctrace=1 so that each one is seen), or neither.
//
// Before measuring, the tool asks the agent for its status until the
// agent has collected garbage once, as any agent that has handled some
// messages has: the Go runtime forces a collection every 2 minutes, but
// only in a process that has had a first one (-warm=false measures a
// fresh agent). It then waits until -settle after the connection, past
// the one-off timers of a new connection and of its own requests.
//
//	make idle-report                                   # 5 minutes, heartbeat 1m
//	make idle-report IDLE_FLAGS='-duration 30s'        # a quick look
//	bin/idle-report -heartbeat 4m -duration 10m -timeline
//	bin/idle-report -heartbeat learned                 # the learned heartbeat, probes included
//	bin/idle-report -tls                               # wss:// with a throwaway certificate
//
// Nothing runs in the agent on the tool's behalf: the tool reads /proc,
// which does not wake the agent, and asks the agent for its status over
// its socket only before and after the measured period.
//
// Everything it starts is stopped, and its temporary directory removed,
// when it ends, on Ctrl-C too.
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
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"time"

	"tether/internal/procfs"
)

// config is the command line.
type config struct {
	bin       string
	duration  time.Duration
	settle    time.Duration
	heartbeat string // a duration, or "learned"
	sample    time.Duration
	tls       bool
	gctrace   bool
	warm      bool
	keep      bool
	json      bool
	timeline  bool
}

func main() {
	var c config
	flag.StringVar(&c.bin, "bin", "bin", "`directory` holding tether-server and tetherd")
	flag.DurationVar(&c.duration, "duration", 5*time.Minute, "how long to measure the idle agent")
	flag.DurationVar(&c.settle, "settle", 35*time.Second,
		"how long to let the agent settle after it connects, before measuring: the default is past the one-off timers of a new connection (30 s) and of the tool's own status request (10 s)")
	flag.StringVar(&c.heartbeat, "heartbeat", "1m", "the agent's fixed heartbeat `interval`, or \"learned\" for the learned heartbeat (probes included)")
	flag.DurationVar(&c.sample, "sample", 250*time.Millisecond, "how often /proc is read, for the timeline of wake-ups")
	flag.BoolVar(&c.tls, "tls", false, "connect with wss:// and a throwaway certificate (frames cannot be read: heartbeats come from the agent's counter)")
	flag.BoolVar(&c.gctrace, "gctrace", true, "run tetherd with GODEBUG=gctrace=1, to attribute wake-ups to garbage collections")
	flag.BoolVar(&c.warm, "warm", true, "before measuring, ask the agent for its status until it has collected garbage once, as an agent that has worked has (needs -gctrace): the Go runtime forces a collection every 2 min only after a first one")
	flag.BoolVar(&c.keep, "keep", false, "keep the temporary directory (logs, stores) and print where it is")
	flag.BoolVar(&c.json, "json", false, "print the report as JSON")
	flag.BoolVar(&c.timeline, "timeline", false, "also print each burst of wake-ups, with what caused it, and each thread's share")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "idle-report: unexpected argument %q\n", flag.Arg(0))
		os.Exit(2)
	}
	if c.heartbeat != "learned" {
		d, err := time.ParseDuration(c.heartbeat)
		if err != nil || d <= 0 {
			fmt.Fprintf(os.Stderr, "idle-report: -heartbeat %q: want a duration such as 1m, or learned\n", c.heartbeat)
			os.Exit(2)
		}
		c.heartbeat = d.String()
	}
	if c.duration <= 0 || c.sample <= 0 || c.settle < 0 {
		fmt.Fprintln(os.Stderr, "idle-report: -duration and -sample must be positive, -settle not negative")
		os.Exit(2)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, c, os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, context.Canceled) {
		fmt.Fprintln(os.Stderr, "idle-report: interrupted; everything it started is stopped")
		os.Exit(1)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "idle-report:", err)
		os.Exit(1)
	}
}

// run sets the stage, measures and reports. Whatever happens, it stops
// what it started and removes its files before it returns.
func run(ctx context.Context, c config, stdout, stderr io.Writer) (err error) {
	bins := map[string]string{}
	for _, name := range []string{"tether-server", "tetherd"} {
		path, err := filepath.Abs(filepath.Join(c.bin, name))
		if err != nil {
			return err
		}
		if _, err := os.Stat(path); err != nil {
			return fmt.Errorf("%s: %w (make build first)", name, err)
		}
		bins[name] = path
	}
	work, err := os.MkdirTemp("", "tether-idle.")
	if err != nil {
		return err
	}
	if c.keep {
		defer fmt.Fprintf(stderr, "idle-report: kept %s\n", work)
	} else {
		defer os.RemoveAll(work)
	}
	var children []*child
	var px *proxy
	defer func() {
		// The agent first, so that it closes its connection cleanly, then
		// the server and the proxy in between.
		for i := len(children) - 1; i >= 0; i-- {
			children[i].stop()
		}
		if px != nil {
			px.close()
		}
		if err != nil && ctx.Err() == nil {
			for _, ch := range children {
				ch.tail(stderr)
			}
		}
	}()

	// The connection server, and the fleet key of its one device.
	const enrollKey = "idle-report-enrollment-key-0123456789"
	serverArgs := []string{"serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(work, "server"), "--enroll-key", enrollKey}
	var caFile string
	if c.tls {
		cert, key, err := writeCertificate(work)
		if err != nil {
			return err
		}
		serverArgs = append(serverArgs, "--tls-cert", cert, "--tls-key", key)
		caFile = cert
	}
	addrs := make(chan string, 1)
	server, err := startChild("tether-server", bins["tether-server"], serverArgs, nil, filepath.Join(work, "server.log"), func(line string) {
		if m := listenAddr.FindStringSubmatch(line); m != nil {
			select {
			case addrs <- m[1]:
			default:
			}
		}
	})
	if err != nil {
		return err
	}
	children = append(children, server)
	var serverAddr string
	select {
	case serverAddr = <-addrs:
	case <-server.done:
		return errors.New("tether-server exited before it listened")
	case <-time.After(30 * time.Second):
		return errors.New("tether-server did not listen within 30 s")
	case <-ctx.Done():
		return ctx.Err()
	}

	// The counting proxy in between.
	if px, err = newProxy(serverAddr, !c.tls); err != nil {
		return err
	}
	go px.serve()

	// The agent.
	scheme := "ws"
	if c.tls {
		scheme = "wss"
	}
	sock := filepath.Join(work, "tetherd.sock")
	agentArgs := []string{
		"run", "--config", "", "--server", scheme + "://" + px.addr(),
		"--data", filepath.Join(work, "agent"), "--socket", sock, "--dbus", "off", "--enroll-key", enrollKey,
	}
	if c.heartbeat != "learned" {
		agentArgs = append(agentArgs, "--heartbeat", c.heartbeat)
	}
	if caFile != "" {
		agentArgs = append(agentArgs, "--ca-file", caFile)
	}
	var env []string
	if c.gctrace {
		env = []string{"GODEBUG=" + strings.TrimPrefix(os.Getenv("GODEBUG")+",gctrace=1", ",")}
	}
	gcs := &gcLog{}
	agent, err := startChild("tetherd", bins["tetherd"], agentArgs, env, filepath.Join(work, "agent.log"), gcs.line)
	if err != nil {
		return err
	}
	children = append(children, agent)
	status := func() (agentStatus, error) { return askStatus(ctx, sock, 1) }

	// Connected: the one place the tool polls, and before measuring.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st, err := status()
		if err == nil && st.Connected {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the agent did not connect within 30 s (last: %v)", err)
		}
		if err := wait(ctx, agent, 200*time.Millisecond); err != nil {
			return err
		}
	}
	connected := time.Now()
	if c.warm && c.gctrace {
		requests := 0
		for gcs.count() == 0 {
			if requests >= 100000 {
				return fmt.Errorf("the agent did not collect garbage after %d status requests", requests)
			}
			if _, err := askStatus(ctx, sock, 200); err != nil {
				return fmt.Errorf("warm-up: %w", err)
			}
			requests += 200
		}
		fmt.Fprintf(stderr, "idle-report: warm: the agent collected garbage after %d status requests\n", requests)
	} else if c.warm {
		fmt.Fprintln(stderr, "idle-report: no warm-up without -gctrace: the agent may never collect garbage while measured")
	}
	before, err := status()
	if err != nil {
		return err
	}
	wireBefore := px.snapshot()
	// At least a second, for the status request's own wake-ups to pass.
	if err := wait(ctx, agent, max(time.Until(connected.Add(c.settle)), time.Second)); err != nil {
		return err
	}

	fmt.Fprintf(stderr, "idle-report: measuring tetherd (pid %d, heartbeat %s, %s://) for %s\n", agent.pid(), c.heartbeat, scheme, c.duration)
	wireStart := px.snapshot()
	samples, err := sample(ctx, agent, c.duration, c.sample)
	if err != nil {
		return err
	}
	states := threadStates(agent.pid())
	wireEnd := px.snapshot()
	after, err := status()
	if err != nil {
		return err
	}
	wireAfter := px.snapshot()

	first, last := samples[0].At, samples[len(samples)-1].At
	r := buildReport(reportInput{
		cfg:     c,
		tetherd: bins["tetherd"],
		samples: samples,
		states:  states,
		wire:    wireEnd.sub(wireStart),
		// Events just outside the period may explain its first and last
		// wake-ups; only those inside it are counted.
		events: append(px.eventsBetween(first.Add(-c.sample), last.Add(c.sample)),
			gcs.between(first.Add(-c.sample-gcAftermath), last.Add(c.sample))...),
		before:     before,
		after:      after,
		statusWire: wireAfter.sub(wireBefore),
	})
	if c.json {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	r.print(stdout, c.timeline)
	return nil
}

// listenAddr finds the address in tether-server's "listening" log line.
var listenAddr = regexp.MustCompile(`msg=listening addr=(\S+)`)

// wait waits d, failing early on Ctrl-C or if the agent exits.
func wait(ctx context.Context, agent *child, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-agent.done:
		return errors.New("tetherd exited")
	case <-ctx.Done():
		return ctx.Err()
	}
}

// sample reads the agent's /proc every interval for d, first and last
// reading included.
func sample(ctx context.Context, agent *child, d, interval time.Duration) ([]procfs.Sample, error) {
	first, err := procfs.Read(agent.pid())
	if err != nil {
		return nil, err
	}
	samples := []procfs.Sample{first}
	end := first.At.Add(d)
	for left := d; left > 0; left = time.Until(end) {
		if err := wait(ctx, agent, min(interval, left)); err != nil {
			return nil, fmt.Errorf("while measuring: %w", err)
		}
		s, err := procfs.Read(agent.pid())
		if err != nil {
			return nil, err
		}
		samples = append(samples, s)
	}
	return samples, nil
}
