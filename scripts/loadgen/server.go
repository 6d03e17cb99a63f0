// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"context"
	"debug/buildinfo"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"tether/internal/testpki"
	"tether/wire"
)

// serverConfig says how to start tether-server.
type serverConfig struct {
	bin  string // the tether-server binary
	data string // its data directory
	// nats, for a node of a cluster, is the NATS servers' URLs,
	// comma-separated; empty for a server with its own store in data.
	nats     string
	logPath  string
	logLevel string
	// fdCap, when above 0, lowers the server's open-file limit to it.
	fdCap int
	// pki, when set, has the server serve TLS with its certificate.
	pki *testpki.Files
	// heapProfile, for a server built with -tags memprobe, is where its
	// probes write heap profiles, numbered; "" for none.
	heapProfile string
}

// server is a running tether-server. Its stderr goes to a log file and is
// read as it comes: for its address, the garbage collector's trace
// (GODEBUG=gctrace=1) and, after SIGQUIT, the runtime's goroutine dump.
type server struct {
	cmd  *exec.Cmd
	addr string
	tls  bool
	done chan struct{} // closed once it has exited and its output is read

	// probes has the lines of a -tags memprobe build, as they come.
	probes chan memProbe

	mu   sync.Mutex
	gc   gcLine      // the last garbage collection's trace
	gcs  int         // collections so far
	dump *dumpParser // set once SIGQUIT is sent
}

// enrollKey is the fleet enrollment key of the servers the tool runs, and
// maxHeartbeat their cap on the heartbeat a device announces (their
// default).
const (
	enrollKey    = "loadgen-fleet-enrollment-key-0123456789"
	maxHeartbeat = 30 * time.Minute
)

// perAddressLimits reports whether the tether-server at bin has the limits
// on one client address (--sessions-per-ip and the rest): a build from
// before them is measured as it is.
func perAddressLimits(bin string) bool {
	out, _ := exec.Command(bin, "serve", "--help").CombinedOutput()
	return bytes.Contains(out, []byte("-sessions-per-ip"))
}

// listenLine finds the address in tether-server's "listening" log line.
var listenLine = regexp.MustCompile(`msg=listening addr=(\S+)`)

func startServer(ctx context.Context, c serverConfig) (*server, error) {
	logFile, err := os.OpenFile(c.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, err
	}
	args := []string{"serve", "--listen", "127.0.0.1:0", "--data", c.data, "--log-level", c.logLevel, "--enroll-key", enrollKey,
		// No limits but the machine's: every device connects several
		// times a minute while provisioned, and a message goes to each.
		"--reconnect-limit", "0", "--device-rate-limit", "0"}
	// Every device comes from 127.0.0.1, as no fleet does: the limits on
	// one address, in the builds that have them, are off.
	if perAddressLimits(c.bin) {
		args = append(args, "--checkin-limit", "0", "--enroll-failure-limit", "0", "--sessions-per-ip", "0", "--conns-per-ip", "0")
	}
	if c.pki != nil {
		args = append(args, "--tls-cert", c.pki.Cert, "--tls-key", c.pki.Key)
	}
	if c.nats != "" {
		args = append(args, "--nats", c.nats)
	}
	cmd := exec.Command(c.bin, args...)
	cmd.Env = append(os.Environ(),
		"GODEBUG="+strings.TrimPrefix(os.Getenv("GODEBUG")+",gctrace=1", ","),
		// SIGQUIT then dumps every goroutine.
		"GOTRACEBACK=all")
	if c.heapProfile != "" {
		cmd.Env = append(cmd.Env, "TETHER_HEAPPROFILE="+c.heapProfile)
	}
	cmd.Stdout = logFile
	// Its own process group keeps a Ctrl-C at the terminal from reaching
	// it before the tool stops it in order; Pdeathsig ends it should the
	// tool be killed outright.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start tether-server: %w", err)
	}
	s := &server{cmd: cmd, tls: c.pki != nil, done: make(chan struct{}), probes: make(chan memProbe, 1)}
	addrs := make(chan string, 1)
	go func() {
		defer close(s.done)
		defer logFile.Close()
		s.readOutput(stderr, logFile, addrs)
		cmd.Wait()
	}()
	select {
	case s.addr = <-addrs:
	case <-s.done:
		return nil, fmt.Errorf("tether-server exited before it listened (log: %s)", c.logPath)
	case <-time.After(30 * time.Second):
		s.kill()
		return nil, errors.New("tether-server did not listen within 30 s")
	case <-ctx.Done():
		s.kill()
		return nil, ctx.Err()
	}
	if c.fdCap > 0 {
		lim := unix.Rlimit{Cur: uint64(c.fdCap), Max: uint64(c.fdCap)}
		if err := unix.Prlimit(s.pid(), unix.RLIMIT_NOFILE, &lim, nil); err != nil {
			s.kill()
			return nil, fmt.Errorf("cap the server's open files at %d: %w", c.fdCap, err)
		}
	}
	return s, nil
}

