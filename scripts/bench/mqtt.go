// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// autosaveInterval is mosquitto's default: with persistence on, it saves
// its in-memory state to disk this often, and when it stops.
const autosaveInterval = 30 * time.Minute

// mosquittoTools are the paths of mosquitto's programs.
type mosquittoTools struct {
	broker, pub, sub string
}

// findMosquitto looks for mosquitto's programs on PATH, then where
// distributions put the broker.
func findMosquitto() (mosquittoTools, error) {
	find := func(name string) (string, error) {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
		for _, dir := range []string{"/usr/sbin", "/usr/local/sbin"} {
			p := filepath.Join(dir, name)
			if st, err := os.Stat(p); err == nil && st.Mode()&0o111 != 0 {
				return p, nil
			}
		}
		return "", fmt.Errorf("%s not found on PATH, in /usr/sbin or in /usr/local/sbin (Debian: apt-get install mosquitto mosquitto-clients)", name)
	}
	var t mosquittoTools
	var errs []error
	var err error
	t.broker, err = find("mosquitto")
	errs = append(errs, err)
	t.pub, err = find("mosquitto_pub")
	errs = append(errs, err)
	t.sub, err = find("mosquitto_sub")
	errs = append(errs, err)
	return t, errors.Join(errs...)
}

// broker is a mosquitto on loopback with persistence on.
type broker struct {
	proc *process
	addr string
	conf string
}

func startBroker(ctx context.Context, tools mosquittoTools, work string) (*broker, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(work, "mosquitto")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	conf := filepath.Join(work, "mosquitto.conf")
	// The defaults, with persistence on; autosave_interval is written out
	// to show what it is.
	text := fmt.Sprintf("listener %d 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location %s/\nautosave_interval %d\n",
		port, dir, int(autosaveInterval.Seconds()))
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		return nil, err
	}
	p, err := start(procSpec{name: "mosquitto", path: tools.broker, args: []string{"-c", conf}, logPath: filepath.Join(work, "mosquitto.log")})
	if err != nil {
		return nil, err
	}
	b := &broker{proc: p, addr: net.JoinHostPort("127.0.0.1", strconv.Itoa(port)), conf: conf}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", b.addr, time.Second)
		if err == nil {
			c.Close()
			return b, nil
		}
		if p.exited() || time.Now().After(deadline) {
			p.stop()
			return nil, fmt.Errorf("mosquitto did not listen on %s: %w\n%s", b.addr, err, p.tail())
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			p.stop()
			return nil, ctx.Err()
		}
	}
}

// freePort finds a free TCP port on loopback, for mosquitto, which cannot
// pick its own and tell it.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// subscriber is a mosquitto_sub with a persistent session at QoS 1,
// connected to the broker through a counting proxy.
type subscriber struct {
	proc     *process
	proxy    *proxy
	stopping chan struct{}
	reader   sync.WaitGroup
}

