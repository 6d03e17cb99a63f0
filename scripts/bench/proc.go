// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// process is a program the tool started. Its stderr goes to a log file,
// line by line, and so does its stdout unless the caller reads it.
type process struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	// stdin and stdout are set when the spec asked for them; the caller
	// closes stdin and reads stdout to its end.
	stdin  io.WriteCloser
	stdout io.ReadCloser
	done   chan struct{} // closed once it has exited and its log is written
}

type procSpec struct {
	name, path string
	args, env  []string
	logPath    string
	stdin      bool
	stdout     bool
	// onLine is handed each line of stderr as it comes.
	onLine func(string)
}

func start(s procSpec) (_ *process, err error) {
	logFile, err := os.OpenFile(s.logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	// The child's ends of the pipes are closed here once it has them;
	// the parent's ends belong to the process value or to the goroutine
	// below.
	var childEnds []*os.File
	defer func() {
		for _, f := range childEnds {
			f.Close()
		}
	}()
	cmd := exec.Command(s.path, s.args...)
	cmd.Env = append(os.Environ(), s.env...)
	// Its own process group keeps a Ctrl-C at the terminal from reaching
	// it before the tool stops it in order; Pdeathsig ends it should the
	// tool be killed outright.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p := &process{name: s.name, cmd: cmd, logPath: s.logPath, done: make(chan struct{})}
	closeAll := func() {
		logFile.Close()
		for _, c := range []io.Closer{p.stdin, p.stdout} {
			if c != nil {
				c.Close()
			}
		}
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	childEnds = append(childEnds, errW)
	cmd.Stderr = errW
	cmd.Stdout = logFile
	if s.stdin {
		r, w, err := os.Pipe()
		if err != nil {
			errR.Close()
			closeAll()
			return nil, err
		}
		childEnds = append(childEnds, r)
		cmd.Stdin, p.stdin = r, w
	}
	if s.stdout {
		r, w, err := os.Pipe()
		if err != nil {
			errR.Close()
			closeAll()
			return nil, err
		}
		childEnds = append(childEnds, w)
		cmd.Stdout, p.stdout = w, r
	}
	if err := cmd.Start(); err != nil {
		errR.Close()
		closeAll()
		return nil, fmt.Errorf("start %s: %w", s.name, err)
	}
	logged := make(chan struct{})
	go func() {
		defer close(logged)
		defer errR.Close()
		sc := bufio.NewScanner(errR)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			fmt.Fprintln(logFile, sc.Text())
			if s.onLine != nil {
				s.onLine(sc.Text())
			}
		}
		io.Copy(logFile, errR) // the rest of a line too long for the scanner
	}()
	go func() {
		defer close(p.done)
		defer logFile.Close()
		cmd.Wait()
		<-logged
	}()
	return p, nil
}

func (p *process) pid() int { return p.cmd.Process.Pid }

// userHz is the unit of the CPU times in /proc/PID/stat: USER_HZ, which
// Linux fixes at 100 for every architecture's user space.
const userHz = 100

// maxTicks bounds a time read, 20 years of CPU, far from overflowing a
// time.Duration.
const maxTicks = 20 * 365 * 24 * 3600 * userHz

// cpuTime is the CPU time the process has used so far, user and system,
// all its threads; zero once it cannot be read.
func (p *process) cpuTime() time.Duration { return readCPU(fmt.Sprintf("/proc/%d/stat", p.pid())) }

// readCPU reads the CPU time in a /proc/PID/stat file; zero when it
// cannot.
func readCPU(statPath string) time.Duration {
	b, err := os.ReadFile(statPath)
	if err != nil {
		return 0
	}
	return statCPU(string(b))
}

// cpuTimes is CPU time used so far: by a system's agent, by its server,
// and by all its processes with the tool's own.
type cpuTimes struct{ agent, server, all time.Duration }

// measureCPU reads the CPU times of a system's agent, its server and
// its other processes; the tool's own time counts in all, as it is the
// publisher, the app and the proxy.
func measureCPU(agent, server *process, others ...*process) cpuTimes {
	t := cpuTimes{agent: agent.cpuTime(), server: server.cpuTime()}
	t.all = t.agent + t.server + readCPU("/proc/self/stat")
	for _, p := range others {
		t.all += p.cpuTime()
	}
	return t
}

func (t cpuTimes) since(before cpuTimes) cpuTimes {
	return cpuTimes{agent: t.agent - before.agent, server: t.server - before.server, all: t.all - before.all}
}

// statCPU reads utime and stime from the text of /proc/PID/stat; zero
// when it is not such a text.
func statCPU(stat string) time.Duration {
	// The command name, in parentheses, may hold spaces and parentheses:
	// the fields counted from 3 (state) start after the last ')'.
	i := strings.LastIndexByte(stat, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(stat[i+1:])
	if len(f) < 13 {
		return 0
	}
	var ticks int64
	for _, s := range f[11:13] { // fields 14 and 15: utime, stime
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n < 0 || n > maxTicks {
			return 0
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / userHz)
}

// exited reports whether the process has ended.
func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop asks the process to end (SIGTERM), kills it when it has not within
// 10 s, and waits for it.
func (p *process) stop() {
	if p.stdin != nil {
		p.stdin.Close()
	}
	if !p.exited() {
		p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			p.cmd.Process.Kill()
			<-p.done
		}
	}
	if p.stdout != nil {
		p.stdout.Close()
	}
}

// tail returns the last lines of the process's log, for an error.
func (p *process) tail() string {
	b, err := os.ReadFile(p.logPath)
	if err != nil || len(b) == 0 {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	lines = lines[max(len(lines)-15, 0):]
	return fmt.Sprintf("--- last lines of %s's log (%s)\n%s\n", p.name, p.logPath, strings.Join(lines, "\n"))
}
