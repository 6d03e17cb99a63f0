// SPDX-License-Identifier: Apache-2.0

package record

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"maps"
	"math"
	"reflect"
	"strings"
	"testing"
	"time"
)

// A field is one of each kind a record can hold, for the tests to write
// and read back.
type field struct {
	kind byte // 'u', 'v', 's', 'm' or 't'
	u    uint64
	v    int64
	s    string
	m    map[string]string
	t    time.Time
}

func (f field) append(dst []byte) []byte {
	switch f.kind {
	case 'u':
		return binary.AppendUvarint(dst, f.u)
	case 'v':
		return binary.AppendVarint(dst, f.v)
	case 's':
		return AppendString(dst, f.s)
	case 'm':
		return AppendMap(dst, f.m)
	default:
		return AppendTime(dst, f.t)
	}
}

func (f field) size() int {
	switch f.kind {
	case 'u':
		return UvarintSize(f.u)
	case 'v':
		return VarintSize(f.v)
	case 's':
		return StringSize(f.s)
	case 'm':
		return MapSize(f.m)
	default:
		return TimeSize(f.t)
	}
}

// read reads a field of f's kind; the value comes back in a field.
func (f field) read(r *Reader, what string) field {
	got := field{kind: f.kind}
	switch f.kind {
	case 'u':
		got.u = r.Uvarint(what)
	case 'v':
		got.v = r.Varint(what)
	case 's':
		got.s = r.String(what)
	case 'm':
		got.m = r.Map(what)
	default:
		got.t = r.Time(what)
	}
	return got
}

// same reports whether f is g as a read gives it back: an empty map nil,
// the time's instant in UTC.
func (f field) same(g field) bool {
	return f.kind == g.kind && f.u == g.u && f.v == g.v && f.s == g.s &&
		maps.Equal(f.m, g.m) && (f.m == nil) == (g.m == nil) &&
		f.t.Equal(g.t) && g.t.Location() == time.UTC
}

func TestFieldsRoundTrip(t *testing.T) {
	large := map[string]string{}
	for i := range 1000 {
		large[fmt.Sprintf("key-%d", i)] = strings.Repeat("v", i%200)
	}
	paris := time.FixedZone("CET", 3600)
	tests := []struct {
		name      string
		in, want  field
		wantEqual bool
	}{
		{name: "uvarint 0", in: field{kind: 'u'}},
		{name: "uvarint 127", in: field{kind: 'u', u: 127}},
		{name: "uvarint 128", in: field{kind: 'u', u: 128}},
		{name: "the largest uvarint", in: field{kind: 'u', u: math.MaxUint64}},
		{name: "varint 0", in: field{kind: 'v'}},
		{name: "varint -1", in: field{kind: 'v', v: -1}},
		{name: "varint 64", in: field{kind: 'v', v: 64}},
		{name: "the smallest varint", in: field{kind: 'v', v: math.MinInt64}},
		{name: "the largest varint", in: field{kind: 'v', v: math.MaxInt64}},
		{name: "empty string", in: field{kind: 's'}},
		{name: "unicode and NULs", in: field{kind: 's', s: "0:1%é\x00🙂\xff"}},
		{name: "a string of 300 bytes", in: field{kind: 's', s: strings.Repeat("x", 300)}},
		{name: "nil map", in: field{kind: 'm'}},
		{name: "empty map, back nil", in: field{kind: 'm', m: map[string]string{}}, want: field{kind: 'm'}},
		{name: "empty key and value", in: field{kind: 'm', m: map[string]string{"": ""}}},
		{name: "unicode map", in: field{kind: 'm', m: map[string]string{"ключ": "値🙂", "nul\x00": "\x00\xff"}}},
		{name: "a large map", in: field{kind: 'm', m: large}},
		{name: "zero time", in: field{kind: 't'}},
		{name: "a time in another zone", in: field{kind: 't', t: time.Date(2026, 3, 1, 12, 0, 0, 123456789, paris)}},
		{name: "before 1970", in: field{kind: 't', t: time.Date(1969, 12, 31, 23, 59, 59, 999999999, time.UTC)}},
		{name: "past 2262", in: field{kind: 't', t: time.Date(9999, 12, 31, 23, 59, 59, 1, paris)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			if want.kind == 0 {
				want = tt.in
			}
			// Between two other fields, to see that it reads no more
			// and no less than its own bytes.
			v := AppendString(nil, "before")
			v = tt.in.append(v)
			if n := len(v) - StringSize("before"); n != tt.in.size() {
				t.Errorf("%d bytes written; the size says %d", n, tt.in.size())
			}
			v = binary.AppendUvarint(v, 42)
			r := NewReader(v)
			if s := r.String("before"); s != "before" {
				t.Fatalf("read %q before the field", s)
			}
			got := tt.in.read(&r, "field")
			if after := r.Uvarint("after"); r.Err() != nil || after != 42 || r.Len() != 0 {
				t.Fatalf("after the field: %d, %v, %d bytes left", after, r.Err(), r.Len())
			}
			if !want.same(got) {
				t.Errorf("read %+v, want %+v", got, want)
			}
			// What a Reader returns is its own: the record's memory, bbolt's
			// in a store, may change under it.
			clear(v)
			if !want.same(got) {
				t.Errorf("read value changed with the record: %+v", got)
			}
		})
	}
}

