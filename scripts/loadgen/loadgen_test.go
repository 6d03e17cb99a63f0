// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tether/internal/natstest"
)

// binDir holds the tether-server and the nats-server built once by
// TestMain.
var binDir string

func TestMain(m *testing.M) {
	// The tool starts its own binary again as its workers: here, the test
	// binary.
	if isWorker() {
		os.Exit(workerMain(os.Stdin, os.Stdout, os.Stderr))
	}
	dir, err := os.MkdirTemp("", "tether-loadgen-bin")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// With the memprobe probe built in, for -memprobe: without it, the
	// server is the same.
	build := exec.Command("go", "build", "-tags", "memprobe", "-o", dir+"/", "tether/cmd/tether-server")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build tether-server:", err)
		os.Exit(1)
	}
	if _, err := natstest.Build(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// tinyArgs run the real tool at a tiny scale: a server capped at
// serverFDs open files, so that the max phase meets the limit after a few
// dozen sessions, and a heartbeat of a second, so that the devices ping.
func tinyArgs(phases string) []string {
	return []string{
		"-bin", binDir, "-phases", phases, "-conns", "200", "-workers", "2",
		"-server-fds", fmt.Sprint(serverFDs), "-overshoot", "6", "-heartbeat", "1s",
		"-handshake-timeout", "2s", "-settle", "1500ms", "-dial-concurrency", "8",
		"-deliver-wait", "1m", "-timeout", "3m",
	}
}

const serverFDs = 60

func parse(t *testing.T, args []string) config {
	t.Helper()
	var stderr bytes.Buffer
	c, err := parseFlags(args, &stderr)
	if err != nil {
		t.Fatalf("parse %q: %v: %s", args, err, stderr.String())
	}
	return c
}

// isolate gives the run a temporary directory of its own, to check that
// it leaves nothing there.
func isolate(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	t.Setenv("TMPDIR", dir)
	return dir
}

// checkCleanedUp fails unless the run removed its files and left no
// process of its own running.
func checkCleanedUp(t *testing.T, tmp string) {
	t.Helper()
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("the run left %d entries in its temporary directory, first %s", len(left), left[0].Name())
	}
	if kids := children(t); len(kids) > 0 {
		t.Errorf("the run left processes running: %v", kids)
	}
}

// children lists the test's child processes, from every thread's
// /proc/self/task/TID/children.
func children(t *testing.T) []string {
	t.Helper()
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		t.Skipf("no /proc: %v", err)
	}
	var out []string
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "children"))
		if err != nil {
			continue
		}
		out = append(out, strings.Fields(string(b))...)
	}
	return out
}

