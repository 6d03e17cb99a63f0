// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"tether/internal/natstest"
)

// natsServers is the number of nats-server processes of a -cluster run:
// three, the fewest on which JetStream keeps three replicas (R3), as a
// fleet's cluster would (docs/scaling.md).
const natsServers = 3

// natsCluster is the NATS JetStream cluster that a -cluster run's nodes
// keep their state in, and the tool's own connection to it, which reads
// what the servers hold.
type natsCluster struct {
	procs *natstest.Processes
	dir   string
	pids  []int // of the servers n1, n2, n3
	nc    *nats.Conn
	js    jetstream.JetStream
	// start is each server as it first started, with startDevices
	// registered in its store: what later restarts load beyond it is the
	// devices registered since.
	start        []procStats
	startDevices int
}

// startNATS starts the nats-server processes, with their configurations,
// stores and logs in dir, where devices are registered already, and
// connects to them.
func startNATS(bin, dir string, devices int) (*natsCluster, error) {
	p, err := natstest.StartProcessCluster(natstest.ProcConfig{Bin: bin, Dir: dir, Servers: natsServers})
	c := &natsCluster{procs: p, dir: dir, startDevices: devices}
	if err != nil {
		c.stop()
		return nil, fmt.Errorf("start %d nats-servers: %w", natsServers, err)
	}
	if err := c.connect(); err != nil {
		c.stop()
		return nil, err
	}
	for _, pid := range c.pids {
		st, err := readProcStats(pid)
		if err != nil {
			c.stop()
			return nil, fmt.Errorf("read a nats-server's memory: %w", err)
		}
		c.start = append(c.start, st)
	}
	return c, nil
}

// connect finds the servers' processes and connects to them.
func (c *natsCluster) connect() error {
	var err error
	if c.pids, err = natsPIDs(c.dir, natsServers); err != nil {
		return err
	}
	if c.nc, err = nats.Connect(c.url(), nats.Name("loadgen")); err != nil {
		return fmt.Errorf("connect to the nats-servers: %w", err)
	}
	if c.js, err = jetstream.New(c.nc); err != nil {
		return fmt.Errorf("connect to JetStream: %w", err)
	}
	return nil
}

// restart stops every server and starts it again on its store, so that a
// phase reads their memory fresh, as it does the nodes': a server keeps
// what the bursts of writes before allocated until its runtime gives it
// back to the system, and that swamps what the sessions cost it. The
// nodes must be stopped: they would move from server to server meanwhile.
func (c *natsCluster) restart() error {
	c.nc.Close()
	for i, pid := range c.pids {
		// As an operator stops it: it flushes its store first.
		if err := syscall.Kill(pid, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
			return fmt.Errorf("stop nats-server n%d: %w", i+1, err)
		}
	}
	for i, pid := range c.pids {
		// natstest reaps it; Kill then only waits for that, or kills a
		// server that has not stopped within its bound.
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if syscall.Kill(pid, 0) != nil {
				break
			}
		}
		c.procs.Kill(i)
	}
	for i := range natsServers {
		if err := c.procs.Start(i); err != nil {
			return fmt.Errorf("restart nats-server n%d: %w", i+1, err)
		}
	}
	if err := c.procs.WaitReady(time.Minute); err != nil {
		return fmt.Errorf("restart the nats-servers: %w", err)
	}
	return c.connect()
}

// url is every server's URL, as --nats takes them.
func (c *natsCluster) url() string { return c.procs.URL() }

func (c *natsCluster) stop() {
	if c.nc != nil {
		c.nc.Close()
	}
	if c.procs != nil {
		c.procs.Shutdown()
	}
}

// natsPIDs finds the processes of the n servers natstest started in dir,
// among this process's children, by the configuration file each was
// started with (dir/nI.conf): natstest does not say their process IDs,
// and their memory is read from /proc.
func natsPIDs(dir string, n int) ([]int, error) {
	pids := make([]int, n)
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return nil, fmt.Errorf("find the nats-server processes: %w", err)
	}
	for _, task := range tasks {
		b, err := os.ReadFile(filepath.Join("/proc/self/task", task.Name(), "children"))
		if err != nil {
			continue // the thread has ended
		}
		for _, field := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(field)
			if err != nil {
				continue
			}
			cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err != nil {
				continue
			}
			args := strings.Split(strings.TrimRight(string(cmdline), "\x00"), "\x00")
			for i := range n {
				if len(args) == 3 && args[1] == "-c" && args[2] == filepath.Join(dir, fmt.Sprintf("n%d.conf", i+1)) {
					pids[i] = pid
				}
			}
		}
	}
	if i := slices.Index(pids, 0); i >= 0 {
		return nil, fmt.Errorf("find the nats-server processes: no child runs %s", filepath.Join(dir, fmt.Sprintf("n%d.conf", i+1)))
	}
	return pids, nil
}

