// SPDX-License-Identifier: Apache-2.0

package wire

import (
	"encoding/binary"
	"fmt"
	"math"
	"sync"
)

// Compact frame type codes: the first byte of a compact frame. Codes are
// below maxCode; a frame that starts with any other byte is JSON, which
// starts with '{' (0x7b).
const (
	maxCode          = 0x20
	codeMessage byte = 0x01
	codeAck     byte = 0x02
)

// Value kinds, the low two bits of a field's key byte.
const (
	kindUint  = 0 // an unsigned LEB128 varint
	kindBytes = 1 // a varint length, then that many bytes
	kindPair  = 2 // two kindBytes values: a key and its value
)

// Field numbers of a compact message frame.
const (
	msgNumber       = 1
	msgID           = 2
	msgReg          = 3
	msgToken        = 4
	msgApp          = 5
	msgFrom         = 6
	msgCollapseKey  = 7
	msgData         = 8
	msgPriority     = 9
	msgTTL          = 10
	msgSentTime     = 11
	msgNotification = 12
	msgTopic        = 13
	msgRaw          = 14
)

// Field numbers of a compact ack frame.
const (
	ackNumber = 1
	ackID     = 2
)

// Bounds on what one session's codec remembers, so that a peer that never
// acks, or a server that binds without end, costs a fixed amount: past
// them, the frames still carry everything, only longer.
const (
	// MaxHandle is the largest registration handle; a server that has
	// bound them all starts again at 1, and binds anew.
	MaxHandle = 1024
	// maxNumbered bounds the message numbers a codec keeps until their
	// ack; past it messages go without one and are acked by ID.
	maxNumbered = 4096
)

// binding is what a registration handle stands for in a session.
type binding struct{ token, app, from string }

// Codec encodes and decodes the frames of one session in the version its
// hello and welcome agreed on. Version 1 frames are JSON (Encode, Decode);
// version 2 sends message and ack frames in a compact binary form and
// every other frame as in version 1. A version 2 codec keeps per-session
// state, so each session needs its own, and the frames it encodes must be
// sent in the order they were encoded, none left out: a message frame
// may bind a registration handle that later ones use. It is safe for
// concurrent use.
type Codec struct {
	version int

	mu sync.Mutex
	// The encoding side of messages (the server).
	handles  map[string]uint64 // token → handle bound in this session
	number   uint64            // of the last numbered message
	numbered map[uint64]string // number → ID, until the ack
	// The decoding side of messages (the agent).
	bound   map[uint64]binding
	numbers map[string]uint64 // ID → number, until the ack
}

// NewCodec returns a codec for a session of protocol version v, 1 to
// Version.
func NewCodec(v int) (*Codec, error) {
	if v < 1 || v > Version {
		return nil, fmt.Errorf("protocol version %d, want 1 to %d", v, Version)
	}
	return &Codec{version: v}, nil
}

// Version is the protocol version the codec speaks.
func (c *Codec) Version() int { return c.version }

// WebSocket message types (RFC 6455 opcodes) that carry frames.
const (
	TextMessage   = 1
	BinaryMessage = 2
)

// MessageType is the WebSocket message type that carries frame: a JSON
// frame goes in a text message, a compact one in a binary message.
func MessageType(frame []byte) int {
	if compact(frame) {
		return BinaryMessage
	}
	return TextMessage
}

// compact reports whether frame is a compact frame.
func compact(frame []byte) bool { return len(frame) > 0 && frame[0] < maxCode }

// Encode validates b and encodes it as one frame of the codec's version.
// In version 2, message and ack frames, which carry no ref, are compact.
func (c *Codec) Encode(ref string, b Body) ([]byte, error) {
	if c.version < 2 || (b.FrameType() != TypeMessage && b.FrameType() != TypeAck) {
		return Encode(ref, b)
	}
	if ref != "" {
		return nil, fmt.Errorf("encode %s frame: %w: a compact frame has no ref", b.FrameType(), ErrBadFrame)
	}
	if err := b.Validate(); err != nil {
		return nil, fmt.Errorf("encode %s frame: %w", b.FrameType(), err)
	}
	var out []byte
	c.mu.Lock()
	switch v := b.(type) {
	case Message:
		out = c.encodeMessage(v)
	case *Message:
		out = c.encodeMessage(*v)
	case Ack:
		out = c.encodeAck(v)
	case *Ack:
		out = c.encodeAck(*v)
	}
	c.mu.Unlock()
	if len(out) > MaxFrameSize {
		return nil, fmt.Errorf("encode %s frame: %w: %d bytes, limit %d", b.FrameType(), ErrBadFrame, len(out), MaxFrameSize)
	}
	return out, nil
}