func TestRunEndToEnd(t *testing.T) {
	tmp := isolate(t)
	c := parse(t, tinyArgs("20,max"))
	var progress bytes.Buffer
	rep, err := run(context.Background(), c, &progress)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, progress.String())
	}
	checkCleanedUp(t, tmp)
	if len(rep.Problems) > 0 {
		t.Fatalf("problems: %q", rep.Problems)
	}
	if len(rep.Phases) != 2 {
		t.Fatalf("%d phases reported, want 2", len(rep.Phases))
	}
	fixed, most := rep.Phases[0], rep.Phases[1]
	budget := rep.Machine.ServerFDLimit - rep.Machine.ServerFDs

	// Provisioning checked in and registered every device the largest
	// phase needed, once.
	p := rep.Provision
	if p == nil {
		t.Fatal("no provisioning reported")
	}
	if want := budget + 6; p.CheckIn.Done != want || p.Register.Done != want || p.CheckIn.Failed+p.Register.Failed != 0 {
		t.Errorf("provisioned %d check-ins and %d registrations (%d+%d failed), want %d each",
			p.CheckIn.Done, p.Register.Done, p.CheckIn.Failed, p.Register.Failed, want)
	}

	if rep.Scheme != "ws" || fixed.TLS != "" {
		t.Errorf("a run without -tls went over %s:// (TLS %q)", rep.Scheme, fixed.TLS)
	}
	t.Run("fixed phase", func(t *testing.T) {
		checkPhase(t, fixed, 20)
		if fixed.Held != 20 || fixed.Connect.Failed != 0 || fixed.Dropped != 0 {
			t.Errorf("held %d of 20 (%d failed, %d dropped), want all", fixed.Held, fixed.Connect.Failed, fixed.Dropped)
		}
	})
	t.Run("max phase", func(t *testing.T) {
		checkPhase(t, most, budget+6)
		if most.Held >= most.Devices || most.Held < budget-6 {
			t.Errorf("held %d of %d sessions with %d descriptors free: the limit was not found", most.Held, most.Devices, budget)
		}
		if !strings.Contains(most.StoppedBy, "open-file limit") {
			t.Errorf("stopped by %q, want the open-file limit", most.StoppedBy)
		}
		if most.Dropped < 1 {
			t.Errorf("no session closed for the sender with the server at its limit")
		}
	})

	for _, asJSON := range []bool{false, true} {
		var out bytes.Buffer
		if err := rep.write(&out, asJSON); err != nil {
			t.Fatalf("write report (json %v): %v", asJSON, err)
		}
		if asJSON {
			var back report
			if err := json.Unmarshal(out.Bytes(), &back); err != nil {
				t.Fatalf("the JSON report does not decode: %v", err)
			}
			if back.Phases[1].Delivery.Delivered != most.Delivery.Delivered {
				t.Errorf("the JSON report says %d delivered, want %d", back.Phases[1].Delivery.Delivered, most.Delivery.Delivered)
			}
		} else if !strings.Contains(out.String(), "every message accounted for") {
			t.Errorf("the text report does not say every message was accounted for:\n%s", out.String())
		}
	}
}

// TestRunTLS runs a short phase over wss://: the server serves the run's
// test certificate, and the devices and the sender trust its CA. Its
// server reports its memory, as -memprobe asks.
func TestRunTLS(t *testing.T) {
	tmp := isolate(t)
	rep, err := run(context.Background(), parse(t, append(tinyArgs("10"), "-tls", "-memprobe")), io.Discard)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	checkCleanedUp(t, tmp)
	if len(rep.Problems) > 0 {
		t.Fatalf("problems: %q", rep.Problems)
	}
	if rep.Scheme != "wss" || len(rep.Phases) != 1 {
		t.Fatalf("%d phases over %s://, want 1 over wss://", len(rep.Phases), rep.Scheme)
	}
	ph := rep.Phases[0]
	checkPhase(t, ph, 10)
	if !strings.HasPrefix(ph.TLS, "TLS 1.3, ") {
		t.Errorf("the sessions negotiated %q, want TLS 1.3", ph.TLS)
	}
	fresh, held, after := ph.ProbeFresh, ph.ProbeHeld, ph.ProbeAfter
	if fresh == nil || held == nil || after == nil {
		t.Fatalf("memprobe: fresh %v, held %v, after %v; want all three", fresh, held, after)
	}
	// A session has at least its reader goroutine and a connection. (Its
	// stack may come from stack memory that freed goroutines left.)
	if held.Goroutines < fresh.Goroutines+ph.Held || held.Live <= fresh.Live {
		t.Errorf("memprobe: fresh %+v, held %+v for %d sessions", *fresh, *held, ph.Held)
	}
	var out bytes.Buffer
	if err := rep.write(&out, false); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "per session, after a forced GC: live heap ") {
		t.Errorf("the report does not split the memory per session:\n%s", out.String())
	}
}

// TestMemprobeNeedsItsBuild checks that -memprobe refuses a server built
// without the probe, which SIGUSR1 would kill, before it starts any.
func TestMemprobeNeedsItsBuild(t *testing.T) {
	plain := t.TempDir()
	test, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// The test binary stands for a tether-server built without the tag.
	if err := os.Symlink(test, filepath.Join(plain, "tether-server")); err != nil {
		t.Fatal(err)
	}
	_, err = run(context.Background(), parse(t, []string{"-bin", plain, "-memprobe"}), io.Discard)
	if err == nil || !strings.Contains(err.Error(), "not built with -tags memprobe") {
		t.Errorf("run with -memprobe on a plain build: %v", err)
	}
}

