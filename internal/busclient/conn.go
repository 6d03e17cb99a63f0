// SPDX-License-Identifier: Apache-2.0

package busclient

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"tether/internal/unixconn"
)

// Message types.
const (
	typeMethodCall   = 1
	typeMethodReturn = 2
	typeError        = 3
	typeSignal       = 4
)

// flagNoReplyExpected marks a method call whose caller wants no reply.
const flagNoReplyExpected = 1

// Header field codes.
const (
	fieldPath        = 1
	fieldInterface   = 2
	fieldMember      = 3
	fieldErrorName   = 4
	fieldReplySerial = 5
	fieldDestination = 6
	fieldSender      = 7
	fieldSignature   = 8
	fieldUnixFDs     = 9
)

// writeTimeout bounds each write: the bus daemon reads promptly, and
// disconnects a client it cannot keep up with.
const writeTimeout = 10 * time.Second

// maxMessage bounds a message read from the bus; tetherctl's are a few
// KiB, and the specification's bound is 128 MiB.
const maxMessage = 16 << 20

// Error is a D-Bus error reply.
type Error struct {
	Name string
	Body []any
}

func (e *Error) Error() string {
	if len(e.Body) > 0 {
		if s, ok := e.Body[0].(string); ok {
			return e.Name + ": " + s
		}
	}
	return e.Name
}

// Signal is a signal the connection received.
type Signal struct {
	Sender string
	Path   ObjectPath
	// Name is the interface and the member, as "org.example.Iface.Member".
	Name string
	Sig  string
	Body []any
}

// MethodCall is a method call to this connection, to be answered with
// Reply or ReplyError.
type MethodCall struct {
	Sender string
	Path   ObjectPath
	Iface  string
	Member string
	Sig    string
	Body   []any

	serial  uint32
	noReply bool
}

// message is a message read from the bus.
type message struct {
	typ         byte
	flags       byte
	serial      uint32
	replySerial uint32
	path        ObjectPath
	iface       string
	member      string
	errorName   string
	sender      string
	sig         string
	body        []any
	bodyErr     error // the body could not be read; the header could
	// files are the descriptors the message carries; its h values are
	// among them. Whoever takes the message closes those it does not keep.
	files []*os.File
}

// ErrClosed is returned once the connection to the bus is closed.
var ErrClosed = errors.New("the connection to the bus closed")

// Conn is a connection to a message bus.
type Conn struct {
	nc   *os.File
	name string

	wmu    sync.Mutex // serializes writes and serial numbers
	serial uint32

	mu      sync.Mutex
	calls   map[uint32]chan *message
	signals inbox[*Signal]
	// incoming holds method calls to this connection; a call whose body
	// could not be read is queued as its message, for NextCall to refuse.
	incoming inbox[*message]
	err      error         // why the connection ended
	done     chan struct{} // closed when the reader has returned
}

// inbox is a queue of what the connection received, guarded by Conn.mu.
type inbox[T any] struct {
	items []T
	ready chan struct{} // an item was queued, or the connection ended
}

func newInbox[T any]() inbox[T] { return inbox[T]{ready: make(chan struct{}, 1)} }

func (q *inbox[T]) push(v T) {
	q.items = append(q.items, v)
	wake(q.ready)
}

// next waits for the queue's next item.
func next[T any](ctx context.Context, c *Conn, q *inbox[T]) (T, error) {
	for {
		c.mu.Lock()
		if len(q.items) > 0 {
			v := q.items[0]
			q.items = q.items[1:]
			c.mu.Unlock()
			return v, nil
		}
		err := c.err
		c.mu.Unlock()
		var zero T
		if err != nil {
			return zero, err
		}
		select {
		case <-q.ready:
		case <-ctx.Done():
			return zero, ctx.Err()
		}
	}
}

// Dial connects to the bus at addr (a D-Bus address such as
// "unix:path=/run/dbus/system_bus_socket"), authenticates as this
// process's user and says Hello. ctx bounds the whole. The connection
// takes no descriptors: the bus refuses to send it a message that
// carries one.
func Dial(ctx context.Context, addr string) (*Conn, error) {
	return dial(ctx, addr, func(f *os.File) (source, error) { return plainSource{f}, nil })
}