func (s *server) readOutput(r io.Reader, log io.Writer, addrs chan<- string) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		fmt.Fprintln(log, line)
		if m := listenLine.FindStringSubmatch(line); m != nil {
			select {
			case addrs <- m[1]:
			default:
			}
		}
		if p, ok := parseMemProbe(line); ok {
			select {
			case s.probes <- p:
			default: // nobody asked for it
			}
		}
		s.mu.Lock()
		if g, ok := parseGCLine(line); ok {
			g.at = time.Now()
			s.gc = g
			s.gcs++
		}
		if s.dump != nil {
			s.dump.line(line)
		}
		s.mu.Unlock()
	}
	io.Copy(log, r) // a line too long for the scanner
}

func (s *server) pid() int { return s.cmd.Process.Pid }

// url is the device endpoint; base the app-server API's root.
func (s *server) url() string {
	if s.tls {
		return "wss://" + s.addr + wire.Path
	}
	return "ws://" + s.addr + wire.Path
}

func (s *server) base() string {
	if s.tls {
		return "https://" + s.addr
	}
	return "http://" + s.addr
}

func (s *server) stats() (procStats, error) { return readProcStats(s.pid()) }

// lastGC is the trace of the last garbage collection, or nil before the
// first.
func (s *server) lastGC() *gcReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gcs == 0 {
		return nil
	}
	return &gcReport{gcLine: s.gc, SecondsBefore: time.Since(s.gc.at).Seconds(), Collections: s.gcs}
}

func (s *server) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// stop asks the server to shut down (SIGTERM), kills it if it has not
// within a minute (it says goodbye to every session first), and waits.
func (s *server) stop() {
	if s.exited() {
		return
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(time.Minute):
		s.kill()
	}
}

func (s *server) kill() {
	s.cmd.Process.Kill()
	<-s.done
}