func TestParseMemProbe(t *testing.T) {
	want := memProbe{Live: 118489304, Stacks: 82608128, Free: 78464616, Other: 14209651, Goroutines: 20083}
	for _, line := range []string{
		"memprobe n=2 live=118489304 stacks=82608128 free=78464616 other=14209651 goroutines=20083",
		// Written while the runtime wrote the trace of the probe's collection.
		"gc 4 @1.057s 0%: 0.032+0.63+0.003 ms clock, 0.065+0/0.20memprobe n=2 live=118489304 stacks=82608128 free=78464616 other=14209651 goroutines=20083",
	} {
		if got, ok := parseMemProbe(line); !ok || got != want {
			t.Errorf("parseMemProbe(%q) = %+v, %v; want %+v", line, got, ok, want)
		}
	}
	if _, ok := parseMemProbe("memprobe 2: write heap profile: permission denied"); ok {
		t.Error("parseMemProbe took an error line")
	}
}

// checkPhase checks that a phase's counts add up: every session tried
// connected or failed, every device held was messaged or closed, and
// every message sent was acked once by its device.
func checkPhase(t *testing.T, pr phaseReport, devices int) {
	t.Helper()
	if pr.Devices != devices {
		t.Errorf("tried %d sessions, want %d", pr.Devices, devices)
	}
	if pr.Connect.Done+pr.Connect.Failed != pr.Devices || pr.Connect.Done != pr.Held {
		t.Errorf("connect: %d done + %d failed of %d tried, %d held", pr.Connect.Done, pr.Connect.Failed, pr.Devices, pr.Held)
	}
	messaged := pr.Held - pr.Dropped
	s, d := pr.Send, pr.Delivery
	if s.Messages != messaged || s.Accepted != messaged || s.Failed != 0 {
		t.Errorf("send: %d accepted, %d failed of %d, want all %d held", s.Accepted, s.Failed, s.Messages, messaged)
	}
	if d.Expected != messaged || d.Delivered != messaged || d.Missing+d.Duplicates+d.Unexpected+d.Stray+d.Lost != 0 {
		t.Errorf("delivery: %+v, want all %d delivered once", d, messaged)
	}
	if pr.Before.RSSKiB == 0 || pr.AtHold.RSSKiB == 0 || pr.After.HWMKiB < pr.AtHold.RSSKiB {
		t.Errorf("server memory not read: before %+v, held %+v, after %+v", pr.Before, pr.AtHold, pr.After)
	}
	if pr.AtHold.FDs < pr.Before.FDs+pr.Held {
		t.Errorf("the server had %d files open with %d sessions held, %d before", pr.AtHold.FDs, pr.Held, pr.Before.FDs)
	}
	// A session needs at least its reader goroutine: on each node of a
	// cluster, for the sessions it held at the end.
	if len(pr.Nodes) == 0 {
		checkGoroutines(t, "the server", pr.Goroutines, messaged)
	}
	for _, n := range pr.Nodes {
		checkGoroutines(t, fmt.Sprintf("node %d", n.Node), n.Goroutines, n.Delivery.Expected)
	}
}

func checkGoroutines(t *testing.T, who string, g *goroutines, sessions int) {
	t.Helper()
	if g == nil || g.PerSession < 1 || g.Total != g.Own+g.PerSession*sessions {
		t.Errorf("%s: goroutines %+v for %d sessions", who, g, sessions)
	}
}