func TestSizes(t *testing.T) {
	for _, u := range []uint64{0, 1, 127, 128, 1<<14 - 1, 1 << 14, 1<<56 - 1, 1 << 56, 1<<63 - 1, 1 << 63, math.MaxUint64} {
		if got, want := UvarintSize(u), len(binary.AppendUvarint(nil, u)); got != want {
			t.Errorf("UvarintSize(%d) = %d, want %d", u, got, want)
		}
	}
	for _, v := range []int64{0, 1, -1, 63, -64, 64, -65, 1<<62 - 1, 1 << 62, -1 << 62, math.MaxInt64, math.MinInt64} {
		if got, want := VarintSize(v), len(binary.AppendVarint(nil, v)); got != want {
			t.Errorf("VarintSize(%d) = %d, want %d", v, got, want)
		}
	}
}

func TestReaderErrors(t *testing.T) {
	str := func(ss ...string) []byte {
		var b []byte
		for _, s := range ss {
			b = AppendString(b, s)
		}
		return b
	}
	overflow := bytes.Repeat([]byte{0xff}, 11)
	tests := []struct {
		name, want string
		kind       byte
		v          []byte
	}{
		{"no uvarint", "truncated f", 'u', nil},
		{"uvarint cut short", "truncated f", 'u', []byte{0x80}},
		{"uvarint overflowing", "malformed f: varint overflows 64 bits", 'u', overflow},
		{"no varint", "truncated f", 'v', nil},
		{"varint overflowing", "malformed f: varint overflows 64 bits", 'v', overflow},
		{"no string", "truncated f length", 's', nil},
		{"string length overflowing", "malformed f length: varint overflows 64 bits", 's', overflow},
		{"short string", "truncated f: 2 bytes of 5", 's', []byte{5, 'a', 'b'}},
		{"no map", "truncated f count", 'm', nil},
		{"map count past the record", "truncated f: 1000 entries in 4 bytes", 'm', append([]byte{0xe8, 0x07}, str("k", "v")...)},
		{"map count overflowing", "malformed f count: varint overflows 64 bits", 'm', overflow},
		{"no map value", "truncated f value length", 'm', append([]byte{1}, str("k", "")[:2]...)},
		{"short map key", "truncated f key: 2 bytes of 3", 'm', []byte{1, 3, 'k', 0}},
		{"short map value", "truncated f value: 2 bytes of 5", 'm', append(append([]byte{1}, str("k")...), 5, 'a', 'b')},
		{"a map key twice", `malformed f: key "k" twice`, 'm', append([]byte{2}, str("k", "1", "k", "2")...)},
		{"no time", "truncated f seconds", 't', nil},
		{"no nanoseconds", "truncated f nanoseconds", 't', []byte{0}},
		{"nanoseconds past a second", "malformed f: 1000000000 nanoseconds", 't', []byte{0, 0x80, 0x94, 0xeb, 0xdc, 0x03}},
		{"seconds overflowing", "malformed f seconds: varint overflows 64 bits", 't', overflow},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := NewReader(tt.v)
			got := field{kind: tt.kind}.read(&r, "f")
			if err := r.Err(); err == nil || err.Error() != tt.want {
				t.Fatalf("error %v, want %q", err, tt.want)
			}
			if !reflect.DeepEqual(got, field{kind: tt.kind}) {
				t.Errorf("a bad field read %+v", got)
			}
			// The first error stops the Reader: later reads return zero
			// values, and the error stays the first.
			first := r.Err()
			r.Fail(fmt.Errorf("later"))
			if s, u, v, m, tm := r.String("s"), r.Uvarint("u"), r.Varint("v"), r.Map("m"), r.Time("t"); s != "" || u != 0 || v != 0 || m != nil || !tm.IsZero() {
				t.Errorf("reads after an error: %q %d %d %v %v", s, u, v, m, tm)
			}
			if r.Err() != first {
				t.Errorf("error %v after more reads, want the first, %v", r.Err(), first)
			}
		})
	}
}

