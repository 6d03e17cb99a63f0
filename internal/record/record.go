// SPDX-License-Identifier: Apache-2.0

// Package record writes and reads the fields of the compact binary
// records that Tether's bbolt stores keep: varints, length-prefixed text,
// maps of text and instants, and a Reader that reads them in order, keeps
// the first error and names the field that was truncated or malformed.
//
// It is not a serialization format: a record has no field names or types
// in it, and each store owns its record's layout, version byte and any
// fallback to the records of earlier versions. It is linked into the
// device agent, so it stays small and imports nothing beyond the
// standard library.
//
// The fields it writes:
//
//	uvarint, varint  encoding/binary's
//	string           its uvarint length and its bytes
//	map              its uvarint count and that many key and value
//	                 strings, in no set order (sorting the keys would
//	                 cost allocations, and nothing compares records byte
//	                 for byte)
//	time             its varint Unix seconds and uvarint nanoseconds, so
//	                 that every instant comes back (Unix nanoseconds
//	                 alone would not reach the zero time, nor any instant
//	                 outside 1678 to 2262)
//
// Each AppendX has an XSize, its length, so that a store can size a
// record's buffer once before it writes.
package record

import (
	"encoding/binary"
	"fmt"
	"math/bits"
	"time"
)

// AppendString appends s, its length first.
func AppendString(dst []byte, s string) []byte {
	return append(binary.AppendUvarint(dst, uint64(len(s))), s...)
}

// AppendMap appends m's count and its keys and values, in no set order.
func AppendMap(dst []byte, m map[string]string) []byte {
	dst = binary.AppendUvarint(dst, uint64(len(m)))
	for k, v := range m {
		dst = AppendString(AppendString(dst, k), v)
	}
	return dst
}

// AppendTime appends t's instant; its location is not kept.
func AppendTime(dst []byte, t time.Time) []byte {
	return binary.AppendUvarint(binary.AppendVarint(dst, t.Unix()), uint64(t.Nanosecond()))
}

// Grow returns dst with room for n bytes more, grown at most once and to
// no more than it needs: a record written into nil is one allocation of
// its length.
func Grow(dst []byte, n int) []byte {
	if cap(dst)-len(dst) < n {
		dst = append(make([]byte, 0, len(dst)+n), dst...)
	}
	return dst
}

// UvarintSize is the length of binary.AppendUvarint's encoding of x.
func UvarintSize(x uint64) int { return (bits.Len64(x|1) + 6) / 7 }

// VarintSize is the length of binary.AppendVarint's zig-zag encoding of x.
func VarintSize(x int64) int { return UvarintSize(uint64(x<<1) ^ uint64(x>>63)) }

// StringSize is the length of AppendString's encoding of s.
func StringSize(s string) int { return UvarintSize(uint64(len(s))) + len(s) }

// MapSize is the length of AppendMap's encoding of m.
func MapSize(m map[string]string) int {
	n := UvarintSize(uint64(len(m)))
	for k, v := range m {
		n += StringSize(k) + StringSize(v)
	}
	return n
}

// TimeSize is the length of AppendTime's encoding of t.
func TimeSize(t time.Time) int {
	return VarintSize(t.Unix()) + UvarintSize(uint64(t.Nanosecond()))
}

// CutTail cuts b, a uvarint length n, fields, and n bytes that end it,
// into the fields and those n bytes, the tail. A record whose last field
// is bytes of any length (a message's raw payload) puts that length
// first, so that a Reader of the fields copies them without it. what
// names the tail, for an error.
func CutTail(b []byte, what string) (fields, tail []byte, err error) {
	r := Reader{b: b}
	n := r.uvarint(what, "", " length")
	if !r.has(n, what, "") {
		return nil, nil, r.err
	}
	end := len(b) - int(n)
	return b[r.off:end], b[end:], nil
}

// A Reader reads the fields of a record in order. It copies the record's
// bytes once, into one string, and cuts every string it returns from
// that copy: a record takes one allocation for all its text, and nothing
// read shares memory with the bytes given to NewReader, which in a store
// are bbolt's and valid only during the transaction.
//
// Each read names its field (what), for the error. The first error stops
// the Reader: reads after it return zero values, and Err returns it.
type Reader struct {
	b   []byte
	s   string
	off int
	err error
}

// NewReader returns a Reader of the fields in b.
func NewReader(b []byte) Reader {
	return Reader{b: b, s: string(b)}
}

// Err is the first error of a read, if any.
func (r *Reader) Err() error { return r.err }

// Fail stops r with err, unless it has stopped already: for what a
// store's layout finds wrong with a field that reads well.
func (r *Reader) Fail(err error) {
	if r.err == nil {
		r.err = err
	}
}

// Len is the number of bytes not read yet.
func (r *Reader) Len() int { return len(r.b) - r.off }

// Finish is the first error of a read, if any, or else an error for any
// bytes left unread: a record's layout says where its fields end.
func (r *Reader) Finish() error {
	if r.err == nil && r.Len() != 0 {
		r.err = fmt.Errorf("%d stray bytes after the fields", r.Len())
	}
	return r.err
}

// Uvarint reads a uvarint.
func (r *Reader) Uvarint(what string) uint64 { return r.uvarint(what, "", "") }

// Varint reads a varint.
func (r *Reader) Varint(what string) int64 { return r.varint(what, "", "") }

// String reads a string.
func (r *Reader) String(what string) string { return r.string(what, "") }

// Map reads a map; an empty one comes back nil. A key twice is an error.
func (r *Reader) Map(what string) map[string]string {
	n := r.uvarint(what, "", " count")
	if r.err != nil || n == 0 {
		return nil
	}
	// A pair takes two bytes at least: a count beyond that is no
	// record's, and must not size the map.
	if n > uint64(r.Len())/2 {
		r.err = fmt.Errorf("truncated %s: %d entries in %d bytes", what, n, r.Len())
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

// Time reads an instant, in UTC.
func (r *Reader) Time(what string) time.Time {
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

// The reads below name their field in three parts, what, part and unit
// ("data", " key", " length"), put together only for an error: joining
// them on every read would cost an allocation each.

func (r *Reader) uvarint(what, part, unit string) uint64 {
	if r.err != nil {
		return 0
	}
	x, n := binary.Uvarint(r.b[r.off:])
	switch {
	case n == 0:
		r.err = fmt.Errorf("truncated %s%s%s", what, part, unit)
	case n < 0:
		r.err = fmt.Errorf("malformed %s%s%s: varint overflows 64 bits", what, part, unit)
	}
	r.off += max(n, 0)
	return x
}

// varint undoes binary.AppendVarint's zig-zag encoding of a uvarint, as
// binary.Varint does.
func (r *Reader) varint(what, part, unit string) int64 {
	u := r.uvarint(what, part, unit)
	return int64(u>>1) ^ -int64(u&1)
}

func (r *Reader) string(what, part string) string {
	n := r.uvarint(what, part, " length")
	if !r.has(n, what, part) {
		return ""
	}
	s := r.s[r.off : r.off+int(n)]
	r.off += int(n)
	return s
}

// has reports whether r has not stopped and has n bytes left to read; if
// it has not, the field is truncated, and r stops.
func (r *Reader) has(n uint64, what, part string) bool {
	if r.err == nil && n > uint64(r.Len()) {
		r.err = fmt.Errorf("truncated %s%s: %d bytes of %d", what, part, r.Len(), n)
	}
	return r.err == nil
}
