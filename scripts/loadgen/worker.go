// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"tether/internal/procfs"
	"tether/wire"
)

// workerEnv set to "1" makes the binary a worker. The coordinator starts
// its own executable again with it, so that the devices' sockets count
// against the workers' open-file limits, not the server's.
const workerEnv = "TETHER_LOADGEN_WORKER"

const (
	// appID is the app every simulated device registers.
	appID = "com.example.loadgen"
	// roundKey is the data key that names the round a message belongs to.
	roundKey = "round"
	// pongWait is how long a device waits for the pong to its ping, as
	// tetherd does.
	pongWait = time.Minute
	// writeWait bounds every write of a device.
	writeWait = 10 * time.Second
	// closeWait bounds the close frame a device sends when it leaves.
	closeWait = time.Second
	// bufferSize is a device's read buffer: frames here are under 1 KiB,
	// and a bigger one is read in pieces all the same.
	bufferSize = 1024
)

func isWorker() bool { return os.Getenv(workerEnv) == "1" }

// Turns of the steps of a device's life: on a cluster each goes to
// another node (when there are three or more), so that a device checks in
// through one node, registers through the next and holds its session on a
// third, through the state they share.
const (
	turnConnect  = 0
	turnCheckIn  = 1
	turnRegister = 2
)

// nodeOf is the node, of nodes, that the device at fleet index d dials on
// a step of turn: the devices are spread evenly, device by device, so
// that every worker loads every node.
func nodeOf(d, turn, nodes int) int { return (d + turn) % nodes }

// device is one simulated device's identity, as the state file keeps it.
// Secret and Token are secrets: they go to the state file (mode 0600) and
// between the tool's own processes, never to a log or the report.
type device struct {
	ID     string `json:"id,omitempty"`
	Secret string `json:"secret,omitempty"`
	Token  string `json:"token,omitempty"`
}

// job is a worker's first line of input: the server and the devices it
// plays.
type job struct {
	// URLs are the servers' device endpoints: one, or a cluster's nodes,
	// over which the devices are spread (nodeOf).
	URLs   []string `json:"urls"`
	Sender string   `json:"sender"`
	// Heartbeat is announced in every hello and is the interval of the
	// devices' pings.
	Heartbeat        time.Duration `json:"heartbeat"`
	Concurrency      int           `json:"concurrency"`
	HandshakeTimeout time.Duration `json:"handshake_timeout"`
	// First is the fleet index of Devices[0].
	First   int      `json:"first"`
	Devices []device `json:"devices"`
	// CAFile, for a wss:// URL, is the PEM file of the certificate
	// authority to trust.
	CAFile string `json:"ca_file,omitempty"`
	// EnrollKey is the servers' fleet enrollment key.
	EnrollKey string `json:"enroll_key"`
}

// Worker operations, one per command.
const (
	opCheckIn  = "checkin"  // check in the devices without an ID, then disconnect
	opRegister = "register" // register the app on the devices without a token, then disconnect
	opConnect  = "connect"  // open every device's session and hold it
	opDrop     = "drop"     // close N held sessions on node Node
	opAwait    = "await"    // wait until every held device has a message of Round
	// opSync pings every held session and waits for the pongs. The server
	// answers a ping after it has handled every frame before it, so then
	// it has stored every ack sent before.
	opSync = "sync"
)

// command is one line of a worker's input after the job.
type command struct {
	Op string `json:"op"`
	// Source is the local address a pass dials from.
	Source string `json:"source,omitempty"`
	// Turn picks the node each device of a pass dials (nodeOf).
	Turn int `json:"turn,omitempty"`
	// Node is the index in URLs of the node whose sessions drop closes.
	Node  int           `json:"node,omitempty"`
	N     int           `json:"n,omitempty"`
	Round string        `json:"round,omitempty"`
	Wait  time.Duration `json:"wait,omitempty"`
}

