// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// binaries are Tether's programs the tool runs, from -bin.
type binaries struct {
	dir                       string
	server, agent, idleReport string
}

func findBinaries(dir string) (binaries, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return binaries{}, err
	}
	b := binaries{
		dir:        abs,
		server:     filepath.Join(abs, "tether-server"),
		agent:      filepath.Join(abs, "tetherd"),
		idleReport: filepath.Join(abs, "idle-report"),
	}
	var errs []error
	for _, p := range []string{b.server, b.agent, b.idleReport} {
		if _, err := os.Stat(p); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return b, fmt.Errorf("%w\n(make build && go build -o %s/idle-report ./scripts/idle-report)", err, dir)
	}
	return b, nil
}

// contender is a system and how the runs drive it.
type contender struct {
	sys system
	res *sideResult
	// Publishers in the latency and the throughput runs: Tether's app
	// server has several HTTP connections, mosquitto_pub one input.
	latencyWorkers, throughputWorkers int
}

// run sets the stage, measures both systems and compares them. When some
// runs failed it returns the report and errRunsFailed. Whatever happens,
// it stops what it started and removes its files before it returns.
func run(ctx context.Context, c config, progress io.Writer) (*report, error) {
	say := func(format string, a ...any) { fmt.Fprintf(progress, "bench: "+format+"\n", a...) }
	bins, err := findBinaries(c.bin)
	if err != nil {
		return nil, err
	}
	tools, err := findMosquitto()
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "tether-bench.")
	if err != nil {
		return nil, err
	}
	if c.keep {
		defer say("kept %s", work)
	} else {
		defer os.RemoveAll(work)
	}
	for _, dir := range []string{"idle", "tether"} {
		if err := os.Mkdir(filepath.Join(work, dir), 0o700); err != nil {
			return nil, err
		}
	}
	r := &report{Date: today(), Machine: machineInfo(bins, tools, work), Settings: settingsOf(c)}

	say("sizes")
	if r.Sizes, err = measureSizes(ctx, c, bins, tools, work); err != nil {
		return nil, err
	}

	b, err := startBroker(ctx, tools, work)
	if err != nil {
		return nil, err
	}
	defer b.proc.stop()

	say("idle: tetherd (idle-report) and mosquitto_sub side by side, %s after %s to settle", c.idle, c.settle)
	var tetherErr error
	var wg sync.WaitGroup
	wg.Go(func() { r.Tether.Idle, tetherErr = tetherIdle(ctx, c, bins, filepath.Join(work, "idle"), progress) })
	var mqttErr error
	r.Mosquitto.Idle, mqttErr = mqttIdle(ctx, c, tools, b, work)
	wg.Wait()
	if err := errors.Join(tetherErr, mqttErr); err != nil {
		return nil, err
	}

	say("starting Tether and Mosquitto")
	t, err := startTether(ctx, c, bins, filepath.Join(work, "tether"))
	if err != nil {
		return nil, err
	}
	defer t.close()
	m, err := startMQTT(ctx, c, tools, b, work)
	if err != nil {
		return nil, err
	}
	defer m.close()
	contenders := []contender{
		{sys: t, res: &r.Tether, latencyWorkers: 4, throughputWorkers: c.conns},
		{sys: m, res: &r.Mosquitto, latencyWorkers: 1, throughputWorkers: 1},
	}

	runs := 0
	var failed []error
	do := func(ct contender, name string, n int, rate float64, workers int) (runResult, error) {
		runs++
		spec := runSpec{id: "r" + strconv.Itoa(runs), name: name, n: n, rate: rate, window: c.window, workers: workers, payload: c.payload}
		say("%s: %s", ct.sys.name(), name)
		res, err := drive(ctx, ct.sys, spec)
		if err != nil {
			if ctx.Err() == nil && !c.keep {
				err = fmt.Errorf("%w (-keep keeps the logs)", err)
			}
			return res, fmt.Errorf("%s, %s: %w", ct.sys.name(), name, err)
		}
		if res.Error != "" {
			say("%s: %s: FAILED with %d of %d messages received: %s", ct.sys.name(), name, res.Received, n, res.Error)
			failed = append(failed, fmt.Errorf("%s, %s: %s", ct.sys.name(), name, res.Error))
			// What is still on its way comes late, and is acked, before
			// the next run.
			if !sleepUntil(ctx, time.Now().Add(2*time.Second)) {
				return res, ctx.Err()
			}
			return res, nil
		}
		say("%s: %s: %d messages in %.2f s, %.0f/s, latency p50 %.2f ms, p99 %.2f ms, max %.2f ms",
			ct.sys.name(), name, n, res.Seconds, res.PerSecond, res.P50Millis, res.P99Millis, res.MaxMillis)
		return res, nil
	}
	// A warm-up opens the connections and takes the first-message costs
	// out of the figures.
	for _, ct := range contenders {
		if _, err := do(ct, "warm-up", 20, 0, ct.latencyWorkers); err != nil {
			return nil, err
		}
	}
	for _, ct := range contenders {
		if ct.res.Latency, err = do(ct, "latency", c.latencyN, c.rate, ct.latencyWorkers); err != nil {
			return nil, err
		}
	}
	for _, n := range c.counts {
		for _, ct := range contenders {
			p, profiled := ct.sys.(profiler)
			profiled = profiled && c.profile != ""
			if profiled {
				p.toggleProfiles()
			}
			res, err := do(ct, "throughput "+thousands(float64(n)), n, 0, ct.throughputWorkers)
			if profiled {
				p.toggleProfiles()
			}
			if err != nil {
				return nil, err
			}
			ct.res.Throughput = append(ct.res.Throughput, res)
		}
	}
	r.Machine.LoadAfter = loadAverage()
	if c.profile != "" {
		if r.Profiles, err = splitProfiles(c, bins, r.Tether.Throughput); err != nil {
			return nil, err
		}
	}
	r.compare()
	if len(failed) > 0 {
		return r, fmt.Errorf("%w:\n%w", errRunsFailed, errors.Join(failed...))
	}
	return r, nil
}

// profiler is a system whose processes profile themselves on a signal.
type profiler interface {
	// toggleProfiles starts the processes' profiles, or stops and writes
	// them.
	toggleProfiles()
}

// errRunsFailed is returned with a complete report in which some runs
// lost messages or stalled.
var errRunsFailed = errors.New("some runs failed; the report shows them")