// TestRunCluster runs the max phase on three nodes, each capped at
// serverFDs open files, on three nats-server processes: they hold more
// sessions than one of them may, every node checks devices in, registers
// them, holds sessions and takes sends, every message is accounted for,
// and every nats-server holds a subscription per session. The
// nats-servers are not restarted before the phase: their leader
// elections would triple the test's time.
func TestRunCluster(t *testing.T) {
	tmp := isolate(t)
	rep, err := run(context.Background(), parse(t, append(tinyArgs("max"), "-cluster", "3", "-batch", "10", "-fresh-nats=false")), io.Discard)
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	checkCleanedUp(t, tmp)
	if len(rep.Problems) > 0 {
		t.Fatalf("problems: %q", rep.Problems)
	}
	if rep.Nodes != 3 || rep.NATSServers != 3 || len(rep.Phases) != 1 {
		t.Fatalf("%d nodes on %d nats-servers, %d phases; want 3 on 3, one phase", rep.Nodes, rep.NATSServers, len(rep.Phases))
	}
	ph := rep.Phases[0]
	budget := rep.Machine.ServerFDLimit - rep.Machine.ServerFDs
	checkPhase(t, ph, 3*budget+6)
	if ph.Held <= budget+6 || ph.Held >= ph.Devices {
		t.Errorf("held %d of %d sessions with %d descriptors free on each node: the nodes' limit was not found", ph.Held, ph.Devices, budget)
	}
	if !strings.Contains(ph.StoppedBy, "the nodes' open-file limits") {
		t.Errorf("stopped by %q, want the nodes' open-file limits", ph.StoppedBy)
	}
	if p := rep.Provision; p == nil || p.CheckIn.Done != ph.Devices || p.Register.Done != ph.Devices {
		t.Errorf("provisioned %+v, want %d check-ins and registrations", p, ph.Devices)
	}
	if len(ph.Nodes) != 3 {
		t.Fatalf("%d nodes reported, want 3", len(ph.Nodes))
	}
	held, delivered := 0, 0
	for _, n := range ph.Nodes {
		held += n.Held
		delivered += n.Delivery.Delivered
		// No sign is asked of the RSS per session: over 50 sessions the
		// collector's returns to the kernel outweigh them.
		if n.Held < budget-6 || n.Send.Accepted == 0 || n.Delivery.Delivered != n.Delivery.Expected {
			t.Errorf("node %d: %d sessions held, %d sends accepted, %d of %d delivered, %.1f KiB per session",
				n.Node, n.Held, n.Send.Accepted, n.Delivery.Delivered, n.Delivery.Expected, n.PerConnKiB)
		}
	}
	if held != ph.Held || delivered != ph.Delivery.Delivered {
		t.Errorf("the nodes held %d and delivered %d, the phase %d and %d", held, delivered, ph.Held, ph.Delivery.Delivered)
	}
	if len(ph.NATS) != 3 {
		t.Fatalf("%d nats-servers reported, want 3", len(ph.NATS))
	}
	for _, n := range ph.NATS {
		// One per session, wherever it is held, give or take what the
		// nodes subscribe to and end meanwhile as they take partitions.
		if d := n.SubsHeld - n.SubsBefore - ph.Held; d < -5 || d > 20 || n.AtHold.RSSKiB == 0 {
			t.Errorf("nats-server %s: subscriptions %d → %d for %d sessions, RSS %d KiB", n.Name, n.SubsBefore, n.SubsHeld, ph.Held, n.AtHold.RSSKiB)
		}
	}
	// Each device has its credentials, its token and the token's reverse
	// record, and a queue record once a message was sent to it.
	if js := ph.JetStream; js == nil || js.Devices != ph.Devices || js.Subjects < uint64(3*js.Devices+ph.Delivery.Delivered) || js.DiskBytes == 0 || ph.StoreBytes != js.DiskBytes {
		t.Errorf("JetStream: %+v; store %d bytes", js, ph.StoreBytes)
	}
	pj := rep.Projection
	if pj == nil || pj.NodeSessions != budget || len(pj.Rows) != 2 || pj.Rows[1].Nodes != ceilDiv(1_000_000, budget) || pj.Rows[1].NATSSubs < 950_000 {
		t.Errorf("projection %+v", pj)
	}
	var out bytes.Buffer
	if err := rep.write(&out, false); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"3 tether-server nodes on 3 nats-servers", "node 3 ", "nats-server n3 ", "JetStream ", "every message accounted for"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the text report lacks %q:\n%s", want, out.String())
		}
	}
}