// answer is a worker's reply to one command.
type answer struct {
	Op     string `json:"op"`
	Done   int    `json:"done"`
	Failed int    `json:"failed"`
	// Failures counts the failed devices by what went wrong.
	Failures map[string]int `json:"failures,omitempty"`
	// Start is when a pass began, End when its last device succeeded.
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	// Devices is every device of the worker, after checkin and register.
	Devices []device `json:"devices,omitempty"`
	// Held lists the fleet indexes of the sessions connect opened,
	// Dropped those drop closed.
	Held    []int `json:"held,omitempty"`
	Dropped []int `json:"dropped,omitempty"`
	// Receipts are the messages of the awaited round that the devices
	// acked; Missing the held devices without one; Stray counts the
	// messages of other rounds.
	Receipts []receipt `json:"receipts,omitempty"`
	Missing  []int     `json:"missing,omitempty"`
	Stray    int       `json:"stray,omitempty"`
	// Lost are the held sessions that ended without being dropped.
	Lost   []lostSession `json:"lost,omitempty"`
	RSSKiB uint64        `json:"rss_kib"`
	Err    string        `json:"err,omitempty"`
	// TLS is what connect's first session over TLS negotiated.
	TLS string `json:"tls,omitempty"`
}

// receipt is a message a device acked.
type receipt struct {
	Device int    `json:"device"`
	ID     string `json:"id"`
	// At is when the ack had been written.
	At time.Time `json:"at"`
}

type lostSession struct {
	Device int    `json:"device"`
	Why    string `json:"why"`
}

// workerMain runs a worker: the job and then commands on in, one answer
// per command on out. It returns at the end of in, closing every session.
func workerMain(in io.Reader, out io.Writer, stderr io.Writer) int {
	dec := json.NewDecoder(bufio.NewReader(in))
	var j job
	if err := dec.Decode(&j); err != nil {
		fmt.Fprintln(stderr, "loadgen worker: read job:", err)
		return 1
	}
	w, err := newWorker(j)
	if err != nil {
		fmt.Fprintln(stderr, "loadgen worker:", err)
		return 1
	}
	defer w.closeAll()
	enc := json.NewEncoder(out)
	for {
		var c command
		if err := dec.Decode(&c); err != nil {
			if errors.Is(err, io.EOF) {
				return 0
			}
			fmt.Fprintln(stderr, "loadgen worker: read command:", err)
			return 1
		}
		a := w.do(c)
		a.Op = c.Op
		if st, err := procfs.Status(os.Getpid()); err == nil {
			a.RSSKiB = st["VmRSS"]
		}
		if err := enc.Encode(a); err != nil {
			fmt.Fprintln(stderr, "loadgen worker: write answer:", err)
			return 1
		}
	}
}

// worker plays its job's devices.
type worker struct {
	job  job
	pool *sync.Pool // write buffers, shared by all its connections
	// tls, for wss://, trusts the job's CA alone.
	tls *tls.Config
	// readers are the held sessions' reader goroutines.
	readers sync.WaitGroup
	// changed is signalled when a device acks a message, a pong comes or a
	// session ends.
	changed chan struct{}

	mu      sync.Mutex
	sims    []*sim // by position in job.Devices; nil until connected
	closing bool
	syncs   int // sync operations so far
	// tlsInfo is what the first session over TLS negotiated.
	tlsInfo string
}

// sim is a device's held session.
type sim struct {
	index int
	node  int // the index in job.URLs of the server holding it
	conn  *websocket.Conn
	codec *wire.Codec

	// Guarded by worker.mu.
	ping     *time.Timer
	receipts []roundReceipt
	ended    bool
	dropped  bool
	why      string
	synced   string // the payload of the last sync's pong
}

type roundReceipt struct {
	round, id string
	at        time.Time
}

