// SPDX-License-Identifier: Apache-2.0

package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"math/bits"
	"slices"
	"time"
)

// A queued message's record in bucket msgs is binary, written by
// encodeMessage:
//
//	0x01                          the version
//	uvarint                       the length of Raw, whose bytes end the record
//	string  ID, Device, Token, App, Sender
//	uvarint Seq
//	string  CollapseKey, Priority
//	uvarint flags: 1 DelayWhileIdle, 2 Receipt
//	map     Data, Notification
//	string  Topic, Urgency, OriginID
//	time    Sent, Expiry
//	bytes   Raw
//
// A string is its uvarint length and its bytes; a map is its uvarint count
// and that many key and value strings, in no set order (sorting the keys
// would cost allocations, and nothing compares records byte for byte); a
// time is its varint Unix seconds and uvarint nanoseconds, so that every
// instant comes back (Unix nanoseconds alone would not reach the zero
// time, nor any instant outside 1678 to 2262, which JSON records can
// hold). An empty map and an empty Raw come back nil, as they did from
// the JSON records of earlier versions (omitempty).
//
// Raw's length comes first so that the decoder can copy all the string
// fields out of the transaction's memory in one allocation: the bytes
// between the header and Raw.
//
// Earlier versions wrote the JSON of Message, which starts with '{';
// decodeMessage reads those too, since a queue outlives upgrades. The
// cluster store (package natsstore) keeps its message bodies as that JSON
// still, so Message's JSON names stay as they are.
const recordVersion = 0x01

// Bits of a record's flags.
const (
	flagDelayWhileIdle = 1 << iota
	flagReceipt
	knownFlags = flagDelayWhileIdle | flagReceipt
)

// encodeMessage appends m's record to dst, growing dst at most once.
func encodeMessage(dst []byte, m *Message) []byte {
	if size := encodedSize(m); cap(dst)-len(dst) < size {
		dst = append(make([]byte, 0, len(dst)+size), dst...)
	}
	dst = append(dst, recordVersion)
	dst = binary.AppendUvarint(dst, uint64(len(m.Raw)))
	dst = appendString(dst, m.ID)
	dst = appendString(dst, m.Device)
	dst = appendString(dst, m.Token)
	dst = appendString(dst, m.App)
	dst = appendString(dst, m.Sender)
	dst = binary.AppendUvarint(dst, m.Seq)
	dst = appendString(dst, m.CollapseKey)
	dst = appendString(dst, m.Priority)
	dst = binary.AppendUvarint(dst, flags(m))
	dst = appendMap(dst, m.Data)
	dst = appendMap(dst, m.Notification)
	dst = appendString(dst, m.Topic)
	dst = appendString(dst, m.Urgency)
	dst = appendString(dst, m.OriginID)
	dst = appendTime(dst, m.Sent)
	dst = appendTime(dst, m.Expiry)
	return append(dst, m.Raw...)
}

// encodedSize is the length of m's record.
func encodedSize(m *Message) int {
	return 1 + uvarintSize(uint64(len(m.Raw))) +
		stringSize(m.ID) + stringSize(m.Device) + stringSize(m.Token) + stringSize(m.App) + stringSize(m.Sender) +
		uvarintSize(m.Seq) + stringSize(m.CollapseKey) + stringSize(m.Priority) + uvarintSize(flags(m)) +
		mapSize(m.Data) + mapSize(m.Notification) +
		stringSize(m.Topic) + stringSize(m.Urgency) + stringSize(m.OriginID) +
		timeSize(m.Sent) + timeSize(m.Expiry) + len(m.Raw)
}

func flags(m *Message) uint64 {
	var f uint64
	if m.DelayWhileIdle {
		f |= flagDelayWhileIdle
	}
	if m.Receipt {
		f |= flagReceipt
	}
	return f
}

func appendString(dst []byte, s string) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(s))), s...)
}

func appendMap(dst []byte, m map[string]string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(m)))
	for k, v := range m {
		dst = appendString(appendString(dst, k), v)
	}
	return dst
}

func appendTime(dst []byte, t time.Time) []byte {
	return binary.AppendUvarint(binary.AppendVarint(dst, t.Unix()), uint64(t.Nanosecond()))
}