// Decode parses one frame of the codec's version. A version 2 codec takes
// JSON frames and compact ones; a compact frame's body is decoded and
// validated here already, and Frame.Decode hands it over.
func (c *Codec) Decode(data []byte) (Frame, error) {
	if c.version < 2 || !compact(data) {
		return Decode(data)
	}
	if len(data) > MaxFrameSize {
		return Frame{}, fmt.Errorf("%w: %d bytes, limit %d", ErrBadFrame, len(data), MaxFrameSize)
	}
	r := reader{data: data[1:]}
	c.mu.Lock()
	defer c.mu.Unlock()
	switch data[0] {
	case codeMessage:
		return c.decodeMessage(&r)
	case codeAck:
		return c.decodeAck(&r)
	}
	// Answered with unknown_type, like a JSON frame of an unknown type.
	return Frame{Type: Type(fmt.Sprintf("compact 0x%02x", data[0]))}, nil
}

// encodeMessage encodes m, which is valid; under c.mu. The first message
// to a registration in the session binds a handle to its token, app and
// sender, and later ones carry the handle alone; a number stands for the
// ID in the ack. A valid message always fits in a frame (its fields'
// limits keep it under 30 KB), so Encode never drops a frame whose
// binding or number the codec has taken note of.
func (c *Codec) encodeMessage(m Message) []byte {
	w := make(writer, 0, 48+len(m.ID)+len(m.Token)+len(m.App)+len(m.From)+len(m.CollapseKey)+len(m.Topic)+
		len(m.Raw)+DataSize(m.Data)+DataSize(m.Notification)+8*(len(m.Data)+len(m.Notification)))
	w = append(w, codeMessage)
	if len(c.numbered) < maxNumbered {
		c.number++
		if c.numbered == nil {
			c.numbered = make(map[uint64]string)
		}
		c.numbered[c.number] = m.ID
		w.uint(msgNumber, c.number)
	}
	w.bytes(msgID, m.ID)
	handle, ok := c.handles[m.Token]
	if !ok {
		handle = c.bind(m.Token)
	}
	w.uint(msgReg, handle)
	if !ok {
		w.bytes(msgToken, m.Token)
		w.bytes(msgApp, m.App)
		w.bytes(msgFrom, m.From)
	}
	w.bytes(msgCollapseKey, m.CollapseKey)
	for k, v := range m.Data {
		w.pair(msgData, k, v)
	}
	w.bytes(msgPriority, m.Priority)
	w.uint(msgTTL, uint64(m.TTL))
	if m.SentTime > 0 { // zero or less is unknown
		w.uint(msgSentTime, uint64(m.SentTime))
	}
	for k, v := range m.Notification {
		w.pair(msgNotification, k, v)
	}
	w.bytes(msgTopic, m.Topic)
	w.bytes(msgRaw, string(m.Raw))
	return w
}

// bind gives token a handle; under c.mu. Once every handle is taken they
// are all given up and bound anew, which a binding in the frame allows.
func (c *Codec) bind(token string) uint64 {
	if c.handles == nil || len(c.handles) >= MaxHandle {
		c.handles = make(map[string]uint64)
	}
	h := uint64(len(c.handles) + 1)
	c.handles[token] = h
	return h
}

// encodeAck encodes a, which is valid; under c.mu. A message that came
// with a number is acked by it, anything else by its ID.
func (c *Codec) encodeAck(a Ack) []byte {
	w := make(writer, 0, 1+4*len(a.IDs))
	w = append(w, codeAck)
	for _, id := range a.IDs {
		if n, ok := c.numbers[id]; ok {
			delete(c.numbers, id)
			w.uint(ackNumber, n)
			continue
		}
		w.bytes(ackID, id)
	}
	return w
}

