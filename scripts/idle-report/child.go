// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// child is a process the tool started: its log goes to a file, and each
// line it writes to stderr is also handed to a callback as it comes.
type child struct {
	name    string
	cmd     *exec.Cmd
	logPath string
	done    chan struct{} // closed once it has exited
}

func startChild(name, path string, args, env []string, logPath string, onLine func(string)) (*child, error) {
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), env...)
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
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	c := &child{name: name, cmd: cmd, logPath: logPath, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		defer logFile.Close()
		sc := bufio.NewScanner(stderr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		for sc.Scan() {
			fmt.Fprintln(logFile, sc.Text())
			if onLine != nil {
				onLine(sc.Text())
			}
		}
		io.Copy(logFile, stderr) // a line too long for the scanner
		cmd.Wait()
	}()
	return c, nil
}

func (c *child) pid() int { return c.cmd.Process.Pid }

// stop asks the process to stop (SIGTERM), kills it if it has not within
// 10 s, and waits for it.
func (c *child) stop() {
	select {
	case <-c.done:
		return
	default:
	}
	c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		c.cmd.Process.Kill()
		<-c.done
	}
}

// tail prints the end of the process's log, for a run that failed.
func (c *child) tail(w io.Writer) {
	b, err := os.ReadFile(c.logPath)
	if err != nil || len(b) == 0 {
		return
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	lines = lines[max(len(lines)-20, 0):]
	fmt.Fprintf(w, "--- last lines of %s's log\n%s\n", c.name, strings.Join(lines, "\n"))
}

// agentStatus is what the tool reads of the agent's status
// (docs/ipc.md).
type agentStatus struct {
	Connected       bool   `json:"connected"`
	PowerMode       string `json:"power_mode"`
	Heartbeat       int    `json:"heartbeat"`
	Network         string `json:"network"`
	HeartbeatHeld   int    `json:"heartbeat_held"`
	HeartbeatFailed int    `json:"heartbeat_failed"`
	Reconnects      uint64 `json:"reconnects"`
	Heartbeats      uint64 `json:"heartbeats"`
}

// askStatus asks the agent's socket door for its status, n times in a
// row over one connection, and returns the last answer. Many requests are
// the warm-up: each allocates a little in the agent.
func askStatus(ctx context.Context, sock string, n int) (agentStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	var d net.Dialer
	c, err := d.DialContext(ctx, "unix", sock)
	if err != nil {
		return agentStatus{}, fmt.Errorf("status: %w", err)
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	r := bufio.NewReader(c)
	var st agentStatus
	for i := range n {
		if _, err := fmt.Fprintf(c, "{\"id\":%d,\"op\":\"status\"}\n", i); err != nil {
			return agentStatus{}, fmt.Errorf("status: %w", err)
		}
		line, err := r.ReadBytes('\n')
		if err != nil {
			return agentStatus{}, fmt.Errorf("status: %w", err)
		}
		var resp struct {
			Status *agentStatus     `json:"status"`
			Error  *json.RawMessage `json:"error"`
		}
		if err := json.Unmarshal(line, &resp); err != nil {
			return agentStatus{}, fmt.Errorf("status: %w", err)
		}
		if resp.Status == nil {
			return agentStatus{}, fmt.Errorf("status: the agent answered %s", bytes.TrimSpace(line))
		}
		st = *resp.Status
	}
	return st, nil
}

// gcLog records when the agent's garbage collections end, from the lines
// GODEBUG=gctrace=1 writes to its stderr: "gc 7 @360.1s 0%: ...", after a
// line "GC forced" when the runtime forced it.
type gcLog struct {
	mu     sync.Mutex
	events []event
	forced bool // the runtime said "GC forced" before the next gc line
}

func (g *gcLog) line(s string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if s == "GC forced" {
		g.forced = true
		return
	}
	if !strings.HasPrefix(s, "gc ") || !strings.Contains(s, " @") {
		return
	}
	kind := "gc"
	if g.forced || strings.HasSuffix(s, "(forced)") {
		kind = "forced gc"
	}
	g.forced = false
	g.events = append(g.events, event{time.Now(), kind})
}

func (g *gcLog) count() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return len(g.events)
}

func (g *gcLog) between(a, b time.Time) []event {
	g.mu.Lock()
	defer g.mu.Unlock()
	var out []event
	for _, e := range g.events {
		if !e.at.Before(a) && !e.at.After(b) {
			out = append(out, e)
		}
	}
	return out
}

// writeCertificate writes a throwaway self-signed certificate for
// 127.0.0.1 and its key into dir, for -tls: the server serves it and the
// agent trusts it as its CA.
func writeCertificate(dir string) (certFile, keyFile string, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return "", "", err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "idle-report"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return "", "", err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return "", "", err
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		return "", "", err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), 0o600); err != nil {
		return "", "", err
	}
	return certFile, keyFile, nil
}
