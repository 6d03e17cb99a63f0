// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"tether/internal/procfs"
)

// idleResult is what an idle subscriber cost over the measured period.
type idleResult struct {
	Seconds          float64 `json:"seconds"`
	Wakeups          uint64  `json:"wakeups"` // context switches, all threads
	WakeupsPerMinute float64 `json:"wakeups_per_minute"`
	Heartbeats       uint64  `json:"heartbeats"`
	// BytesPerHeartbeat is every byte on the link, both ways, over the
	// heartbeats, as idle-report counts it.
	BytesPerHeartbeat float64  `json:"bytes_per_heartbeat"`
	RSSKiB            uint64   `json:"rss_kib"`
	Warnings          []string `json:"warnings,omitempty"`
}

// tetherIdle runs idle-report, which measures an idle tetherd on its own
// server through its own counting proxy, and reads its JSON report.
func tetherIdle(ctx context.Context, c config, bins binaries, work string, progress io.Writer) (idleResult, error) {
	args := []string{"-bin", bins.dir, "-json", "-duration", c.idle.String(), "-settle", c.settle.String(),
		"-heartbeat", c.heartbeat.String()}
	if c.quick {
		args = append(args, "-warm=false") // a collection could take longer than the whole quick run
	}
	p, err := start(procSpec{
		name: "idle-report", path: bins.idleReport, args: args, stdout: true,
		logPath: filepath.Join(work, "idle-report.log"),
		onLine:  func(line string) { fmt.Fprintln(progress, "bench:", line) },
	})
	if err != nil {
		return idleResult{}, err
	}
	stopped := context.AfterFunc(ctx, p.stop)
	defer stopped()
	// idle-report's JSON names the same figures the same way.
	var r idleResult
	decodeErr := json.NewDecoder(bufio.NewReader(p.stdout)).Decode(&r)
	<-p.done
	p.stdout.Close()
	if ctx.Err() != nil {
		return idleResult{}, ctx.Err()
	}
	if code := p.cmd.ProcessState.ExitCode(); code != 0 || decodeErr != nil {
		return idleResult{}, fmt.Errorf("idle-report (exit status %d): %v\n%s", code, decodeErr, p.tail())
	}
	return r, nil
}

// mqttIdle measures an idle mosquitto_sub alike: connected with a
// persistent session at QoS 1 through a counting proxy, keepalive set to
// the heartbeat, it settles, then its context switches and its link are
// read over the period, and its VmRSS at the end.
func mqttIdle(ctx context.Context, c config, tools mosquittoTools, b *broker, work string) (idleResult, error) {
	fail := newFailure()
	sub, err := startSubscriber(ctx, tools, b, work, "bench-idle", "bench/idle", c.heartbeat, nil, fail.set)
	if err != nil {
		return idleResult{}, err
	}
	defer sub.close()
	pause := func(d time.Duration) error {
		t := time.NewTimer(d)
		defer t.Stop()
		select {
		case <-t.C:
			return nil
		case <-sub.proc.done:
			return fmt.Errorf("mosquitto_sub exited while idle\n%s", sub.proc.tail())
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	if err := pause(c.settle); err != nil {
		return idleResult{}, err
	}
	first, err := procfs.Read(sub.proc.pid())
	if err != nil {
		return idleResult{}, err
	}
	wireFirst := sub.proxy.snapshot()
	if err := pause(c.idle); err != nil {
		return idleResult{}, err
	}
	last, err := procfs.Read(sub.proc.pid())
	if err != nil {
		return idleResult{}, err
	}
	w := sub.proxy.snapshot().sub(wireFirst)
	secs := last.At.Sub(first.At).Seconds()
	r := idleResult{
		Seconds:          secs,
		Wakeups:          last.Total() - first.Total(),
		WakeupsPerMinute: float64(last.Total()-first.Total()) * 60 / secs,
		Heartbeats:       w.Heartbeats,
		RSSKiB:           last.RSSKiB,
	}
	if w.Heartbeats > 0 {
		r.BytesPerHeartbeat = float64(w.UpBytes+w.DownBytes) / float64(w.Heartbeats)
	}
	if w.Connections > 0 {
		r.Warnings = append(r.Warnings, "mosquitto_sub reconnected while idle")
	}
	return r, nil
}