// decodeMessage decodes and validates a message's fields; under c.mu.
func (c *Codec) decodeMessage(r *reader) (Frame, error) {
	var m Message
	var number, handle uint64
	var bind binding
	seen := 0 // bits of the single fields seen
	for !r.done() {
		field, kind, err := r.key()
		if err != nil {
			return Frame{}, err
		}
		if kind != kindPair && field <= msgRaw {
			if seen&(1<<field) != 0 {
				return Frame{}, fmt.Errorf("%w: message field %d given twice", ErrBadFrame, field)
			}
			seen |= 1 << field
		}
		switch {
		case field == msgNumber && kind == kindUint:
			number, err = r.uint()
		case field == msgReg && kind == kindUint:
			handle, err = r.uint()
		case field == msgTTL && kind == kindUint:
			m.TTL, err = r.int64()
		case field == msgSentTime && kind == kindUint:
			m.SentTime, err = r.int64()
		case field == msgID && kind == kindBytes:
			m.ID, err = r.string()
		case field == msgToken && kind == kindBytes:
			bind.token, err = r.string()
		case field == msgApp && kind == kindBytes:
			bind.app, err = r.string()
		case field == msgFrom && kind == kindBytes:
			bind.from, err = r.string()
		case field == msgCollapseKey && kind == kindBytes:
			m.CollapseKey, err = r.string()
		case field == msgPriority && kind == kindBytes:
			m.Priority, err = r.string()
		case field == msgTopic && kind == kindBytes:
			m.Topic, err = r.string()
		case field == msgRaw && kind == kindBytes:
			var raw string
			raw, err = r.string()
			m.Raw = []byte(raw)
		case field == msgData && kind == kindPair:
			m.Data, err = r.pair(m.Data)
		case field == msgNotification && kind == kindPair:
			m.Notification, err = r.pair(m.Notification)
		case field == msgNumber || field == msgReg || field == msgTTL || field == msgSentTime || (field >= msgID && field <= msgRaw):
			return Frame{}, fmt.Errorf("%w: message field %d of kind %d, want another kind", ErrBadFrame, field, kind)
		default:
			err = r.skip(kind) // a field of a later version
		}
		if err != nil {
			return Frame{}, err
		}
	}
	if handle < 1 || handle > MaxHandle {
		return Frame{}, fmt.Errorf("%w: message registration handle %d, want 1 to %d", ErrBadFrame, handle, MaxHandle)
	}
	binds := bind != binding{}
	if !binds {
		var ok bool
		if bind, ok = c.bound[handle]; !ok {
			return Frame{}, fmt.Errorf("%w: message to registration handle %d, which the session has not bound", ErrBadFrame, handle)
		}
	}
	m.Token, m.App, m.From = bind.token, bind.app, bind.from
	if err := m.Validate(); err != nil {
		return Frame{}, fmt.Errorf("message body: %w", err)
	}
	if binds {
		if c.bound == nil {
			c.bound = make(map[uint64]binding)
		}
		c.bound[handle] = bind
	}
	if number != 0 && len(c.numbers) < maxNumbered {
		if c.numbers == nil {
			c.numbers = make(map[string]uint64)
		}
		c.numbers[m.ID] = number
	}
	return Frame{Type: TypeMessage, decoded: m}, nil
}