func newWorker(j job) (*worker, error) {
	w := &worker{
		job:     j,
		pool:    &sync.Pool{},
		changed: make(chan struct{}, 1),
		sims:    make([]*sim, len(j.Devices)),
	}
	if j.CAFile != "" {
		pem, err := os.ReadFile(j.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read the server's CA: %w", err)
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("read the server's CA: no certificate in %s", j.CAFile)
		}
		w.tls = &tls.Config{RootCAs: roots}
	}
	return w, nil
}

func (w *worker) do(c command) answer {
	switch c.Op {
	case opCheckIn:
		a := w.pass(w.positions(func(d device) bool { return d.ID == "" }), c, w.checkIn)
		a.Devices = w.job.Devices
		return a
	case opRegister:
		a := w.pass(w.positions(func(d device) bool { return d.ID != "" && d.Token == "" }), c, w.register)
		a.Devices = w.job.Devices
		return a
	case opConnect:
		a := w.pass(w.positions(func(device) bool { return true }), c, w.connect)
		w.mu.Lock()
		for _, s := range w.sims {
			if s != nil {
				a.Held = append(a.Held, s.index)
			}
		}
		a.TLS = w.tlsInfo
		w.mu.Unlock()
		return a
	case opDrop:
		return answer{Dropped: w.drop(c.Node, c.N)}
	case opAwait:
		return w.await(c.Round, c.Wait)
	case opSync:
		return w.sync(c.Wait)
	}
	return answer{Err: fmt.Sprintf("unknown operation %q", c.Op)}
}

func (w *worker) positions(want func(device) bool) []int {
	var out []int
	for i, d := range w.job.Devices {
		if want(d) {
			out = append(out, i)
		}
	}
	return out
}

// pass runs fn for the devices at positions todo, Concurrency at a time,
// all dialling from c.Source, each the node its turn gives it. On a
// cluster a failure is counted under its node.
func (w *worker) pass(todo []int, c command, fn func(d *websocket.Dialer, node, pos int) error) answer {
	a := answer{Failures: map[string]int{}, Start: time.Now()}
	d, err := w.dialer(c.Source)
	if err != nil {
		a.Err = err.Error()
		return a
	}
	nodes := len(w.job.URLs)
	var mu sync.Mutex
	var wg sync.WaitGroup
	sem := make(chan struct{}, max(w.job.Concurrency, 1))
	for _, pos := range todo {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			node := nodeOf(w.job.First+pos, c.Turn, nodes)
			err := fn(d, node, pos)
			now := time.Now()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				why := describe(err)
				if nodes > 1 {
					why = fmt.Sprintf("node %d: %s", node+1, why)
				}
				a.Failed++
				a.Failures[why]++
				return
			}
			a.Done++
			if now.After(a.End) {
				a.End = now
			}
		})
	}
	wg.Wait()
	return a
}

func (w *worker) dialer(source string) (*websocket.Dialer, error) {
	nd := &net.Dialer{
		Timeout: w.job.HandshakeTimeout,
		// The devices' pings are their only keepalive, as tetherd's are.
		KeepAlive: -1,
	}
	if source != "" {
		ip := net.ParseIP(source)
		if ip == nil {
			return nil, fmt.Errorf("source address %q is not an IP address", source)
		}
		nd.LocalAddr = &net.TCPAddr{IP: ip}
	}
	return &websocket.Dialer{
		NetDialContext:   nd.DialContext,
		HandshakeTimeout: w.job.HandshakeTimeout,
		Subprotocols:     []string{wire.Subprotocol},
		ReadBufferSize:   bufferSize,
		WriteBufferSize:  bufferSize,
		WriteBufferPool:  w.pool,
		TLSClientConfig:  w.tls,
	}, nil
}

// stageError is a failure at one step of a device's exchange.
type stageError struct {
	stage string
	err   error
}

func (e *stageError) Error() string { return e.stage + ": " + e.err.Error() }
func (e *stageError) Unwrap() error { return e.err }

