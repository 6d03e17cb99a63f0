// SPDX-License-Identifier: Apache-2.0

// Package recordtest checks a store's message record: the tests the
// stores that write their records with package record have in common,
// whatever their message type and layout.
package recordtest

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"
)

// A Codec is a store's record of messages of type M.
type Codec[M any] struct {
	// Version is the first byte of the records Encode writes.
	Version byte
	// Encode appends m's record to dst, and Size is its length.
	Encode func(dst []byte, m *M) []byte
	Size   func(m *M) int
	// Decode reads a record, or the JSON of an earlier version. Its
	// errors wrap Wraps, if set.
	Decode func(v []byte) (M, error)
	Wraps  error
	// Read is m as Decode gives it back, if that is more than Normal:
	// without what the record does not keep, say.
	Read func(m M) M
}

// Normal is m, a struct, with its empty maps and slices nil and its times
// in UTC, as records and their JSON give them back.
func Normal[M any](m M) M {
	v := reflect.ValueOf(&m).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch {
		case f.Type() == reflect.TypeFor[time.Time]():
			f.Set(reflect.ValueOf(f.Interface().(time.Time).UTC()))
		case (f.Kind() == reflect.Map || f.Kind() == reflect.Slice) && f.Len() == 0:
			f.SetZero()
		}
	}
	return m
}

// read is m as Decode gives it back.
func (c Codec[M]) read(m M) M {
	if c.Read != nil {
		m = c.Read(m)
	}
	return Normal(m)
}

// Same reports whether a and b are the same message: the same instants,
// whatever their location, and nil and empty alike.
func Same[M any](a, b M) bool {
	return reflect.DeepEqual(Normal(a), Normal(b))
}

// RoundTrip checks that m's record is Size long, written in one
// allocation of its length, and decodes to Read(m), in memory of its
// own: the record's, bbolt's in a store, may change under it.
func (c Codec[M]) RoundTrip(t *testing.T, m M) {
	t.Helper()
	v := c.Encode(nil, &m)
	if len(v) != c.Size(&m) || cap(v) != len(v) {
		t.Errorf("record of %d bytes, cap %d; the size says %d", len(v), cap(v), c.Size(&m))
	}
	got, err := c.Decode(v)
	if err != nil {
		t.Fatal(err)
	}
	want := c.read(m)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decoded\n%+v\nwant\n%+v", got, want)
	}
	clear(v)
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decoded message changed with the record: %+v", got)
	}
}

// CutShort checks that every record of m cut short fails to decode: the
// fields are self-delimiting, and the raw bytes' length comes first.
func (c Codec[M]) CutShort(t *testing.T, m M) {
	t.Helper()
	v := c.Encode(nil, &m)
	for n := range len(v) {
		if got, err := c.Decode(v[:n]); err == nil {
			t.Errorf("record cut to %d of %d bytes decoded: %+v", n, len(v), got)
		}
	}
}

// EncodeAllocations checks that Encode allocates once into nil, for the
// whole record, and not at all into a buffer with room enough.
func (c Codec[M]) EncodeAllocations(t *testing.T, m M) {
	t.Helper()
	if n := testing.AllocsPerRun(100, func() { c.Encode(nil, &m) }); n != 1 {
		t.Errorf("encode into nil: %v allocations, want 1", n)
	}
	buf := make([]byte, 0, c.Size(&m))
	if n := testing.AllocsPerRun(100, func() { c.Encode(buf[:0], &m) }); n != 0 {
		t.Errorf("encode into room enough: %v allocations, want 0", n)
	}
}

// Seed adds to f, for each of ms, its record, half its record and its
// JSON, as earlier versions wrote it.
func (c Codec[M]) Seed(f *testing.F, ms ...M) {
	f.Helper()
	for _, m := range ms {
		v := c.Encode(nil, &m)
		f.Add(v)
		f.Add(v[:len(v)/2])
		j, err := json.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(j)
	}
}

// Redecode decodes v, a fuzzed record, and returns its error for the
// caller to check. A message that decodes must come back the same from
// its own record; from a record of this version exactly the same, nil
// maps and UTC times included.
func (c Codec[M]) Redecode(t *testing.T, v []byte) error {
	t.Helper()
	m, err := c.Decode(v)
	if err != nil {
		return err
	}
	back, err := c.Decode(c.Encode(nil, &m))
	if err != nil {
		t.Fatalf("the record of %+v does not decode: %v", m, err)
	}
	if !Same(back, m) || v[0] == c.Version && !reflect.DeepEqual(back, m) {
		t.Fatalf("round trip of\n%+v\ngave\n%+v", m, back)
	}
	return nil
}

// A Bad is a record that does not decode, and what its error says: an
// alias, so that a table of them may leave out the field names.
type Bad = struct {
	Name, Want string
	V          []byte
}

// Fields is a record of this version without raw bytes, with these
// fields.
func (c Codec[M]) Fields(fields string) []byte {
	return append([]byte{c.Version, 0}, fields...)
}

// DecodeErrors checks that each bad record fails to decode, leaving a zero
// message, with an error that starts with prefix and says what Want does;
// so do a record cut short in its raw bytes' length, and one whose raw
// bytes are longer than the record.
func (c Codec[M]) DecodeErrors(t *testing.T, prefix string, bad []Bad) {
	t.Helper()
	bad = append(bad,
		Bad{"version alone", "truncated raw length", []byte{c.Version}},
		Bad{"raw longer than the record", "truncated raw: 1 bytes of 5", []byte{c.Version, 5, 0}},
	)
	for _, tt := range bad {
		t.Run(tt.Name, func(t *testing.T) {
			m, err := c.Decode(tt.V)
			if err == nil || !strings.HasPrefix(err.Error(), prefix) || !strings.Contains(err.Error(), tt.Want) {
				t.Fatalf("error %v, want one with %q", err, tt.Want)
			}
			if c.Wraps != nil && !errors.Is(err, c.Wraps) {
				t.Errorf("error %v does not wrap %v", err, c.Wraps)
			}
			var zero M
			if !reflect.DeepEqual(m, zero) {
				t.Errorf("a bad record left %+v", m)
			}
		})
	}
}

// Benchmark writes and reads m's record.
func (c Codec[M]) Benchmark(b *testing.B, m M) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Decode(c.Encode(nil, &m)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkJSON writes and reads m's JSON, the record of earlier
// versions, for comparison.
func (c Codec[M]) BenchmarkJSON(b *testing.B, m M) {
	b.ReportAllocs()
	for b.Loop() {
		v, err := json.Marshal(&m)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := c.Decode(v); err != nil {
			b.Fatal(err)
		}
	}
}
