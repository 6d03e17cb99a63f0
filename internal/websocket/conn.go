// SPDX-License-Identifier: Apache-2.0

package websocket

import (
	"bufio"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// Message types: the frame opcodes of RFC 6455 section 5.2.
const (
	TextMessage   = 1
	BinaryMessage = 2
	CloseMessage  = 8
	PingMessage   = 9
	PongMessage   = 10
)

// Close codes of RFC 6455 section 7.4.1 that this package sends or names.
const (
	CloseNormalClosure    = 1000
	CloseGoingAway        = 1001
	CloseProtocolError    = 1002
	CloseNoStatusReceived = 1005
	CloseMessageTooBig    = 1009
)

const (
	// readBufferSize is the reader's buffer: a frame header and a
	// typical message in one read.
	readBufferSize = 4096
	// maxControlPayload is RFC 6455's bound on a control frame's payload.
	maxControlPayload = 125
	// maxKeptWriteBuffer bounds the write buffer a connection keeps
	// between writes, so that one large message does not hold its size
	// for the life of the connection.
	maxKeptWriteBuffer = 64 << 10
	// readChunk is how much of a frame's payload is allocated at a
	// time, so that a length field cannot make the reader allocate more
	// than arrives.
	readChunk = 32 << 10
	// controlWriteWait bounds the writes the reader makes on its own:
	// the answer to a ping, the echo of a close frame.
	controlWriteWait = time.Second
)

var (
	// ErrReadLimit is returned by ReadMessage for a message over the
	// read limit; the connection is closed with CloseMessageTooBig.
	ErrReadLimit = errors.New("websocket: read limit exceeded")
	// ErrCloseSent is returned by writes after a close frame was sent.
	ErrCloseSent = errors.New("websocket: close sent")
)

// CloseError is the peer's close frame, returned by ReadMessage.
type CloseError struct {
	// Code is the close code, CloseNoStatusReceived when the frame had
	// none.
	Code int
	Text string
}

func (e *CloseError) Error() string {
	return "websocket: close " + strconv.Itoa(e.Code) + ": " + e.Text
}

// ProtocolError is a frame from the peer that breaks RFC 6455; the
// connection is closed with CloseProtocolError.
type ProtocolError struct{ Reason string }

func (e *ProtocolError) Error() string { return "websocket: protocol error: " + e.Reason }

// FormatCloseMessage builds a close frame's payload.
func FormatCloseMessage(code int, text string) []byte {
	if code == CloseNoStatusReceived {
		return []byte{}
	}
	b := make([]byte, 2+len(text))
	binary.BigEndian.PutUint16(b, uint16(code))
	copy(b[2:], text)
	return b
}

// Conn is a client WebSocket connection.
type Conn struct {
	nc          net.Conn
	subprotocol string

	// The reader's: only ReadMessage and the Set*Handler and
	// SetReadLimit calls made between reads touch them.
	br          *bufio.Reader
	readLimit   int64
	readErr     error // sticky: once a read fails, every read does
	handlePing  func(string) error
	handlePong  func(string) error
	handleClose func(int, string) error

	wmu           sync.Mutex
	writeDeadline time.Time
	wbuf          []byte
	closeSent     bool
}

func newConn(nc net.Conn, br *bufio.Reader, subprotocol string) *Conn {
	c := &Conn{nc: nc, br: br, subprotocol: subprotocol}
	c.SetPingHandler(nil)
	c.SetPongHandler(nil)
	c.SetCloseHandler(nil)
	return c
}

// Subprotocol is the subprotocol the server chose, or "".
func (c *Conn) Subprotocol() string { return c.subprotocol }

// NetConn is the connection underneath (TLS for wss).
func (c *Conn) NetConn() net.Conn { return c.nc }

// Close closes the connection without a close frame.
func (c *Conn) Close() error { return c.nc.Close() }

// SetReadDeadline sets the deadline of reads; after one times out the
// connection cannot be read any more.
func (c *Conn) SetReadDeadline(t time.Time) error { return c.nc.SetReadDeadline(t) }

// SetWriteDeadline sets the deadline WriteMessage uses; WriteControl takes
// its own.
func (c *Conn) SetWriteDeadline(t time.Time) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.writeDeadline = t
	return nil
}