// DialWithFDs is Dial for a connection that receives descriptors passed
// in replies (type h); it is apart so that a program that does not call
// it does not link the code that receives them.
func DialWithFDs(ctx context.Context, addr string) (*Conn, error) {
	return dial(ctx, addr, func(f *os.File) (source, error) { return newSocketReader(f) })
}

// source is what the connection reads the bus from: the bytes, and the
// descriptors passed with them.
type source interface {
	io.Reader
	// take hands over the first n descriptors received.
	take(n int) []*os.File
	// close closes the descriptors no message claimed.
	close()
	// passesFDs tells whether the source receives descriptors.
	passesFDs() bool
}

// plainSource reads bytes only; the bus sends it no descriptors.
type plainSource struct{ f *os.File }

func (p plainSource) Read(b []byte) (int, error) { return p.f.Read(b) }
func (plainSource) take(int) []*os.File          { return nil }
func (plainSource) close()                       {}
func (plainSource) passesFDs() bool              { return false }

func dial(ctx context.Context, addr string, newSource func(*os.File) (source, error)) (*Conn, error) {
	path, err := parseAddress(addr)
	if err != nil {
		return nil, err
	}
	nc, err := unixconn.Dial(ctx, path)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() { nc.Close() })
	defer stop()
	sr, err := newSource(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	r := bufio.NewReader(sr)
	if err := auth(nc, r, sr.passesFDs()); err != nil {
		nc.Close()
		return nil, err
	}
	c := &Conn{nc: nc, calls: map[uint32]chan *message{}, signals: newInbox[*Signal](), incoming: newInbox[*message](), done: make(chan struct{})}
	go c.read(r, sr)
	body, err := c.Call(ctx, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "Hello")
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("hello to the bus: %w", err)
	}
	c.name, _ = body[0].(string)
	return c, nil
}

// parseAddress takes the first unix transport of a D-Bus address.
func parseAddress(addr string) (path string, err error) {
	for a := range strings.SplitSeq(addr, ";") {
		transport, params, ok := strings.Cut(a, ":")
		if !ok || transport != "unix" {
			continue
		}
		for kv := range strings.SplitSeq(params, ",") {
			k, v, _ := strings.Cut(kv, "=")
			v, err := unescape(v)
			if err != nil {
				return "", fmt.Errorf("bus address %q: %w", addr, err)
			}
			switch k {
			case "path":
				return v, nil
			case "abstract":
				return "@" + v, nil
			}
		}
	}
	return "", fmt.Errorf("bus address %q has no unix:path= or unix:abstract= transport", addr)
}

// unescape undoes an address value's %XX escapes.
func unescape(v string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '%' {
			b.WriteByte(v[i])
			continue
		}
		if i+2 >= len(v) {
			return "", errors.New("a % escape cut short")
		}
		n, err := strconv.ParseUint(v[i+1:i+3], 16, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape %q", v[i:i+3])
		}
		b.WriteByte(byte(n))
		i += 2
	}
	return b.String(), nil
}

// auth runs the EXTERNAL mechanism (the bus knows the peer's uid from the
// socket) and, if fds is set, asks for descriptor passing, which a bus
// may refuse: then no message carries descriptors.
func auth(w io.Writer, r *bufio.Reader, fds bool) error {
	uid := hex.EncodeToString([]byte(strconv.Itoa(os.Getuid())))
	if _, err := io.WriteString(w, "\x00AUTH EXTERNAL "+uid+"\r\n"); err != nil {
		return err
	}
	line, err := r.ReadString('\n')
	if err != nil {
		return fmt.Errorf("authenticate to the bus: %w", err)
	}
	if !strings.HasPrefix(line, "OK ") {
		return fmt.Errorf("the bus refused to authenticate this user: %s", strings.TrimSpace(line))
	}
	if fds {
		if _, err := io.WriteString(w, "NEGOTIATE_UNIX_FD\r\n"); err != nil {
			return err
		}
		if _, err := r.ReadString('\n'); err != nil {
			return fmt.Errorf("negotiate descriptor passing with the bus: %w", err)
		}
	}
	_, err = io.WriteString(w, "BEGIN\r\n")
	return err
}

