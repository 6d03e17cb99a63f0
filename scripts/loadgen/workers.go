// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// workerProc is a worker process: commands go to its stdin, answers come
// from its stdout, and its stderr goes to a log file.
type workerProc struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	enc     *json.Encoder
	logPath string
	// first and count are the fleet indexes of its devices.
	first, count int

	answers chan answer
	quit    chan struct{} // closed by stop: nobody reads answers any more
	done    chan struct{} // closed once it has exited
}

func startWorker(exe string, j job, logPath string) (*workerProc, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), workerEnv+"=1")
	cmd.Stderr = logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		logFile.Close()
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start worker: %w", err)
	}
	p := &workerProc{
		cmd: cmd, stdin: stdin, enc: json.NewEncoder(stdin), logPath: logPath,
		first: j.First, count: len(j.Devices),
		answers: make(chan answer), quit: make(chan struct{}), done: make(chan struct{}),
	}
	go func() {
		defer close(p.done)
		defer logFile.Close()
		dec := json.NewDecoder(stdout)
		for {
			var a answer
			if dec.Decode(&a) != nil {
				break
			}
			select {
			case p.answers <- a:
			case <-p.quit:
			}
		}
		cmd.Wait()
	}()
	if err := p.enc.Encode(j); err != nil {
		p.stop()
		return nil, fmt.Errorf("send the job to a worker: %w", err)
	}
	return p, nil
}

// do sends c and waits for the answer.
func (p *workerProc) do(ctx context.Context, c command) (answer, error) {
	if err := p.enc.Encode(c); err != nil {
		return answer{}, fmt.Errorf("worker %d: send %s: %w", p.first, c.Op, err)
	}
	select {
	case a := <-p.answers:
		if a.Err != "" {
			return a, fmt.Errorf("worker %d: %s: %s", p.first, c.Op, a.Err)
		}
		return a, nil
	case <-p.done:
		return answer{}, fmt.Errorf("worker %d exited during %s: %s", p.first, c.Op, tail(p.logPath))
	case <-ctx.Done():
		return answer{}, ctx.Err()
	}
}

// stop closes its input, on which it closes its sessions and exits, and
// kills it if it has not within 30 s.
func (p *workerProc) stop() {
	p.stdin.Close()
	close(p.quit)
	select {
	case <-p.done:
	case <-time.After(30 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

// crew is the worker processes of one step, which share its devices.
type crew []*workerProc

// startCrew starts n workers for the fleet's devices [first, first+len(devs)),
// in contiguous shares.
func startCrew(exe string, base job, devs []device, first, n int, logDir, name string) (crew, error) {
	n = max(min(n, len(devs)), 1)
	var c crew
	for i := range n {
		lo, hi := i*len(devs)/n, (i+1)*len(devs)/n
		j := base
		j.First = first + lo
		j.Devices = copyDevices(devs[lo:hi])
		p, err := startWorker(exe, j, filepath.Join(logDir, fmt.Sprintf("%s-worker%d.log", name, i)))
		if err != nil {
			c.stop()
			return nil, err
		}
		c = append(c, p)
	}
	return c, nil
}

// copyDevices copies devs, so that a worker's job never aliases the fleet.
func copyDevices(devs []device) []device { return append([]device(nil), devs...) }

// all sends each worker the command mk makes for it, at once, and waits
// for every answer.
func (c crew) all(ctx context.Context, mk func(i int) command) ([]answer, error) {
	answers := make([]answer, len(c))
	errs := make([]error, len(c))
	var wg sync.WaitGroup
	for i, p := range c {
		wg.Go(func() { answers[i], errs[i] = p.do(ctx, mk(i)) })
	}
	wg.Wait()
	return answers, errors.Join(errs...)
}

func (c crew) stop() {
	var wg sync.WaitGroup
	for _, p := range c {
		wg.Go(p.stop)
	}
	wg.Wait()
}

// rssKiB sums the workers' RSS as they last reported it.
func rssKiB(answers []answer) uint64 {
	var n uint64
	for _, a := range answers {
		n += a.RSSKiB
	}
	return n
}

// tail is the end of a log, for an error message.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil || len(b) == 0 {
		return "no output"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(len(lines)-5, 0):], " | ")
}