// TestRunInterrupted cancels a run while its devices connect, as Ctrl-C
// does: it must stop everything it started and remove its files.
func TestRunInterrupted(t *testing.T) {
	tmp := isolate(t)
	c := parse(t, tinyArgs("30"))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rep, err := run(ctx, c, &cancelOn{text: "phase 30: connecting", cancel: cancel})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("run ended with %v, want it canceled", err)
	}
	if rep == nil || rep.Provision == nil {
		t.Errorf("no report of what was done before the interruption")
	}
	checkCleanedUp(t, tmp)
}

// cancelOn is a progress writer that cancels once text is written.
type cancelOn struct {
	mu     sync.Mutex
	text   string
	cancel context.CancelFunc
}

func (w *cancelOn) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if bytes.Contains(p, []byte(w.text)) {
		w.cancel()
	}
	return len(p), nil
}

// TestDataReused runs twice on one -data directory: the second run finds
// its devices in the state file and checks none in.
func TestDataReused(t *testing.T) {
	isolate(t)
	data := filepath.Join(t.TempDir(), "data")
	args := append(tinyArgs("10"), "-data", data, "-goroutines=false")
	first, err := run(context.Background(), parse(t, args), io.Discard)
	if err != nil {
		t.Fatalf("first run: %v", err)
	}
	if first.Provision == nil || first.Provision.CheckIn.Done != 10 {
		t.Fatalf("first run provisioned %+v, want 10 check-ins", first.Provision)
	}
	info, err := os.Stat(filepath.Join(data, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Errorf("state file has mode %v, want 0600: it holds device secrets", info.Mode().Perm())
	}
	second, err := run(context.Background(), parse(t, args), io.Discard)
	if err != nil {
		t.Fatalf("second run: %v", err)
	}
	if second.Provision != nil {
		t.Errorf("second run provisioned again: %+v", second.Provision)
	}
	if len(second.Problems) > 0 || second.Phases[0].Delivery.Delivered != 10 {
		t.Errorf("second run: %d of 10 delivered, problems %q", second.Phases[0].Delivery.Delivered, second.Problems)
	}

	// No secret of the state file reaches a report.
	f, err := loadFleet(filepath.Join(data, "state.json"))
	if err != nil {
		t.Fatal(err)
	}
	secrets := []string{f.Sender.ServerKey}
	for _, d := range f.Devices {
		secrets = append(secrets, d.Secret, d.Token)
	}
	for _, rep := range []*report{first, second} {
		var out bytes.Buffer
		for _, asJSON := range []bool{false, true} {
			if err := rep.write(&out, asJSON); err != nil {
				t.Fatal(err)
			}
		}
		for _, secret := range secrets {
			if secret == "" || strings.Contains(out.String(), secret) {
				t.Fatalf("a report holds a secret of the state file, or the state file lacks one (%d chars)", len(secret))
			}
		}
	}
}

func TestParseFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		ok   bool
	}{
		{nil, true},
		{[]string{"-phases", "10,max,2000"}, true},
		{[]string{"-phases", "0"}, false},
		{[]string{"-phases", "30000"}, false},
		{[]string{"-phases", "30000", "-conns", "30000"}, true},
		{[]string{"-phases", "ten"}, false},
		{[]string{"-phases", strings.Repeat("1,", maxPhases) + "1"}, false},
		{[]string{"-workers", "0"}, false},
		{[]string{"-workers", "251"}, false},
		{[]string{"-cluster", "3", "-phases", "30000", "-conns", "30000"}, true},
		{[]string{"-cluster", "-1"}, false},
		{[]string{"-cluster", "10"}, false},
		{[]string{"-batch", "1001"}, false},
		{[]string{"-heartbeat", "1500ms"}, false},
		{[]string{"-heartbeat", "25h"}, false},
		{[]string{"-payload", "10"}, false},
		{[]string{"-payload", "5000"}, false},
		{[]string{"extra"}, false},
	} {
		_, err := parseFlags(tc.args, io.Discard)
		if (err == nil) != tc.ok {
			t.Errorf("parseFlags(%q) = %v, want ok %v", tc.args, err, tc.ok)
		}
	}
}