// UniqueName is the connection's name on the bus.
func (c *Conn) UniqueName() string { return c.name }

// Close closes the connection; calls and NextSignal waiting on it return
// ErrClosed. Closing a connection the bus has ended is no error.
func (c *Conn) Close() error {
	err := c.nc.Close()
	<-c.done
	if errors.Is(err, os.ErrClosed) {
		return nil
	}
	return err
}

// Call calls a method and returns the reply's body; an error reply is an
// *Error. ctx bounds the wait. A descriptor in the reply (type h) is an
// *os.File that the caller closes.
func (c *Conn) Call(ctx context.Context, dest string, path ObjectPath, iface, member string, args ...any) ([]any, error) {
	reply := make(chan *message, 1)
	h := header{typ: typeMethodCall, dest: dest, path: path, iface: iface, member: member}
	serial, err := c.send(h, args, func(serial uint32) error {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.err != nil {
			return c.err
		}
		c.calls[serial] = reply
		return nil
	})
	if err != nil {
		return nil, err
	}
	select {
	case m := <-reply:
		if m == nil {
			return nil, c.closedErr()
		}
		if m.bodyErr != nil || m.typ == typeError {
			closeFiles(m.files)
		}
		if m.bodyErr != nil {
			return nil, m.bodyErr
		}
		if m.typ == typeError {
			return nil, &Error{Name: m.errorName, Body: m.body}
		}
		return m.body, nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.calls, serial)
		c.mu.Unlock()
		select {
		case m := <-reply: // came as the wait ended
			if m != nil {
				closeFiles(m.files)
			}
		default:
		}
		return nil, ctx.Err()
	}
}

func (c *Conn) closedErr() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// header is what a message says besides its body.
type header struct {
	typ         byte
	flags       byte
	dest        string
	path        ObjectPath
	iface       string
	member      string
	errorName   string
	replySerial uint32
}