func TestReaderFail(t *testing.T) {
	r := NewReader(binary.AppendUvarint(nil, 9))
	if r.Uvarint("flags") != 9 || r.Err() != nil {
		t.Fatal(r.Err())
	}
	r.Fail(fmt.Errorf("unknown flags 0x8"))
	if s := r.String("next"); s != "" || r.Err() == nil || r.Err().Error() != "unknown flags 0x8" {
		t.Errorf("after Fail: read %q, error %v", s, r.Err())
	}
}

// everyKind is a record of one field of each kind, every one set.
func everyKind() []field {
	return []field{
		{kind: 'u', u: 1 << 40}, {kind: 'v', v: -1 << 40}, {kind: 's', s: "0:1772366400000000%31bd3c4df9fd7ecd"},
		{kind: 'm', m: map[string]string{"set-point": "19.5", "room": "kitchen"}},
		{kind: 't', t: time.Date(2026, 3, 1, 12, 0, 0, 123456789, time.UTC)}, {kind: 's', s: "org.example.thermostat"},
	}
}

func appendFields(dst []byte, fields []field) []byte {
	for _, f := range fields {
		dst = f.append(dst)
	}
	return dst
}

// The fields are self-delimiting: every record cut short is bad.
func TestReaderCutShort(t *testing.T) {
	fields := everyKind()
	v := appendFields(nil, fields)
	for n := range len(v) {
		r := NewReader(v[:n])
		for _, f := range fields {
			f.read(&r, "f")
		}
		if r.Err() == nil {
			t.Errorf("record cut to %d of %d bytes read without an error", n, len(v))
		}
	}
}

func TestAllocations(t *testing.T) {
	fields := everyKind()
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() { appendFields(buf[:0], fields) }); n != 0 {
		t.Errorf("append into room enough: %v allocations, want 0", n)
	}
	// One allocation for all the strings: the copy of the record.
	var v []byte
	for _, s := range []string{"0:1%ab", "d", "t", "a", "s"} {
		v = AppendString(v, s)
	}
	v = binary.AppendUvarint(v, 9)
	v = AppendTime(v, time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC))
	n := testing.AllocsPerRun(100, func() {
		r := NewReader(v)
		for range 5 {
			r.String("s")
		}
		r.Uvarint("u")
		r.Time("t")
		if r.Err() != nil || r.Len() != 0 {
			panic(r.Err())
		}
	})
	if n != 1 {
		t.Errorf("read of strings, a uvarint and a time: %v allocations, want 1", n)
	}
}