func fail(stage string, err error) error { return &stageError{stage, err} }

// describe names a failure by its step and kind, without addresses, so
// that thousands of them fold into a few counts.
func describe(err error) string {
	stage := ""
	if se, ok := errors.AsType[*stageError](err); ok {
		stage = se.stage + ": "
	}
	var ce *websocket.CloseError
	switch {
	case errors.As(err, &ce):
		return fmt.Sprintf("%sclosed by the server: %d %s", stage, ce.Code, ce.Text)
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return stage + "timeout"
	case errors.Is(err, syscall.ECONNREFUSED):
		return stage + "connection refused"
	case errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EPIPE):
		return stage + "connection reset"
	case errors.Is(err, syscall.EADDRNOTAVAIL), errors.Is(err, syscall.EADDRINUSE):
		return stage + "no free local port"
	case errors.Is(err, syscall.EMFILE), errors.Is(err, syscall.ENFILE):
		return stage + "too many open files in the worker"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
		return stage + "connection closed"
	}
	if se, ok := errors.AsType[*stageError](err); ok {
		return se.Error()
	}
	return err.Error()
}

// refusedError is a server's error frame or goaway in place of an answer.
type refusedError struct{ what string }

func (e *refusedError) Error() string { return "refused: " + e.what }

// open dials the server at the node's URL and exchanges hello and
// welcome, as tetherd does; the codec speaks the welcome's version.
func (w *worker) open(d *websocket.Dialer, node int, hello wire.Hello) (*websocket.Conn, wire.Welcome, *wire.Codec, error) {
	hello.Version = wire.Version
	hello.Heartbeat = int(w.job.Heartbeat / time.Second)
	hello.Agent = "loadgen"
	frame, err := wire.Encode("", hello)
	if err != nil {
		return nil, wire.Welcome{}, nil, fail("hello", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.job.HandshakeTimeout)
	defer cancel()
	conn, resp, err := d.DialContext(ctx, w.job.URLs[node], nil)
	if err != nil {
		if resp != nil {
			return nil, wire.Welcome{}, nil, fail("dial", fmt.Errorf("HTTP %s: %w", resp.Status, err))
		}
		return nil, wire.Welcome{}, nil, fail("dial", err)
	}
	if conn.Subprotocol() != wire.Subprotocol {
		conn.Close()
		return nil, wire.Welcome{}, nil, fail("dial", fmt.Errorf("server speaks subprotocol %q", conn.Subprotocol()))
	}
	conn.SetReadLimit(wire.MaxFrameSize)
	deadline := time.Now().Add(w.job.HandshakeTimeout)
	conn.SetWriteDeadline(deadline)
	if err := conn.WriteMessage(websocket.TextMessage, frame); err != nil {
		conn.Close()
		return nil, wire.Welcome{}, nil, fail("hello", err)
	}
	conn.SetReadDeadline(deadline)
	welcome, err := readWelcome(conn)
	if err != nil {
		conn.Close()
		return nil, wire.Welcome{}, nil, fail("welcome", err)
	}
	codec, err := wire.NewCodec(welcome.Version)
	if err != nil {
		conn.Close()
		return nil, wire.Welcome{}, nil, fail("welcome", err)
	}
	return conn, welcome, codec, nil
}

func readWelcome(conn *websocket.Conn) (wire.Welcome, error) {
	var welcome wire.Welcome
	f, err := readFrame(conn, nil)
	if err != nil {
		return welcome, err
	}
	switch f.Type {
	case wire.TypeWelcome:
		return welcome, f.Decode(&welcome)
	case wire.TypeGoAway:
		var g wire.GoAway
		if err := f.Decode(&g); err != nil {
			return welcome, err
		}
		return welcome, &refusedError{fmt.Sprintf("goaway (%s)", g.Reason)}
	case wire.TypeError:
		var e wire.Error
		if err := f.Decode(&e); err != nil {
			return welcome, err
		}
		return welcome, &refusedError{e.Code}
	}
	return welcome, fmt.Errorf("%w: %.40q frame in place of the welcome", wire.ErrBadFrame, f.Type)
}

// readFrame reads one frame, with the session's codec once there is
// one (after the welcome).
func readFrame(conn *websocket.Conn, codec *wire.Codec) (wire.Frame, error) {
	_, data, err := conn.ReadMessage()
	if err != nil {
		return wire.Frame{}, err
	}
	if codec == nil {
		return wire.Decode(data)
	}
	return codec.Decode(data)
}

// leave sends a close frame and closes the connection.
func leave(conn *websocket.Conn) {
	conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(closeWait))
	conn.Close()
}