// send writes a message; register, when set, runs with its serial before
// it is written, so that the reply cannot come first.
func (c *Conn) send(h header, args []any, register func(uint32) error) (uint32, error) {
	var sig strings.Builder
	for _, a := range args {
		s, err := signatureOf(a)
		if err != nil {
			return 0, err
		}
		sig.WriteString(s)
	}
	body := &encoder{}
	for _, a := range args {
		body.value(a)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.serial++
	serial := c.serial
	e := &encoder{b: []byte{'l', h.typ, h.flags, 1}}
	e.uint32(uint32(len(body.b)))
	e.uint32(serial)
	e.array(true, func() {
		field := func(code byte, sig string, v any) {
			e.align(8)
			e.b = append(e.b, code)
			e.value(Variant{Sig: sig, Value: v})
		}
		if h.path != "" {
			field(fieldPath, "o", h.path)
		}
		if h.iface != "" {
			field(fieldInterface, "s", h.iface)
		}
		if h.member != "" {
			field(fieldMember, "s", h.member)
		}
		if h.errorName != "" {
			field(fieldErrorName, "s", h.errorName)
		}
		if h.replySerial != 0 {
			field(fieldReplySerial, "u", h.replySerial)
		}
		if h.dest != "" {
			field(fieldDestination, "s", h.dest)
		}
		if sig.Len() > 0 {
			e.align(8)
			e.b = append(e.b, fieldSignature)
			e.signature("g")
			e.signature(sig.String())
		}
	})
	e.align(8)
	if register != nil {
		if err := register(serial); err != nil {
			return 0, err
		}
	}
	c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := c.nc.Write(append(e.b, body.b...)); err != nil {
		return 0, err
	}
	return serial, nil
}

// Notify calls a method without waiting for, or wanting, a reply. The bus
// starts dest by activation when it is not running and can be.
func (c *Conn) Notify(dest string, path ObjectPath, iface, member string, args ...any) error {
	h := header{typ: typeMethodCall, flags: flagNoReplyExpected, dest: dest, path: path, iface: iface, member: member}
	_, err := c.send(h, args, nil)
	return err
}

// Emit sends a signal from the object at path; dest, when set, is the one
// connection it goes to, and otherwise it goes to every connection whose
// match rules take it.
func (c *Conn) Emit(dest string, path ObjectPath, iface, member string, args ...any) error {
	_, err := c.send(header{typ: typeSignal, dest: dest, path: path, iface: iface, member: member}, args, nil)
	return err
}

// Done is closed once the connection has ended, by Close or because the
// bus went.
func (c *Conn) Done() <-chan struct{} { return c.done }

// NextCall waits for the next method call to this connection. Calls
// whose arguments cannot be read are refused here with InvalidArgs.
func (c *Conn) NextCall(ctx context.Context) (*MethodCall, error) {
	for {
		m, err := next(ctx, c, &c.incoming)
		if err != nil {
			return nil, err
		}
		call := &MethodCall{Sender: m.sender, Path: m.path, Iface: m.iface, Member: m.member, Sig: m.sig, Body: m.body,
			serial: m.serial, noReply: m.flags&flagNoReplyExpected != 0}
		if m.bodyErr == nil {
			return call, nil
		}
		if err := c.ReplyError(call, ErrorInvalidArgs, m.bodyErr.Error()); err != nil {
			return nil, err
		}
	}
}

// Error names a server answers with.
const (
	ErrorInvalidArgs   = "org.freedesktop.DBus.Error.InvalidArgs"
	ErrorUnknownMethod = "org.freedesktop.DBus.Error.UnknownMethod"
	ErrorFailed        = "org.freedesktop.DBus.Error.Failed"
)

// Reply answers a method call with a return of args; a call that wanted
// no reply gets none.
func (c *Conn) Reply(call *MethodCall, args ...any) error {
	if call.noReply {
		return nil
	}
	_, err := c.send(header{typ: typeMethodReturn, dest: call.Sender, replySerial: call.serial}, args, nil)
	return err
}

// ReplyError answers a method call with the error name and a message.
func (c *Conn) ReplyError(call *MethodCall, name, text string) error {
	if call.noReply {
		return nil
	}
	_, err := c.send(header{typ: typeError, dest: call.Sender, errorName: name, replySerial: call.serial}, []any{text}, nil)
	return err
}

// ErrNameTaken is RequestName's answer when another connection owns the
// name.
var ErrNameTaken = errors.New("the name is owned by another connection")

// RequestName makes the connection the owner of a well-known name,
// without queueing for it when another connection has it.
func (c *Conn) RequestName(ctx context.Context, name string) error {
	const doNotQueue = 4
	const primaryOwner, alreadyOwner = 1, 4
	body, err := c.Call(ctx, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "RequestName", name, uint32(doNotQueue))
	if err != nil {
		return fmt.Errorf("request the name %s: %w", name, err)
	}
	if r, _ := body[0].(uint32); r != primaryOwner && r != alreadyOwner {
		return fmt.Errorf("request the name %s: %w", name, ErrNameTaken)
	}
	return nil
}

// read reads messages until the connection ends, handing replies to
// their calls and queueing signals. Only replies keep their descriptors.
func (c *Conn) read(r *bufio.Reader, sr source) {
	defer close(c.done)
	defer sr.close()
	var err error
	for {
		var m *message
		if m, err = readMessage(r, sr.take); err != nil {
			break
		}
		if m.typ != typeMethodReturn && m.typ != typeError {
			closeFiles(m.files)
		}
		switch m.typ {
		case typeMethodReturn, typeError:
			c.mu.Lock()
			reply, ok := c.calls[m.replySerial]
			delete(c.calls, m.replySerial)
			c.mu.Unlock()
			if ok {
				reply <- m
			} else {
				closeFiles(m.files)
			}
		case typeSignal:
			if m.bodyErr != nil {
				continue // not a signal this client could use
			}
			c.mu.Lock()
			c.signals.push(&Signal{Sender: m.sender, Path: m.path, Name: m.iface + "." + m.member, Sig: m.sig, Body: m.body})
			c.mu.Unlock()
		case typeMethodCall:
			c.mu.Lock()
			c.incoming.push(m)
			c.mu.Unlock()
		}
	}
	c.nc.Close()
	c.mu.Lock()
	c.err = fmt.Errorf("%w: %v", ErrClosed, err)
	for serial, reply := range c.calls {
		close(reply)
		delete(c.calls, serial)
	}
	c.mu.Unlock()
	wake(c.signals.ready)
	wake(c.incoming.ready)
}

func wake(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// NextSignal returns the next signal the connection received, in order.
func (c *Conn) NextSignal(ctx context.Context) (*Signal, error) {
	return next(ctx, c, &c.signals)
}

// AddMatch asks the bus for the signals that match rule.
func (c *Conn) AddMatch(ctx context.Context, rule string) error {
	_, err := c.Call(ctx, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch", rule)
	return err
}

// unsubscribeTimeout bounds withdrawing a subscription, which happens
// as its subscriber stops, often because its context ended.
const unsubscribeTimeout = 10 * time.Second

// Subscribe asks the bus for the signals that match each of rules, and
// returns the function that withdraws them, for a subscriber that stops
// before the connection closes.
func (c *Conn) Subscribe(ctx context.Context, rules ...string) (unsubscribe func(), err error) {
	var added []string
	unsubscribe = func() {
		ctx, cancel := context.WithTimeout(context.Background(), unsubscribeTimeout)
		defer cancel()
		for _, rule := range added {
			// A connection that is closing has no rules left to withdraw.
			c.Call(ctx, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "RemoveMatch", rule)
		}
	}
	for _, rule := range rules {
		if err := c.AddMatch(ctx, rule); err != nil {
			unsubscribe()
			return nil, fmt.Errorf("subscribe to %s: %w", rule, err)
		}
		added = append(added, rule)
	}
	return unsubscribe, nil
}

// readMessage reads one message, taking the descriptors it carries with
// take. A body that cannot be read leaves the message's bodyErr set: the
// header was whole, so the stream goes on.
func readMessage(r io.Reader, take func(n int) []*os.File) (*message, error) {
	var fixed [16]byte
	if _, err := io.ReadFull(r, fixed[:]); err != nil {
		return nil, err
	}
	var order binary.ByteOrder
	switch fixed[0] {
	case 'l':
		order = binary.LittleEndian
	case 'B':
		order = binary.BigEndian
	default:
		return nil, fmt.Errorf("busclient: bad byte order %q", fixed[0])
	}
	bodyLen, fieldsLen := order.Uint32(fixed[4:]), order.Uint32(fixed[12:])
	headerLen := (16 + uint64(fieldsLen) + 7) &^ 7
	if headerLen+uint64(bodyLen) > maxMessage {
		return nil, fmt.Errorf("busclient: a message of %d bytes", headerLen+uint64(bodyLen))
	}
	rest := make([]byte, headerLen-16+uint64(bodyLen))
	if _, err := io.ReadFull(r, rest); err != nil {
		return nil, err
	}
	m := &message{typ: fixed[1], flags: fixed[2], serial: order.Uint32(fixed[8:])}
	var nfds uint32
	d := &decoder{b: append(fixed[12:16:16], rest[:fieldsLen]...), order: order, base: 12}
	fields, err := d.value("a(yv)", 0)
	if err != nil {
		return nil, err
	}
	for _, f := range fields.([]any) {
		f := f.([]any)
		code, v := f[0].(byte), f[1].(Variant).Value
		switch code {
		case fieldPath:
			m.path, _ = v.(ObjectPath)
		case fieldInterface:
			m.iface, _ = v.(string)
		case fieldMember:
			m.member, _ = v.(string)
		case fieldErrorName:
			m.errorName, _ = v.(string)
		case fieldReplySerial:
			m.replySerial, _ = v.(uint32)
		case fieldSender:
			m.sender, _ = v.(string)
		case fieldSignature:
			m.sig, _ = v.(string)
		case fieldUnixFDs:
			nfds, _ = v.(uint32)
		}
	}
	m.files = take(int(min(nfds, maxFDs)))
	body := &decoder{b: rest[headerLen-16:], order: order, files: m.files}
	if m.body, m.bodyErr = body.values(m.sig, 0); m.bodyErr == nil && body.i != len(body.b) {
		m.bodyErr = errors.New("busclient: bytes after the body")
	}
	return m, nil
}