// SetReadLimit bounds the size of a message; zero means no bound.
func (c *Conn) SetReadLimit(limit int64) { c.readLimit = limit }

// SetPingHandler sets what ReadMessage calls with a ping's payload; nil
// means answering with a pong.
func (c *Conn) SetPingHandler(h func(appData string) error) {
	if h == nil {
		h = func(appData string) error {
			err := c.WriteControl(PongMessage, []byte(appData), time.Now().Add(controlWriteWait))
			if errors.Is(err, ErrCloseSent) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil
			}
			return err
		}
	}
	c.handlePing = h
}

// SetPongHandler sets what ReadMessage calls with a pong's payload; nil
// means nothing.
func (c *Conn) SetPongHandler(h func(appData string) error) {
	if h == nil {
		h = func(string) error { return nil }
	}
	c.handlePong = h
}

// SetCloseHandler sets what ReadMessage calls with the peer's close frame
// before it returns the CloseError; nil means echoing the close code.
func (c *Conn) SetCloseHandler(h func(code int, text string) error) {
	if h == nil {
		h = func(code int, _ string) error {
			c.WriteControl(CloseMessage, FormatCloseMessage(code, ""), time.Now().Add(controlWriteWait))
			return nil
		}
	}
	c.handleClose = h
}

// ReadMessage reads the next text or binary message, answering the
// control frames that come before it through the handlers. A close frame
// from the peer is returned as a *CloseError.
func (c *Conn) ReadMessage() (messageType int, p []byte, err error) {
	if c.readErr != nil {
		return 0, nil, c.readErr
	}
	messageType, p, err = c.readMessage()
	if err != nil {
		c.readErr = err
		var pe *ProtocolError
		switch {
		case errors.As(err, &pe):
			c.fail(CloseProtocolError, pe.Reason)
		case err == ErrReadLimit:
			c.fail(CloseMessageTooBig, "")
		}
	}
	return messageType, p, err
}

// fail tells the peer why the connection ends, if it still can.
func (c *Conn) fail(code int, text string) {
	if len(text) > maxControlPayload-2 {
		text = text[:maxControlPayload-2]
	}
	c.WriteControl(CloseMessage, FormatCloseMessage(code, text), time.Now().Add(controlWriteWait))
}

type frameHeader struct {
	fin    bool
	op     int
	length int64
}

func (c *Conn) readMessage() (int, []byte, error) {
	var typ int
	var msg []byte
	for {
		h, err := c.readHeader()
		if err != nil {
			return 0, nil, err
		}
		if h.op >= CloseMessage {
			if err := c.control(h); err != nil {
				return 0, nil, err
			}
			continue
		}
		switch {
		case h.op == 0 && typ == 0:
			return 0, nil, &ProtocolError{"a continuation frame outside a message"}
		case h.op == TextMessage || h.op == BinaryMessage:
			if typ != 0 {
				return 0, nil, &ProtocolError{"a new message inside a fragmented one"}
			}
			typ = h.op
		case h.op != 0:
			return 0, nil, &ProtocolError{"unknown opcode " + strconv.Itoa(h.op)}
		}
		if c.readLimit > 0 && int64(len(msg))+h.length > c.readLimit {
			return 0, nil, ErrReadLimit
		}
		if msg, err = c.readPayload(msg, h.length); err != nil {
			return 0, nil, err
		}
		if h.fin {
			if msg == nil {
				msg = []byte{}
			}
			return typ, msg, nil
		}
	}
}

// readHeader reads a frame's header: a server's frames are not masked
// and, with no extension negotiated, have no reserved bits set.
func (c *Conn) readHeader() (frameHeader, error) {
	var b [8]byte
	if _, err := io.ReadFull(c.br, b[:2]); err != nil {
		return frameHeader{}, err
	}
	h := frameHeader{fin: b[0]&0x80 != 0, op: int(b[0] & 0x0f), length: int64(b[1] & 0x7f)}
	switch {
	case b[0]&0x70 != 0:
		return h, &ProtocolError{"reserved bits set"}
	case b[1]&0x80 != 0:
		return h, &ProtocolError{"a masked frame from the server"}
	}
	switch h.length {
	case 126:
		if _, err := io.ReadFull(c.br, b[:2]); err != nil {
			return h, unexpectedEOF(err)
		}
		h.length = int64(binary.BigEndian.Uint16(b[:2]))
	case 127:
		if _, err := io.ReadFull(c.br, b[:8]); err != nil {
			return h, unexpectedEOF(err)
		}
		n := binary.BigEndian.Uint64(b[:8])
		if n>>63 != 0 {
			return h, &ProtocolError{"a frame length over 2^63"}
		}
		h.length = int64(n)
	}
	if h.op >= CloseMessage && (!h.fin || h.length > maxControlPayload) {
		return h, &ProtocolError{"a fragmented or long control frame"}
	}
	return h, nil
}