// checkIn checks the device at pos in: a hello without credentials, which
// the server answers with a new device ID and secret.
func (w *worker) checkIn(d *websocket.Dialer, node, pos int) error {
	conn, welcome, _, err := w.open(d, node, wire.Hello{EnrollKey: w.job.EnrollKey})
	if err != nil {
		return err
	}
	defer leave(conn)
	if welcome.DeviceSecret == "" {
		return fail("welcome", errors.New("the answer to a check-in has no device secret"))
	}
	w.job.Devices[pos] = device{ID: welcome.DeviceID, Secret: welcome.DeviceSecret}
	return nil
}

// register registers the app of the device at pos with the sender.
func (w *worker) register(d *websocket.Dialer, node, pos int) error {
	dev := w.job.Devices[pos]
	conn, _, codec, err := w.open(d, node, wire.Hello{DeviceID: dev.ID, DeviceSecret: dev.Secret})
	if err != nil {
		return err
	}
	defer leave(conn)
	const ref = "register"
	frame, err := wire.Encode(ref, wire.Register{App: appID, Sender: w.job.Sender})
	if err != nil {
		return fail("register", err)
	}
	deadline := time.Now().Add(w.job.HandshakeTimeout)
	conn.SetWriteDeadline(deadline)
	if err := conn.WriteMessage(websocket.TextMessage, frame); err != nil {
		return fail("register", err)
	}
	conn.SetReadDeadline(deadline)
	for {
		f, err := readFrame(conn, codec)
		if err != nil {
			return fail("registered", err)
		}
		if f.Ref != ref {
			continue // a notice or message of a device seen before; its session will get it again
		}
		switch f.Type {
		case wire.TypeRegistered:
			var r wire.Registered
			if err := f.Decode(&r); err != nil {
				return fail("registered", err)
			}
			w.job.Devices[pos].Token = r.Token
			return nil
		case wire.TypeError:
			var e wire.Error
			if err := f.Decode(&e); err != nil {
				return fail("registered", err)
			}
			return fail("registered", &refusedError{e.Code})
		}
	}
}

// connect opens the session of the device at pos and holds it: a reader
// goroutine acks what comes, and a timer pings every heartbeat.
func (w *worker) connect(d *websocket.Dialer, node, pos int) error {
	dev := w.job.Devices[pos]
	if dev.Token == "" {
		return fail("connect", errors.New("device has no registration"))
	}
	conn, _, codec, err := w.open(d, node, wire.Hello{DeviceID: dev.ID, DeviceSecret: dev.Secret})
	if err != nil {
		return err
	}
	s := &sim{index: w.job.First + pos, node: node, conn: conn, codec: codec}
	w.mu.Lock()
	if w.closing {
		w.mu.Unlock()
		leave(conn)
		return fail("connect", errors.New("worker closing"))
	}
	w.sims[pos] = s
	if tc, ok := conn.NetConn().(*tls.Conn); ok && w.tlsInfo == "" {
		st := tc.ConnectionState()
		w.tlsInfo = fmt.Sprintf("%s, %s, %s", tls.VersionName(st.Version), tls.CipherSuiteName(st.CipherSuite), st.CurveID)
	}
	w.mu.Unlock()
	w.heard(s)
	conn.SetPongHandler(func(data string) error {
		w.heard(s)
		// A heartbeat's pong, without payload, must not hide a sync's that
		// came before it: a server whose acks take a while to store (a
		// cluster's) answers the two close together.
		if data == "" {
			return nil
		}
		w.mu.Lock()
		s.synced = data
		w.mu.Unlock()
		w.signal()
		return nil
	})
	w.mu.Lock()
	s.ping = time.AfterFunc(w.job.Heartbeat, func() { w.pingDue(s) })
	w.mu.Unlock()
	w.readers.Go(func() { w.read(s) })
	return nil
}