func uvarintSize(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

// varintSize is the length of binary.AppendVarint's zig-zag encoding.
func varintSize(x int64) int { return uvarintSize(uint64(x<<1) ^ uint64(x>>63)) }

func stringSize(s string) int { return uvarintSize(uint64(len(s))) + len(s) }

func mapSize(m map[string]string) int {
	n := uvarintSize(uint64(len(m)))
	for k, v := range m {
		n += stringSize(k) + stringSize(v)
	}
	return n
}

func timeSize(t time.Time) int {
	return varintSize(t.Unix()) + uvarintSize(uint64(t.Nanosecond()))
}

// decodeMessage reads a record that encodeMessage or an earlier version's
// JSON wrote into m, which it overwrites. m shares no memory with v, which
// is bbolt's and valid only during the transaction. Times come back in UTC:
// only the instant is kept. Its errors wrap ErrCorrupt.
func decodeMessage(v []byte, m *Message) error {
	*m = Message{}
	if len(v) == 0 {
		return corrupt(errors.New("empty"))
	}
	switch v[0] {
	case '{':
		// Into a message of its own: passing m to json would move every
		// caller's message to the heap, binary records' included.
		var old Message
		if err := json.Unmarshal(v, &old); err != nil {
			return corrupt(err)
		}
		old.Sent, old.Expiry = old.Sent.UTC(), old.Expiry.UTC()
		*m = old
		return nil
	case recordVersion:
	default:
		return corrupt(fmt.Errorf("unknown version 0x%02x", v[0]))
	}
	rawLen, n := binary.Uvarint(v[1:])
	if n <= 0 {
		return corrupt(errors.New("truncated raw length"))
	}
	head := 1 + n
	if rawLen > uint64(len(v)-head) {
		return corrupt(fmt.Errorf("truncated raw: %d bytes of %d", len(v)-head, rawLen))
	}
	fields := v[head : len(v)-int(rawLen)]
	r := recordReader{b: fields, s: string(fields)}
	m.ID = r.string("id", "")
	m.Device = r.string("device", "")
	m.Token = r.string("token", "")
	m.App = r.string("app", "")
	m.Sender = r.string("sender", "")
	m.Seq = r.uvarint("seq", "", "")
	m.CollapseKey = r.string("collapse key", "")
	m.Priority = r.string("priority", "")
	f := r.uvarint("flags", "", "")
	if r.err == nil && f&^knownFlags != 0 {
		// A later version's, whose meaning this one would drop.
		r.err = fmt.Errorf("unknown flags 0x%x", f&^knownFlags)
	}
	m.DelayWhileIdle, m.Receipt = f&flagDelayWhileIdle != 0, f&flagReceipt != 0
	m.Data = r.stringMap("data")
	m.Notification = r.stringMap("notification")
	m.Topic = r.string("topic", "")
	m.Urgency = r.string("urgency", "")
	m.OriginID = r.string("origin id", "")
	m.Sent = r.time("sent time")
	m.Expiry = r.time("expiry")
	if r.err == nil && r.off != len(r.b) {
		r.err = fmt.Errorf("%d stray bytes before raw", len(r.b)-r.off)
	}
	if r.err != nil {
		*m = Message{}
		return corrupt(r.err)
	}
	if rawLen > 0 {
		m.Raw = slices.Clone(v[len(v)-int(rawLen):])
	}
	return nil
}

// corrupt is the error of a record that does not decode, for what is wrong
// with it.
func corrupt(err error) error {
	return fmt.Errorf("decode queued message: %w: %w", ErrCorrupt, err)
}

// recordReader reads the fields of a record in order. Its strings are cut
// from s, one copy of b; its first error stops it, and reads after that
// return zero values. A read names its field in two parts, what and part
// ("data", " key"), put together only for an error: joining them on every
// read would cost an allocation each.
type recordReader struct {
	b   []byte
	s   string
	off int
	err error
}

// check records the error of binary.Uvarint's or Varint's n, if any, and
// moves past the n bytes read.
func (r *recordReader) check(n int, what, part, unit string) {
	switch {
	case n == 0:
		r.err = fmt.Errorf("truncated %s%s%s", what, part, unit)
	case n < 0:
		r.err = fmt.Errorf("malformed %s%s%s: varint overflows 64 bits", what, part, unit)
	}
	r.off += max(n, 0)
}

func (r *recordReader) uvarint(what, part, unit string) uint64 {
	if r.err != nil {
		return 0
	}
	x, n := binary.Uvarint(r.b[r.off:])
	r.check(n, what, part, unit)
	return x
}

func (r *recordReader) varint(what, part, unit string) int64 {
	if r.err != nil {
		return 0
	}
	x, n := binary.Varint(r.b[r.off:])
	r.check(n, what, part, unit)
	return x
}

func (r *recordReader) string(what, part string) string {
	n := r.uvarint(what, part, " length")
	if r.err != nil {
		return ""
	}
	if n > uint64(len(r.b)-r.off) {
		r.err = fmt.Errorf("truncated %s%s: %d bytes of %d", what, part, len(r.b)-r.off, n)
		return ""
	}
	s := r.s[r.off : r.off+int(n)]
	r.off += int(n)
	return s
}

func (r *recordReader) stringMap(what string) map[string]string {
	n := r.uvarint(what, "", " count")
	if r.err != nil || n == 0 {
		return nil
	}
	// A pair takes two bytes at least: a count beyond that is no
	// record's, and must not size the map.
	if n > uint64(len(r.b)-r.off)/2 {
		r.err = fmt.Errorf("truncated %s: %d entries in %d bytes", what, n, len(r.b)-r.off)
		return nil
	}
	m := make(map[string]string, n)
	for i := range int(n) {
		k := r.string(what, " key")
		v := r.string(what, " value")
		if r.err != nil {
			return nil
		}
		if m[k] = v; len(m) != i+1 {
			r.err = fmt.Errorf("malformed %s: key %q twice", what, k)
			return nil
		}
	}
	return m
}

func (r *recordReader) time(what string) time.Time {
	sec := r.varint(what, "", " seconds")
	nsec := r.uvarint(what, "", " nanoseconds")
	if r.err != nil {
		return time.Time{}
	}
	if nsec >= uint64(time.Second) {
		r.err = fmt.Errorf("malformed %s: %d nanoseconds", what, nsec)
		return time.Time{}
	}
	return time.Unix(sec, int64(nsec)).UTC()
}