func TestPayloadData(t *testing.T) {
	for _, size := range []int{48, 200, 4096} {
		data, err := payloadData("max-ABCDEFGH", size)
		if err != nil {
			t.Fatalf("payload of %d: %v", size, err)
		}
		n := 0
		for k, v := range data {
			n += len(k) + len(v)
		}
		if n != size || data[roundKey] != "max-ABCDEFGH" {
			t.Errorf("payload of %d: %d bytes, round %q", size, n, data[roundKey])
		}
	}
}

func TestParseGCLine(t *testing.T) {
	for _, tc := range []struct {
		line string
		want gcLine
		ok   bool
	}{
		{"gc 12 @3.456s 2%: 0.010+1.2+0.003 ms clock, 0.020+0.5/1.0/0+0.006 ms cpu, 45->46->23 MB, 47 MB goal, 5 MB stacks, 0 MB globals, 2 P",
			gcLine{LiveMB: 23, GoalMB: 47, StacksMB: 5}, true},
		{"gc 3 @0.1s 0%: 0+0+0 ms clock, 0+0/0/0+0 ms cpu, 4->4->1 MB, 4 MB goal, 0 MB stacks, 1 MB globals, 2 P (forced)",
			gcLine{LiveMB: 1, GoalMB: 4, GlobalsMB: 1}, true},
		{`time=2026-01-01T00:00:00Z level=INFO msg="session open"`, gcLine{}, false},
	} {
		got, ok := parseGCLine(tc.line)
		if ok != tc.ok || got != tc.want {
			t.Errorf("parseGCLine(%q) = %+v, %v; want %+v, %v", tc.line, got, ok, tc.want, tc.ok)
		}
	}
}

func TestDumpParser(t *testing.T) {
	dump := `SIGQUIT: quit
PC=0x48cb61 m=0 sigcode=0

goroutine 0 gp=0xbf2760 m=0 mp=0xbf3b20 [idle]:
runtime.futex(0xbf3c60, 0x80)
	runtime/sys_linux_amd64.s:557 +0x21 fp=0x7ffd sp=0x7ffc pc=0x48cb61

goroutine 40 gp=0x1 m=nil [IO wait]:
internal/poll.runtime_pollWait(0x7f, 0x72)
	runtime/netpoll.go:351 +0x85
tether/server.(*session).readLoop(0xc0)
	tether/server/session.go:388 +0x1f
tether/server.(*Server).handleDevice(0xc0, {0x8b, 0xc0}, 0xc0)
	tether/server/session.go:91 +0x6e5
tether/server.(*Server).handleDevice-fm({0x8b?, 0x26?}, 0x26?)
	<autogenerated>:1 +0x2d
net/http.(*conn).serve(0xc0, {0x8b, 0xc0})
	net/http/server.go:2067 +0x690
created by net/http.(*Server).Serve in goroutine 1
	net/http/server.go:3464 +0x485

goroutine 41 gp=0x2 m=nil [select]:
tether/server.(*session).writeLoop(0xc0)
	tether/server/session.go:540 +0x1f
sync.(*WaitGroup).Go.func1()
	sync/waitgroup.go:239 +0x51
created by sync.(*WaitGroup).Go in goroutine 40
	sync/waitgroup.go:237 +0x73

goroutine 42 gp=0x3 m=nil [IO wait]:
internal/poll.runtime_pollWait(0x7f, 0x72)
	runtime/netpoll.go:351 +0x85
tether/server/store.(*Store).Ack(0xc0, {0xc0, 0x10})
	tether/server/store/messages.go:337 +0x170
tether/server.(*Server).handleDevice(0xc0, {0x8b, 0xc0}, 0xc0)
	tether/server/session.go:91 +0x6e5
created by net/http.(*Server).Serve in goroutine 1
	net/http/server.go:3464 +0x485
`
	p := &dumpParser{groups: map[string]int{}}
	for line := range strings.SplitSeq(dump, "\n") {
		p.line(line)
	}
	got := p.result()
	want := goroutines{Total: 4, Groups: []countGroup{
		{"tether/server.(*Server).handleDevice", 2},
		{"runtime.futex", 1},
		{"tether/server.(*session).writeLoop", 1},
	}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("parsed %+v, want %+v", got, want)
	}
	for _, tc := range []struct{ sessions, perSession, own int }{
		{2, 1, 2}, // the two handleDevice goroutines are the sessions'
		{1, 2, 2}, // one session: runtime.futex and writeLoop look like its
		{0, 0, 4},
	} {
		g := got
		g.split(tc.sessions)
		if g.PerSession != tc.perSession || g.Own != tc.own {
			t.Errorf("split(%d) = %d per session, %d own; want %d, %d", tc.sessions, g.PerSession, g.Own, tc.perSession, tc.own)
		}
	}
}