// FuzzReader reads v as the fields kinds names, in turn: a field that
// reads writes back, in no more bytes than were read (a varint may have
// been written longer than it needs), to what reads the same; one that
// does not read names what is wrong with it.
func FuzzReader(f *testing.F) {
	v := appendFields(nil, everyKind())
	f.Add([]byte("uvsmts"), v)
	f.Add([]byte("uvsmts"), v[:len(v)/2])
	f.Add([]byte("smt"), []byte{})
	f.Add([]byte("m"), []byte{2, 1, 'k', 0, 1, 'k', 0})
	f.Add([]byte("t"), []byte{0, 0x80, 0x94, 0xeb, 0xdc, 0x03})
	f.Add([]byte("u"), bytes.Repeat([]byte{0xff}, 11))
	f.Fuzz(func(t *testing.T, kinds, v []byte) {
		r := NewReader(v)
		for _, k := range kinds {
			fl := field{kind: "uvsmt"[int(k)%5]}
			before := r.Len()
			got := fl.read(&r, "f")
			if err := r.Err(); err != nil {
				if msg := err.Error(); !strings.HasPrefix(msg, "truncated f") && !strings.HasPrefix(msg, "malformed f") {
					t.Fatalf("error %q does not say what is wrong with which field", msg)
				}
				return
			}
			read := v[len(v)-before : len(v)-r.Len()]
			again := got.append(nil)
			if len(again) != got.size() || len(again) > len(read) {
				t.Fatalf("%c %x read %+v, written again %x, whose size says %d", fl.kind, read, got, again, got.size())
			}
			r2 := NewReader(again)
			if back := fl.read(&r2, "f"); r2.Err() != nil || r2.Len() != 0 || !back.same(got) {
				t.Fatalf("%c %x read %+v, written again %x read %+v, %v", fl.kind, read, got, again, back, r2.Err())
			}
		}
	})
}

func TestCutTail(t *testing.T) {
	tests := []struct {
		name         string
		b            []byte
		fields, tail string
		want         string
	}{
		{name: "no tail", b: []byte{0, 'f'}, fields: "f"},
		{name: "no fields", b: []byte{2, 'r', 'r'}, tail: "rr"},
		{name: "fields and tail", b: []byte{1, 'f', 'f', 'r'}, fields: "ff", tail: "r"},
		{name: "empty", b: nil, want: "truncated raw length"},
		{name: "length overflowing", b: bytes.Repeat([]byte{0xff}, 11), want: "malformed raw length: varint overflows 64 bits"},
		{name: "tail longer than the record", b: []byte{5, 'r'}, want: "truncated raw: 1 bytes of 5"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fields, tail, err := CutTail(tt.b, "raw")
			if tt.want != "" {
				if err == nil || err.Error() != tt.want || fields != nil || tail != nil {
					t.Fatalf("%q, %q, %v; want the error %q", fields, tail, err, tt.want)
				}
				return
			}
			if err != nil || string(fields) != tt.fields || string(tail) != tt.tail {
				t.Errorf("%q, %q, %v; want %q, %q", fields, tail, err, tt.fields, tt.tail)
			}
		})
	}
}

func TestGrow(t *testing.T) {
	if b := Grow(nil, 10); len(b) != 0 || cap(b) != 10 {
		t.Errorf("Grow(nil, 10): len %d, cap %d; want 0, 10", len(b), cap(b))
	}
	room := make([]byte, 2, 16)
	if b := Grow(room, 14); &b[:cap(b)][0] != &room[:1][0] {
		t.Error("Grow grew a slice that had room enough")
	}
	if b := Grow([]byte("ab"), 3); string(b) != "ab" || cap(b) != 5 {
		t.Errorf("Grow(\"ab\", 3) = %q, cap %d; want \"ab\", cap 5", b, cap(b))
	}
}

func TestReaderFinish(t *testing.T) {
	r := NewReader([]byte{1, 'a', 9})
	if s := r.String("s"); s != "a" {
		t.Fatalf("read %q", s)
	}
	if err := r.Finish(); err == nil || err.Error() != "1 stray bytes after the fields" {
		t.Errorf("Finish with a byte left: %v", err)
	}
	r = NewReader([]byte{1, 'a'})
	if r.String("s"); r.Finish() != nil {
		t.Errorf("Finish after every byte: %v", r.Finish())
	}
	r = NewReader([]byte{5, 'a'})
	if r.String("s"); r.Finish() == nil || r.Finish().Error() != "truncated s: 1 bytes of 5" {
		t.Errorf("Finish after an error: %v, want the error", r.Finish())
	}
}