// decodeAck decodes an ack's fields and turns its numbers back into the
// IDs they stand for; under c.mu.
func (c *Codec) decodeAck(r *reader) (Frame, error) {
	// A number's place in a.IDs is kept until its ID is known, so that
	// the IDs come in the order of the frame.
	var numbers []uint64
	var at []int
	var a Ack
	for !r.done() {
		field, kind, err := r.key()
		if err != nil {
			return Frame{}, err
		}
		switch {
		case field == ackNumber && kind == kindUint:
			var n uint64
			n, err = r.uint()
			numbers, at = append(numbers, n), append(at, len(a.IDs))
			a.IDs = append(a.IDs, "")
		case field == ackID && kind == kindBytes:
			var id string
			id, err = r.string()
			a.IDs = append(a.IDs, id)
		case field == ackNumber || field == ackID:
			return Frame{}, fmt.Errorf("%w: ack field %d of kind %d, want another kind", ErrBadFrame, field, kind)
		default:
			err = r.skip(kind)
		}
		if err != nil {
			return Frame{}, err
		}
		if len(a.IDs) > MaxAckIDs {
			return Frame{}, fmt.Errorf("%w: ack of more than %d ids", ErrBadFrame, MaxAckIDs)
		}
	}
	// Forgotten only once the whole frame is good; a number given twice
	// is an ID given twice, which an ack allows.
	for i, n := range numbers {
		id, ok := c.numbered[n]
		if !ok {
			return Frame{}, fmt.Errorf("%w: ack of message number %d, which the session has not sent or has had acked", ErrBadFrame, n)
		}
		a.IDs[at[i]] = id
	}
	if err := a.Validate(); err != nil {
		return Frame{}, fmt.Errorf("ack body: %w", err)
	}
	for _, n := range numbers {
		delete(c.numbered, n)
	}
	if len(c.numbered) == 0 {
		// A map keeps the room it grew to: a server's idle sessions,
		// all acked, hold none.
		c.numbered = nil
	}
	return Frame{Type: TypeAck, decoded: a}, nil
}

// writer appends the fields of a compact frame.
type writer []byte

func (w *writer) key(field, kind int) { *w = append(*w, byte(field<<2|kind)) }

func (w *writer) uint(field int, v uint64) {
	w.key(field, kindUint)
	*w = binary.AppendUvarint(*w, v)
}

// bytes appends a string field, unless it is empty: an absent field.
func (w *writer) bytes(field int, s string) {
	if s == "" {
		return
	}
	w.key(field, kindBytes)
	w.raw(s)
}

func (w *writer) pair(field int, k, v string) {
	w.key(field, kindPair)
	w.raw(k)
	w.raw(v)
}

func (w *writer) raw(s string) {
	*w = binary.AppendUvarint(*w, uint64(len(s)))
	*w = append(*w, s...)
}

// reader takes the fields of a compact frame apart.
type reader struct{ data []byte }

func (r *reader) done() bool { return len(r.data) == 0 }

func (r *reader) key() (field, kind int, err error) {
	b := r.data[0]
	r.data = r.data[1:]
	field, kind = int(b>>2), int(b&3)
	if field == 0 || kind > kindPair {
		return 0, 0, fmt.Errorf("%w: field key 0x%02x", ErrBadFrame, b)
	}
	return field, kind, nil
}

func (r *reader) uint() (uint64, error) {
	v, n := binary.Uvarint(r.data)
	if n <= 0 {
		return 0, fmt.Errorf("%w: truncated or overlong varint", ErrBadFrame)
	}
	r.data = r.data[n:]
	return v, nil
}

// int64 reads a varint that must fit an int64; the body's Validate
// checks its range.
func (r *reader) int64() (int64, error) {
	v, err := r.uint()
	if err == nil && v > math.MaxInt64 {
		err = fmt.Errorf("%w: varint %d over the largest integer", ErrBadFrame, v)
	}
	return int64(v), err
}

func (r *reader) string() (string, error) {
	n, err := r.uint()
	if err != nil {
		return "", err
	}
	if n > uint64(len(r.data)) {
		return "", fmt.Errorf("%w: a field of %d bytes with %d left in the frame", ErrBadFrame, n, len(r.data))
	}
	s := string(r.data[:n])
	r.data = r.data[n:]
	return s, nil
}

// pair reads a key and value into m, made when nil.
func (r *reader) pair(m map[string]string) (map[string]string, error) {
	k, err := r.string()
	if err != nil {
		return m, err
	}
	v, err := r.string()
	if err != nil {
		return m, err
	}
	if m == nil {
		m = make(map[string]string)
	}
	m[k] = v
	return m, nil
}

// skip passes over a value of kind.
func (r *reader) skip(kind int) error {
	var err error
	switch kind {
	case kindUint:
		_, err = r.uint()
	case kindBytes:
		_, err = r.string()
	case kindPair:
		if _, err = r.string(); err == nil {
			_, err = r.string()
		}
	}
	return err
}