// natsSample is what each NATS server holds at one moment.
type natsSample struct {
	stats []procStats
	subs  []int
}

// sample reads every server's process and subscriptions; a run without
// a cluster has none to read.
func (c *natsCluster) sample(ctx context.Context) (*natsSample, error) {
	if c == nil {
		return nil, nil
	}
	s := &natsSample{}
	for _, pid := range c.pids {
		st, err := readProcStats(pid)
		if err != nil {
			return nil, fmt.Errorf("read a nats-server's memory: %w", err)
		}
		s.stats = append(s.stats, st)
	}
	var err error
	if s.subs, err = c.subscriptions(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// accountStatz is the part of an account's STATZ answer the tool reads.
type accountStatz struct {
	Server struct {
		Name string `json:"name"`
	} `json:"server"`
	Data struct {
		Accounts []struct {
			Account string `json:"acc"`
			Subs    int    `json:"num_subscriptions"`
		} `json:"account_statz"`
	} `json:"data"`
}

// subscriptions asks every server how many subscriptions the account of
// the nodes (the default one, $G) holds there: its own clients' and the
// interest the other servers route to it. Any account may ask this of
// every server ($SYS.REQ.ACCOUNT.PING.STATZ), with no monitoring port;
// a server where the account has no client of its own answers only when
// asked to include unused accounts.
func (c *natsCluster) subscriptions(ctx context.Context) ([]int, error) {
	inbox := c.nc.NewRespInbox()
	sub, err := c.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, fmt.Errorf("ask the nats-servers for their subscriptions: %w", err)
	}
	defer sub.Unsubscribe()
	if err := c.nc.PublishRequest("$SYS.REQ.ACCOUNT.PING.STATZ", inbox, []byte(`{"include_unused":true}`)); err != nil {
		return nil, fmt.Errorf("ask the nats-servers for their subscriptions: %w", err)
	}
	const wait = 10 * time.Second
	waitCtx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	subs := make([]int, natsServers)
	answered := 0
	for answered < natsServers {
		m, err := sub.NextMsgWithContext(waitCtx)
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		if err != nil {
			// Not the run's deadline: the servers' silence.
			return nil, fmt.Errorf("ask the nats-servers for their subscriptions: %d of %d answered within %v (%v)", answered, natsServers, wait, err)
		}
		var a accountStatz
		if err := json.Unmarshal(m.Data, &a); err != nil {
			return nil, fmt.Errorf("read a nats-server's STATZ: %w", err)
		}
		// natstest names the servers n1, n2, n3.
		i, err := strconv.Atoi(strings.TrimPrefix(a.Server.Name, "n"))
		if err != nil || i < 1 || i > natsServers {
			return nil, fmt.Errorf("read a nats-server's STATZ: unknown server %q", a.Server.Name)
		}
		for _, acc := range a.Data.Accounts {
			if acc.Account == "$G" {
				subs[i-1] = acc.Subs
			}
		}
		answered++
	}
	return subs, nil
}

// natsServerReport is what one NATS server held over a phase.
type natsServerReport struct {
	Name string `json:"name"`
	// Start is the server as it first started in the run, Before with
	// the nodes fresh, AtHold with every session held, After once every
	// message was acked.
	Start  procStats `json:"start"`
	Before procStats `json:"before"`
	AtHold procStats `json:"held"`
	After  procStats `json:"after"`
	// PerConnKiB is the RSS growth from Before to AtHold per session held
	// on all the nodes.
	PerConnKiB float64 `json:"rss_per_conn_kib"`
	// Subs* are its account's subscriptions, the interest routed from the
	// other servers among them; SubsPerConn the growth per session held.
	SubsBefore  int     `json:"subs_before"`
	SubsHeld    int     `json:"subs_held"`
	SubsPerConn float64 `json:"subs_per_conn"`
	// PerDeviceKiB is, when the servers were restarted before the phase,
	// the growth of their RSS from Start to Before per device registered
	// since Start: what a server loads of each device's state when it
	// starts, before any session. 0 when unknown.
	PerDeviceKiB float64 `json:"rss_per_device_kib,omitempty"`
}

// reports sets the samples of a phase side by side, server by server. With fresh, the servers were restarted before the phase, and
// devices are registered in their store.
func (c *natsCluster) reports(before, held, after *natsSample, sessions, devices int, fresh bool) []natsServerReport {
	if before == nil || held == nil || after == nil {
		return nil
	}
	out := make([]natsServerReport, len(before.stats))
	for i := range out {
		r := natsServerReport{
			Name:  fmt.Sprintf("n%d", i+1),
			Start: c.start[i], Before: before.stats[i], AtHold: held.stats[i], After: after.stats[i],
			SubsBefore: before.subs[i], SubsHeld: held.subs[i],
		}
		if sessions > 0 {
			r.PerConnKiB = (float64(r.AtHold.RSSKiB) - float64(r.Before.RSSKiB)) / float64(sessions)
			r.SubsPerConn = float64(r.SubsHeld-r.SubsBefore) / float64(sessions)
		}
		if added := devices - c.startDevices; fresh && added > 0 {
			r.PerDeviceKiB = (float64(r.Before.RSSKiB) - float64(r.Start.RSSKiB)) / float64(added)
		}
		out[i] = r
	}
	return out
}

// jetStreamReport is what JetStream stores for the devices.
type jetStreamReport struct {
	Streams []streamReport `json:"streams"`
	// Messages, Bytes and Subjects are the streams' together, one replica.
	Messages uint64 `json:"messages"`
	Bytes    uint64 `json:"bytes"`
	Subjects uint64 `json:"subjects"`
	// Devices is the devices registered in the store; the figures per
	// device are over them.
	Devices           int     `json:"devices"`
	SubjectsPerDevice float64 `json:"subjects_per_device"`
	BytesPerDevice    float64 `json:"bytes_per_device"`
	// DiskBytes is the servers' store directories: every replica, with
	// JetStream's indexes and Raft logs.
	DiskBytes int64 `json:"disk_bytes"`
}

type streamReport struct {
	Name     string `json:"name"`
	Replicas int    `json:"replicas"`
	Messages uint64 `json:"messages"`
	Bytes    uint64 `json:"bytes"`
	Subjects uint64 `json:"subjects"`
}

// jetStream reads every stream's state (the leader's), and sizes the
// servers' store directories; devices is how many are registered.
func (c *natsCluster) jetStream(ctx context.Context, devices int) (*jetStreamReport, error) {
	if c == nil {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	rep := &jetStreamReport{Devices: devices}
	list := c.js.ListStreams(ctx)
	for info := range list.Info() {
		s := streamReport{
			Name: info.Config.Name, Replicas: info.Config.Replicas,
			Messages: info.State.Msgs, Bytes: info.State.Bytes, Subjects: info.State.NumSubjects,
		}
		rep.Streams = append(rep.Streams, s)
		rep.Messages += s.Messages
		rep.Bytes += s.Bytes
		rep.Subjects += s.Subjects
	}
	if err := list.Err(); err != nil {
		return nil, fmt.Errorf("read JetStream's streams: %w", err)
	}
	slices.SortFunc(rep.Streams, func(a, b streamReport) int { return strings.Compare(a.Name, b.Name) })
	if devices > 0 {
		rep.SubjectsPerDevice = float64(rep.Subjects) / float64(devices)
		rep.BytesPerDevice = float64(rep.Bytes) / float64(devices)
	}
	for i := range natsServers {
		n, err := dirSize(filepath.Join(c.dir, fmt.Sprintf("n%d", i+1)))
		if err != nil {
			return nil, fmt.Errorf("size the JetStream store of n%d: %w", i+1, err)
		}
		rep.DiskBytes += n
	}
	return rep, nil
}

// dirSize is the bytes of the files under dir. JetStream writes them as
// it goes: one removed meanwhile is not counted.
func dirSize(dir string) (int64, error) {
	var n int64
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		if err != nil {
			return err
		}
		if d.Type().IsRegular() {
			info, err := d.Info()
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				return err
			}
			n += info.Size()
		}
		return nil
	})
	return n, err
}