// startSubscriber starts mosquitto_sub on topic and returns once the
// broker has acknowledged its subscription. Each payload it prints is
// handed to onPayload, when that is set.
func startSubscriber(ctx context.Context, tools mosquittoTools, b *broker, work, id, topic string, keepalive time.Duration, onPayload func([]byte, time.Time) error, fail func(error)) (*subscriber, error) {
	subscribed := make(chan struct{}, 1)
	px, err := newProxy(b.addr, mqttProtocol, func(up bool, typ byte) {
		if !up && typ == mqttSuback {
			select {
			case subscribed <- struct{}{}:
			default:
			}
		}
	})
	if err != nil {
		return nil, err
	}
	host, port, _ := net.SplitHostPort(px.addr())
	p, err := start(procSpec{
		name: "mosquitto_sub " + id, path: tools.sub, logPath: filepath.Join(work, id+".log"), stdout: onPayload != nil,
		args: []string{"-h", host, "-p", port, "-c", "-i", id, "-q", "1", "-t", topic, "-F", "%p",
			"-k", strconv.Itoa(int(keepalive.Seconds()))},
	})
	if err != nil {
		px.close()
		return nil, err
	}
	s := &subscriber{proc: p, proxy: px, stopping: make(chan struct{})}
	if onPayload != nil {
		s.reader.Go(func() {
			r := bufio.NewReaderSize(p.stdout, 64<<10)
			for {
				b, err := r.ReadSlice('\n')
				if err != nil {
					select {
					case <-s.stopping:
					default:
						fail(fmt.Errorf("read what %s prints: %w", p.name, err))
					}
					return
				}
				if err := onPayload(b[:len(b)-1], time.Now()); err != nil {
					fail(err)
					return
				}
			}
		})
	}
	select {
	case <-subscribed:
		return s, nil
	case <-p.done:
		err = fmt.Errorf("%s exited before it subscribed\n%s", p.name, p.tail())
	case <-time.After(10 * time.Second):
		err = fmt.Errorf("%s did not subscribe within 10 s", p.name)
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.close()
	return nil, err
}

func (s *subscriber) close() {
	close(s.stopping)
	s.proc.stop()
	s.reader.Wait()
	s.proxy.close()
}

// mqttSide is Mosquitto on loopback: the broker, mosquitto_sub read by the
// tool, and mosquitto_pub fed by it.
type mqttSide struct {
	broker   *broker
	sub      *subscriber
	pub      *process
	reg      registry
	fail     *failure
	stopping chan struct{}
	pubMu    sync.Mutex
}

const benchTopic = "bench/messages"

func startMQTT(ctx context.Context, c config, tools mosquittoTools, b *broker, work string) (m *mqttSide, err error) {
	m = &mqttSide{broker: b, fail: newFailure(), stopping: make(chan struct{})}
	defer func() {
		if err != nil {
			m.close()
		}
	}()
	m.fail.watch(b.proc, m.stopping)
	m.sub, err = startSubscriber(ctx, tools, b, work, "bench-sub", benchTopic, c.heartbeat,
		func(p []byte, at time.Time) error {
			_, err := m.reg.deliver(p, at)
			return err
		}, m.fail.set)
	if err != nil {
		return m, err
	}
	m.fail.watch(m.sub.proc, m.stopping)
	host, port, _ := net.SplitHostPort(b.addr)
	m.pub, err = start(procSpec{
		name: "mosquitto_pub", path: tools.pub, logPath: filepath.Join(work, "mosquitto_pub.log"), stdin: true,
		args: []string{"-h", host, "-p", port, "-i", "bench-pub", "-q", "1", "-t", benchTopic, "-l"},
	})
	if err != nil {
		return m, err
	}
	m.fail.watch(m.pub, m.stopping)
	return m, nil
}

func (m *mqttSide) name() string            { return "Mosquitto" }
func (m *mqttSide) registry() *registry     { return &m.reg }
func (m *mqttSide) needsAck() bool          { return false }
func (m *mqttSide) wire() wireCounts        { return m.sub.proxy.snapshot() }
func (m *mqttSide) agentPID() int           { return m.sub.proc.pid() }
func (m *mqttSide) failed() <-chan struct{} { return m.fail.ch }
func (m *mqttSide) err() error              { return m.fail.err }

func (m *mqttSide) cpu() cpuTimes {
	return measureCPU(m.sub.proc, m.broker.proc, m.pub)
}

// publish writes the payload as one line to mosquitto_pub's input.
func (m *mqttSide) publish(_ context.Context, payload []byte) error {
	m.pubMu.Lock()
	defer m.pubMu.Unlock()
	_, err := m.pub.stdin.Write(append(payload, '\n'))
	return err
}

// close ends mosquitto_pub by closing its input, so that it sends what
// it has, then the subscriber and the broker.
func (m *mqttSide) close() {
	select {
	case <-m.stopping:
		return
	default:
		close(m.stopping)
	}
	if m.pub != nil {
		m.pub.stdin.Close()
		select {
		case <-m.pub.done:
		case <-time.After(5 * time.Second):
		}
		m.pub.stop()
	}
	if m.sub != nil {
		m.sub.close()
	}
}