// dumpGoroutines ends the server with SIGQUIT, on which the Go runtime
// writes every goroutine's stack, and counts them. It is the one way to
// count a running server's goroutines without adding an endpoint to it.
func (s *server) dumpGoroutines(wait time.Duration) (goroutines, error) {
	p := &dumpParser{groups: map[string]int{}}
	s.mu.Lock()
	s.dump = p
	s.mu.Unlock()
	s.cmd.Process.Signal(syscall.SIGQUIT)
	select {
	case <-s.done:
	case <-time.After(wait):
		s.kill()
		return goroutines{}, fmt.Errorf("tether-server did not exit within %v of SIGQUIT", wait)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return p.result(), nil
}

// memprobe has a server built with -tags memprobe collect garbage and
// report what its runtime holds (cmd/tether-server/memprobe.go). Any other
// build would die of the signal: the caller checks the build first.
func (s *server) memprobe(wait time.Duration) (*memProbe, error) {
	s.cmd.Process.Signal(syscall.SIGUSR1)
	select {
	case p := <-s.probes:
		return &p, nil
	case <-s.done:
		return nil, errors.New("tether-server exited on SIGUSR1: not a -tags memprobe build")
	case <-time.After(wait):
		return nil, fmt.Errorf("tether-server did not answer SIGUSR1 within %v", wait)
	}
}

// memProbe is the line a -tags memprobe server writes on SIGUSR1, after
// a forced collection; memory in bytes:
//
//	memprobe n=2 live=118489304 stacks=82608128 free=78464616 other=14209651 goroutines=20083
//
// The runtime may be writing that collection's trace line meanwhile, so
// the probe's may come in the middle of it.
type memProbe struct {
	// Live is the heap's objects; Stacks the memory of goroutine stacks
	// (the GC trace counts only the part in use); Free the heap the
	// process holds without objects in it; Other the runtime's own.
	Live       uint64 `json:"live"`
	Stacks     uint64 `json:"stacks"`
	Free       uint64 `json:"free"`
	Other      uint64 `json:"other"`
	Goroutines int    `json:"goroutines"`
}

var memProbePattern = regexp.MustCompile(`memprobe n=\d+ live=(\d+) stacks=(\d+) free=(\d+) other=(\d+) goroutines=(\d+)$`)

func parseMemProbe(line string) (memProbe, bool) {
	m := memProbePattern.FindStringSubmatch(line)
	if m == nil {
		return memProbe{}, false
	}
	n := func(i int) uint64 { v, _ := strconv.ParseUint(m[i], 10, 64); return v }
	return memProbe{Live: n(1), Stacks: n(2), Free: n(3), Other: n(4), Goroutines: int(n(5))}, true
}

// builtWithTag says whether the Go binary at path was built with -tags
// including tag.
func builtWithTag(path, tag string) (bool, error) {
	info, err := buildinfo.ReadFile(path)
	if err != nil {
		return false, fmt.Errorf("read the build of %s: %w", path, err)
	}
	for _, s := range info.Settings {
		if s.Key == "-tags" && slices.Contains(strings.Split(s.Value, ","), tag) {
			return true, nil
		}
	}
	return false, nil
}

// gcLine is one line of GODEBUG=gctrace=1:
//
//	gc 12 @3.4s 2%: 0.01+1.2+0.003 ms clock, ..., 45->46->23 MB, 47 MB goal, 1 MB stacks, 0 MB globals, 2 P
type gcLine struct {
	// LiveMB is the heap marked live by the collection; GoalMB the heap
	// size at which the next one starts.
	LiveMB int `json:"live_mb"`
	GoalMB int `json:"goal_mb"`
	// StacksMB is the goroutine stack space scanned: the part in use,
	// not what the stacks were given.
	StacksMB  int       `json:"stacks_mb"`
	GlobalsMB int       `json:"globals_mb"`
	at        time.Time // when the tool read it
}

var gcPattern = regexp.MustCompile(`^gc \d+ @.* (\d+)->(\d+)->(\d+) MB, (\d+) MB goal, (\d+) MB stacks, (\d+) MB globals`)

func parseGCLine(line string) (gcLine, bool) {
	m := gcPattern.FindStringSubmatch(line)
	if m == nil {
		return gcLine{}, false
	}
	n := func(i int) int { v, _ := strconv.Atoi(m[i]); return v }
	return gcLine{LiveMB: n(3), GoalMB: n(4), StacksMB: n(5), GlobalsMB: n(6)}, true
}

// goroutines counts a dump's goroutines, grouped by the outermost function
// of Tether's in each stack (else its top function): where the goroutine
// was started, whatever it is doing at the moment of the dump.
type goroutines struct {
	Total  int          `json:"total"`
	Groups []countGroup `json:"groups"`
	// PerSession counts the goroutines of the groups with one goroutine
	// per live session; the others are the server's own.
	PerSession int `json:"per_session"`
	Own        int `json:"own"`
}

// split counts the goroutines of the groups that have one per session,
// with sessions live when the dump was taken.
func (g *goroutines) split(sessions int) {
	g.PerSession = 0
	if sessions > 0 {
		for _, grp := range g.Groups {
			if grp.Count == sessions {
				g.PerSession++
			}
		}
	}
	g.Own = g.Total - g.PerSession*sessions
}

type countGroup struct {
	Name  string `json:"name"`
	Count int    `json:"count"`
}

// dumpParser reads a goroutine dump line by line:
//
//	goroutine 18 [IO wait, 2 minutes]:
//	internal/poll.runtime_pollWait(0x7f..., 0x72)
//		/usr/lib/go/src/runtime/netpoll.go:351 +0x85
//	...
//	created by net/http.(*Server).Serve in goroutine 1
type dumpParser struct {
	total  int
	groups map[string]int
	in     bool   // inside a goroutine's stack
	top    string // its first function
	key    string // its outermost function of Tether's so far
}

func (p *dumpParser) line(line string) {
	switch {
	case strings.HasPrefix(line, "goroutine ") && strings.HasSuffix(line, ":") && strings.Contains(line, " ["):
		p.finish()
		p.total++
		p.in = true
	case !p.in:
	case line == "":
		p.finish()
	case strings.HasPrefix(line, "\t"), strings.HasPrefix(line, "created by "):
	default:
		fn := line
		if i := strings.LastIndexByte(fn, '('); i > 0 {
			fn = fn[:i]
		}
		fn = strings.TrimSuffix(fn, "-fm") // a method value's wrapper
		if p.top == "" {
			p.top = fn
		}
		if strings.HasPrefix(fn, "tether/") {
			p.key = fn
		}
	}
}

// finish counts the goroutine being read, if any.
func (p *dumpParser) finish() {
	if !p.in {
		return
	}
	key := p.key
	if key == "" {
		key = p.top
	}
	p.groups[key]++
	p.in, p.top, p.key = false, "", ""
}

func (p *dumpParser) result() goroutines {
	p.finish()
	g := goroutines{Total: p.total}
	for name, n := range p.groups {
		g.Groups = append(g.Groups, countGroup{name, n})
	}
	slices.SortFunc(g.Groups, func(a, b countGroup) int {
		if a.Count != b.Count {
			return b.Count - a.Count
		}
		return strings.Compare(a.Name, b.Name)
	})
	return g
}

// newSender is what "tether-server sender add --json" prints.
type newSender struct {
	ID        string `json:"sender_id"`
	ServerKey string `json:"server_key"`
}

// addSender creates the app server that sends the messages in the store
// that store names (--data DIR of a server that is not running, or
// --nats URLS of a cluster).
func addSender(ctx context.Context, bin string, store []string) (newSender, error) {
	var out, errOut bytes.Buffer
	args := append([]string{"sender", "add", "--name", "loadgen", "--json"}, store...)
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		return newSender{}, fmt.Errorf("tether-server sender add: %w: %s", err, bytes.TrimSpace(errOut.Bytes()))
	}
	var snd newSender
	if err := json.Unmarshal(out.Bytes(), &snd); err != nil || snd.ID == "" || snd.ServerKey == "" {
		return newSender{}, fmt.Errorf("tether-server sender add: unexpected output (%v)", err)
	}
	return snd, nil
}