// heard pushes the read deadline out: the server must be heard from
// within a heartbeat and the pong wait, as tetherd expects.
func (w *worker) heard(s *sim) {
	s.conn.SetReadDeadline(time.Now().Add(w.job.Heartbeat + pongWait))
}

func (w *worker) pingDue(s *sim) {
	w.mu.Lock()
	ended, timer := s.ended, s.ping
	w.mu.Unlock()
	if ended {
		return
	}
	// A failed ping shows in the reader, which then ends the session.
	if s.conn.WriteControl(websocket.PingMessage, nil, time.Now().Add(writeWait)) == nil {
		timer.Reset(w.job.Heartbeat)
	}
}

// read is a held session's reader. It is also the session's only writer
// of data frames; pings and the close go through WriteControl, which
// gorilla allows beside it.
func (w *worker) read(s *sim) {
	for {
		_, data, err := s.conn.ReadMessage()
		if err == nil {
			w.heard(s)
			err = w.handle(s, data)
		}
		if err != nil {
			w.end(s, err)
			return
		}
	}
}

func (w *worker) handle(s *sim, data []byte) error {
	f, err := s.codec.Decode(data)
	if err != nil {
		return w.send(s, "", wire.Error{Code: wire.CodeBadFrame, Message: err.Error()})
	}
	switch f.Type {
	case wire.TypeMessage:
		var m wire.Message
		if err := f.Decode(&m); err != nil {
			return w.send(s, f.Ref, wire.Error{Code: wire.CodeBadFrame, Message: err.Error()})
		}
		if err := w.send(s, "", wire.Ack{IDs: []string{m.ID}}); err != nil {
			return err
		}
		w.mu.Lock()
		s.receipts = append(s.receipts, roundReceipt{round: m.Data[roundKey], id: m.ID, at: time.Now()})
		w.mu.Unlock()
		w.signal()
	case wire.TypeTokenRefresh:
		var r wire.TokenRefresh
		if err := f.Decode(&r); err != nil {
			return w.send(s, f.Ref, wire.Error{Code: wire.CodeBadFrame, Message: err.Error()})
		}
		return w.send(s, "", wire.Ack{IDs: []string{r.ID}})
	case wire.TypeDeletedMessages:
		var n wire.DeletedMessages
		if err := f.Decode(&n); err != nil {
			return w.send(s, f.Ref, wire.Error{Code: wire.CodeBadFrame, Message: err.Error()})
		}
		return w.send(s, "", wire.Ack{IDs: []string{n.ID}})
	case wire.TypeGoAway:
		var g wire.GoAway
		if f.Decode(&g) == nil {
			w.mu.Lock()
			s.why = "goaway: " + g.Reason
			w.mu.Unlock()
		}
	case wire.TypeError:
		// Never answered, so that two peers cannot trade errors forever.
	default:
		return w.send(s, f.Ref, wire.Error{Code: wire.CodeUnknownType, Message: fmt.Sprintf("unknown frame type %.40q", f.Type)})
	}
	return nil
}

func (w *worker) send(s *sim, ref string, b wire.Body) error {
	frame, err := s.codec.Encode(ref, b)
	if err != nil {
		return err
	}
	s.conn.SetWriteDeadline(time.Now().Add(writeWait))
	return s.conn.WriteMessage(wire.MessageType(frame), frame)
}