// readPayload appends n bytes of payload to buf.
func (c *Conn) readPayload(buf []byte, n int64) ([]byte, error) {
	for n > 0 {
		k := int(min(n, readChunk))
		start := len(buf)
		buf = append(buf, make([]byte, k)...)
		if _, err := io.ReadFull(c.br, buf[start:]); err != nil {
			return nil, unexpectedEOF(err)
		}
		n -= int64(k)
	}
	return buf, nil
}

// control handles a ping, pong or close frame.
func (c *Conn) control(h frameHeader) error {
	payload, err := c.readPayload(nil, h.length)
	if err != nil {
		return err
	}
	switch h.op {
	case PingMessage:
		return c.handlePing(string(payload))
	case PongMessage:
		return c.handlePong(string(payload))
	case CloseMessage:
		ce := &CloseError{Code: CloseNoStatusReceived}
		switch len(payload) {
		case 0:
		case 1:
			return &ProtocolError{"a close frame of one byte"}
		default:
			ce.Code, ce.Text = int(binary.BigEndian.Uint16(payload)), string(payload[2:])
		}
		if err := c.handleClose(ce.Code, ce.Text); err != nil {
			return err
		}
		return ce
	}
	return &ProtocolError{"unknown opcode " + strconv.Itoa(h.op)}
}

// unexpectedEOF turns the end of the connection inside a frame into
// io.ErrUnexpectedEOF: only between frames is it a clean end.
func unexpectedEOF(err error) error {
	if err == io.EOF {
		return io.ErrUnexpectedEOF
	}
	return err
}

// WriteMessage writes a text or binary message as one frame, by the
// deadline SetWriteDeadline set.
func (c *Conn) WriteMessage(messageType int, data []byte) error {
	if messageType != TextMessage && messageType != BinaryMessage {
		return fmt.Errorf("websocket: WriteMessage of type %d: want text or binary", messageType)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeFrame(messageType, data, c.writeDeadline)
}

// WriteControl writes a ping, pong or close frame by deadline (zero: no
// deadline). After a close frame, every write fails with ErrCloseSent.
func (c *Conn) WriteControl(messageType int, data []byte, deadline time.Time) error {
	if messageType < CloseMessage || messageType > PongMessage {
		return fmt.Errorf("websocket: WriteControl of type %d: want close, ping or pong", messageType)
	}
	if len(data) > maxControlPayload {
		return fmt.Errorf("websocket: a control frame's payload of %d bytes, over %d", len(data), maxControlPayload)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeFrame(messageType, data, deadline)
}

// writeFrame writes one final, masked frame; the caller holds wmu.
func (c *Conn) writeFrame(op int, data []byte, deadline time.Time) error {
	if c.closeSent {
		return ErrCloseSent
	}
	b := append(c.wbuf[:0], 0x80|byte(op))
	switch n := len(data); {
	case n <= 125:
		b = append(b, 0x80|byte(n))
	case n <= 0xffff:
		b = append(b, 0x80|126)
		b = binary.BigEndian.AppendUint16(b, uint16(n))
	default:
		b = append(b, 0x80|127)
		b = binary.BigEndian.AppendUint64(b, uint64(n))
	}
	var key [4]byte
	rand.Read(key[:])
	b = append(b, key[:]...)
	start := len(b)
	b = append(b, data...)
	for i := range data {
		b[start+i] ^= key[i&3]
	}
	if cap(b) <= maxKeptWriteBuffer {
		c.wbuf = b
	} else {
		c.wbuf = nil
	}
	c.nc.SetWriteDeadline(deadline)
	_, err := c.nc.Write(b)
	if op == CloseMessage {
		c.closeSent = true
	}
	return err
}