func TestReadProcStats(t *testing.T) {
	st, err := readProcStats(os.Getpid())
	if err != nil || st.RSSKiB == 0 || st.FDs == 0 || st.FDLimit == 0 || st.Threads == 0 {
		t.Errorf("readProcStats(self) = %+v, %v", st, err)
	}
}

func TestAccount(t *testing.T) {
	t0 := time.Unix(1000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	sent := []sentMessage{{"m1", t0}, {"m2", t0}, {"m3", t0}, {"", t0}, {"m5", t0}}
	targets := []int{1, 2, 3, 4, 5}
	for _, tc := range []struct {
		name     string
		receipts []receipt
		lost     []lostSession
		want     deliveryStats
	}{
		{
			name:     "all delivered",
			receipts: []receipt{{1, "m1", at(100)}, {2, "m2", at(200)}, {3, "m3", at(300)}, {5, "m5", at(400)}},
			want:     deliveryStats{Expected: 4, Delivered: 4, Seconds: 0.4, PerSecond: 10, LatencyP50: 0.2, LatencyP99: 0.3, LatencyMax: 0.4},
		},
		{
			name:     "one missing, one twice, one to the wrong device",
			receipts: []receipt{{1, "m1", at(100)}, {1, "m1", at(150)}, {2, "m3", at(200)}, {3, "m3", at(300)}, {5, "m5", at(400)}, {9, "m9", at(500)}},
			lost:     []lostSession{{2, "closed by the server: 4000 replaced"}},
			want: deliveryStats{Expected: 4, Delivered: 3, Missing: 1, MissingDevices: []int{2}, Duplicates: 1, Unexpected: 2,
				Lost: 1, LostReasons: map[string]int{"closed by the server: 4000 replaced": 1},
				Seconds: 0.4, PerSecond: 7.5, LatencyP50: 0.3, LatencyP99: 0.3, LatencyMax: 0.4},
		},
		{
			name: "nothing delivered",
			want: deliveryStats{Expected: 4, Missing: 4, MissingDevices: []int{1, 2, 3, 5}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := account(targets, sent, t0, []answer{{Receipts: tc.receipts, Lost: tc.lost}})
			if math.Abs(got.PerSecond-tc.want.PerSecond) > 1e-9 {
				t.Errorf("%v delivered a second, want %v", got.PerSecond, tc.want.PerSecond)
			}
			got.PerSecond = tc.want.PerSecond
			if fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", tc.want) {
				t.Errorf("account = %+v\nwant      %+v", got, tc.want)
			}
		})
	}
}

func TestDescribe(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{fail("dial", os.ErrDeadlineExceeded), "dial: timeout"},
		{fail("dial", fmt.Errorf("dial tcp 127.0.0.1:80: %w", syscall.ECONNREFUSED)), "dial: connection refused"},
		{fail("dial", fmt.Errorf("dial tcp: %w", syscall.EADDRNOTAVAIL)), "dial: no free local port"},
		{fail("welcome", &refusedError{"goaway (server shutting down)"}), "welcome: refused: goaway (server shutting down)"},
		{fail("welcome", io.ErrUnexpectedEOF), "welcome: connection closed"},
		{errors.New("something else"), "something else"},
	} {
		if got := describe(tc.err); got != tc.want {
			t.Errorf("describe(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}