func (w *worker) signal() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// end records that a held session is over: lost, unless it was dropped on
// purpose or the worker is closing.
func (w *worker) end(s *sim, err error) {
	w.mu.Lock()
	s.ended = true
	if !s.dropped && !w.closing {
		why := describe(err)
		if s.why != "" {
			why = s.why + ", then " + why
		}
		s.why = why
	}
	timer := s.ping
	w.mu.Unlock()
	timer.Stop()
	s.conn.Close()
	w.signal()
}

// drop closes up to n held sessions on node, the last ones first, and
// returns their devices.
func (w *worker) drop(node, n int) []int {
	var out []*sim
	w.mu.Lock()
	for i := len(w.sims) - 1; i >= 0 && len(out) < n; i-- {
		if s := w.sims[i]; s != nil && s.node == node && !s.ended && !s.dropped {
			s.dropped = true
			out = append(out, s)
		}
	}
	w.mu.Unlock()
	indexes := make([]int, 0, len(out))
	for _, s := range out {
		leave(s.conn)
		indexes = append(indexes, s.index)
	}
	return indexes
}

// await waits up to wait until every held device has acked a message of
// round, or its session has ended, and reports the receipts.
func (w *worker) await(round string, wait time.Duration) answer {
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for w.waiting(round) > 0 {
		select {
		case <-w.changed:
		case <-timer.C:
			return w.receipts(round)
		}
	}
	return w.receipts(round)
}

// waiting counts the live held sessions still without a message of round.
func (w *worker) waiting(round string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, s := range w.sims {
		if s != nil && !s.ended && !s.dropped && !s.has(round) {
			n++
		}
	}
	return n
}

func (s *sim) has(round string) bool {
	for _, r := range s.receipts {
		if r.round == round {
			return true
		}
	}
	return false
}

func (w *worker) receipts(round string) answer {
	var a answer
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, s := range w.sims {
		if s == nil || s.dropped {
			continue
		}
		got := false
		for _, r := range s.receipts {
			if r.round != round {
				a.Stray++
				continue
			}
			got = true
			a.Receipts = append(a.Receipts, receipt{Device: s.index, ID: r.id, At: r.at})
		}
		if !got {
			a.Missing = append(a.Missing, s.index)
		}
		if s.ended {
			a.Lost = append(a.Lost, lostSession{Device: s.index, Why: s.why})
		}
	}
	return a
}

// sync pings every live session with a payload of its own and waits up
// to wait for all the pongs.
func (w *worker) sync(wait time.Duration) answer {
	w.mu.Lock()
	w.syncs++
	token := fmt.Sprintf("sync-%d", w.syncs)
	var live []*sim
	for _, s := range w.sims {
		if s != nil && !s.ended && !s.dropped {
			live = append(live, s)
		}
	}
	w.mu.Unlock()
	a := answer{Start: time.Now()}
	for _, s := range live {
		// A failed ping shows as a session that ended, or as no pong.
		s.conn.WriteControl(websocket.PingMessage, []byte(token), time.Now().Add(writeWait))
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		w.mu.Lock()
		a.Done, a.Failed = 0, 0
		for _, s := range live {
			switch {
			case s.synced == token:
				a.Done++
			case !s.ended:
				a.Failed++
			}
		}
		w.mu.Unlock()
		if a.Failed == 0 {
			a.End = time.Now()
			return a
		}
		select {
		case <-w.changed:
		case <-timer.C:
			return a
		}
	}
}

// closeAll closes every held session and waits for its reader.
func (w *worker) closeAll() {
	w.mu.Lock()
	w.closing = true
	sims := w.sims
	w.mu.Unlock()
	for _, s := range sims {
		if s != nil {
			leave(s.conn)
		}
	}
	w.readers.Wait()
}
