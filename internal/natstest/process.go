// SPDX-License-Identifier: Apache-2.0

package natstest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"tether/internal/faultproxy"
)

// Build builds nats-server from the module this one requires into dir and
// returns its path.
func Build(dir string) (string, error) {
	path := filepath.Join(dir, "nats-server")
	cmd := exec.Command("go", "build", "-o", path, "github.com/nats-io/nats-server/v2")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build nats-server: %w", err)
	}
	return path, nil
}

// ProcConfig shapes a cluster of processes.
type ProcConfig struct {
	// Bin is the nats-server binary (Build).
	Bin string
	// Servers is the number of servers; default 3.
	Servers int
	// Dir holds each server's configuration, store and log.
	Dir string
	// SyncAlways makes each server fsync every write.
	SyncAlways bool
}

// Processes is a cluster of nats-server processes whose routes go through
// fault proxies, one for each direction of each pair of servers, and do not
// advertise themselves: a blackholed server is cut off from the others,
// and the others cannot route around the proxies.
type Processes struct {
	cfg     ProcConfig
	client  []int // client ports
	cluster []int // cluster ports
	proxies map[[2]int]*faultproxy.Proxy
	stop    context.CancelFunc
	wg      sync.WaitGroup

	mu    sync.Mutex
	procs []*running // nil while a server is down
}

// running is a server process and the end of its wait.
type running struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// StartProcesses starts a cluster of processes and waits until JetStream
// answers. It stops when the test ends.
func StartProcesses(t testing.TB, cfg ProcConfig) *Processes {
	t.Helper()
	p, err := StartProcessCluster(cfg)
	if p != nil {
		t.Cleanup(p.Shutdown)
	}
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// StartProcessCluster starts a cluster of processes and waits until
// JetStream answers. The caller shuts it down, also after an error.
func StartProcessCluster(cfg ProcConfig) (*Processes, error) {
	if cfg.Servers == 0 {
		cfg.Servers = 3
	}
	ports, err := FreePorts(2 * cfg.Servers)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &Processes{cfg: cfg, client: ports[:cfg.Servers], cluster: ports[cfg.Servers:], proxies: map[[2]int]*faultproxy.Proxy{},
		stop: cancel, procs: make([]*running, cfg.Servers)}
	for i := range cfg.Servers {
		for j := range cfg.Servers {
			if i == j {
				continue
			}
			px, err := faultproxy.New(faultproxy.Config{Upstream: fmt.Sprintf("127.0.0.1:%d", p.cluster[j])})
			if err != nil {
				return p, err
			}
			p.proxies[[2]int{i, j}] = px
			p.wg.Go(func() { px.Serve(ctx) })
		}
	}
	for i := range cfg.Servers {
		if err := p.Start(i); err != nil {
			return p, err
		}
	}
	return p, p.WaitReady(time.Minute)
}

// config is server i's configuration file.
func (p *Processes) config(i int) (string, error) {
	var routes []string
	for j := range p.cfg.Servers {
		if j != i {
			routes = append(routes, "nats://"+p.proxies[[2]int{i, j}].Addr())
		}
	}
	sync := ""
	if p.cfg.SyncAlways {
		sync = "sync_interval: always"
	}
	dir := filepath.Join(p.cfg.Dir, fmt.Sprintf("n%d", i+1))
	text := fmt.Sprintf(`server_name: n%d
listen: 127.0.0.1:%d
jetstream {
  store_dir: %q
  %s
  limits { batch { max_inflight_per_stream: %d, max_inflight_total: %d } }
}
cluster {
  name: tether-test
  listen: 127.0.0.1:%d
  no_advertise: true
  routes: [%s]
}
`, i+1, p.client[i], dir, sync, BatchInflight, 4*BatchInflight, p.cluster[i], strings.Join(routes, ", "))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	path := filepath.Join(p.cfg.Dir, fmt.Sprintf("n%d.conf", i+1))
	return path, os.WriteFile(path, []byte(text), 0o600)
}

// Start starts server i (again).
func (p *Processes) Start(i int) error {
	conf, err := p.config(i)
	if err != nil {
		return fmt.Errorf("nats server %d: %w", i+1, err)
	}
	log, err := os.OpenFile(filepath.Join(p.cfg.Dir, fmt.Sprintf("n%d.log", i+1)), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("nats server %d: %w", i+1, err)
	}
	cmd := exec.Command(p.cfg.Bin, "-c", conf)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("start nats server %d: %w", i+1, err)
	}
	r := &running{cmd: cmd, done: make(chan struct{})}
	p.mu.Lock()
	p.procs[i] = r
	p.mu.Unlock()
	p.wg.Go(func() {
		cmd.Wait()
		log.Close()
		close(r.done)
	})
	return nil
}

// Kill kills server i with SIGKILL and waits for it to be gone.
func (p *Processes) Kill(i int) {
	p.mu.Lock()
	r := p.procs[i]
	p.procs[i] = nil
	p.mu.Unlock()
	if r == nil {
		return
	}
	r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
}

// Up reports whether server i runs.
func (p *Processes) Up(i int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.procs[i] != nil
}

// Blackhole cuts server i off from the others (on true) or lets it back
// (on false): its routes carry nothing, and its clients see nothing amiss.
func (p *Processes) Blackhole(i int, on bool) error {
	for pair, px := range p.proxies {
		if pair[0] == i || pair[1] == i {
			if err := px.Set(faultproxy.Faults{Blackhole: on}); err != nil {
				return err
			}
		}
	}
	return nil
}

// WaitReady waits until JetStream answers through every server that runs.
func (p *Processes) WaitReady(timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for i := range p.cfg.Servers {
		if !p.Up(i) {
			continue
		}
		for {
			err := jetStreamAnswers(p.ClientURL(i))
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("nats server %d: JetStream does not answer: %w", i+1, err)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	return nil
}

func jetStreamAnswers(url string) error {
	nc, err := nats.Connect(url, nats.Timeout(time.Second))
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := js.AccountInfo(ctx); err != nil && !errors.Is(err, jetstream.ErrJetStreamNotEnabledForAccount) {
		return err
	}
	return nil
}

// ClientURL is server i's client URL.
func (p *Processes) ClientURL(i int) string { return fmt.Sprintf("nats://127.0.0.1:%d", p.client[i]) }

// URL is every client URL, comma-separated, as --nats takes them.
func (p *Processes) URL() string {
	var urls []string
	for i := range p.cfg.Servers {
		urls = append(urls, p.ClientURL(i))
	}
	return strings.Join(urls, ",")
}

// Shutdown kills every server and stops the proxies.
func (p *Processes) Shutdown() {
	for i := range p.cfg.Servers {
		p.Kill(i)
	}
	p.stop()
	for _, px := range p.proxies {
		px.Close()
	}
	p.wg.Wait()
}
