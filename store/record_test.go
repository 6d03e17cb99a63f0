// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// fullMessage has every field a record keeps set, and Seq and Token, which
// it does not keep.
func fullMessage() Message {
	return Message{
		Seq: 7, ID: "0:1772366400000000%31bd3c4df9fd7ecd", App: "org.example.thermostat", From: "1034567890",
		Token: "tok-1", CollapseKey: "set-point",
		Data:     map[string]string{"set-point": "19.5", "room": "kitchen", "mode": "eco"},
		Priority: "high", SentTime: 1772366399123,
		Notification: map[string]string{"title": "Heating", "body": "Set to 19.5 °C"},
		Topic:        "/topics/heating", Raw: []byte{0, 1, 2, 0xff},
		TTL: 3600, Received: t0.Add(123456789), Expires: t0.Add(time.Hour + 123456789),
	}
}

// held is m as a read gives it back: without the Seq and Token the record
// does not keep, empty maps and Raw nil, times in UTC.
func held(m Message) Message {
	m.Seq, m.Token = 0, ""
	if len(m.Data) == 0 {
		m.Data = nil
	}
	if len(m.Notification) == 0 {
		m.Notification = nil
	}
	if len(m.Raw) == 0 {
		m.Raw = nil
	}
	m.Received, m.Expires = m.Received.UTC(), m.Expires.UTC()
	return m
}

// sameMessage reports whether a and b are the same message: the same
// instants, whatever their location, and nil and empty alike.
func sameMessage(a, b Message) bool {
	return a.Seq == b.Seq && a.ID == b.ID && a.App == b.App && a.From == b.From && a.Token == b.Token &&
		a.CollapseKey == b.CollapseKey && maps.Equal(a.Data, b.Data) && a.Priority == b.Priority &&
		a.SentTime == b.SentTime && maps.Equal(a.Notification, b.Notification) && a.Topic == b.Topic &&
		bytes.Equal(a.Raw, b.Raw) && a.TTL == b.TTL && a.Received.Equal(b.Received) && a.Expires.Equal(b.Expires)
}

func TestMessageRecordRoundTrip(t *testing.T) {
	allBytes := make([]byte, 4096)
	for i := range allBytes {
		allBytes[i] = byte(i)
	}
	tests := []struct {
		name string
		m    Message
	}{
		{"every field", fullMessage()},
		{"nothing but ID and app, zero times", Message{ID: "m", App: "a"}},
		{"empty maps and raw", Message{ID: "m", App: "a", Data: map[string]string{}, Notification: map[string]string{}, Raw: []byte{}}},
		{"4096-byte raw of every byte value", Message{ID: "m", App: "a", From: "webpush", Raw: allBytes, Received: t0, Expires: t0.Add(time.Hour)}},
		{"negative numbers", Message{ID: "m", App: "a", SentTime: -1, TTL: -1 << 62}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := encodeMessage(nil, &tt.m)
			if len(v) != encodedSize(&tt.m) || cap(v) != len(v) {
				t.Errorf("record of %d bytes, cap %d; encodedSize says %d", len(v), cap(v), encodedSize(&tt.m))
			}
			var got Message
			if err := decodeMessage(v, &got); err != nil {
				t.Fatal(err)
			}
			if want := held(tt.m); !reflect.DeepEqual(got, want) {
				t.Errorf("decoded\n%+v\nwant\n%+v", got, want)
			}
			if got.Received.IsZero() != tt.m.Received.IsZero() || got.Expires.IsZero() != tt.m.Expires.IsZero() {
				t.Errorf("zero times: received %v, expires %v", got.Received, got.Expires)
			}
			// The decoded message is the caller's: the record's memory,
			// bbolt's in the store, may change under it.
			clear(v)
			if want := held(tt.m); !reflect.DeepEqual(got, want) {
				t.Errorf("decoded message changed with the record: %+v", got)
			}
		})
	}
}

func TestEncodeMessageAllocations(t *testing.T) {
	m := fullMessage()
	if n := testing.AllocsPerRun(100, func() { encodeMessage(nil, &m) }); n != 1 {
		t.Errorf("encode into nil: %v allocations, want 1", n)
	}
	buf := make([]byte, 0, 1024)
	if n := testing.AllocsPerRun(100, func() { encodeMessage(buf[:0], &m) }); n != 0 {
		t.Errorf("encode into room enough: %v allocations, want 0", n)
	}
}

func TestDecodeMessageErrors(t *testing.T) {
	// rec is a record of version 1 without raw, with these fields: ids
	// are ID "m", App "a" and no From or CollapseKey; the others are
	// empty or zero.
	rec := func(fields string) []byte { return append([]byte{recordVersion, 0}, fields...) }
	const ids, dataToPriority, sentToTTL = "\x01m\x01a\x00\x00", "\x00\x00", "\x00\x00\x00\x00"
	tests := []struct {
		name, want string
		v          []byte
	}{
		{"empty", "empty record", nil},
		{"unknown version", "unknown record version 0x02", []byte{2, 0}},
		{"version alone", "truncated raw length", []byte{recordVersion}},
		{"raw longer than the record", "truncated raw: 1 bytes of 5", []byte{recordVersion, 5, 0}},
		{"short id", "truncated id: 2 bytes of 5", rec("\x05ab")},
		{"no app", "truncated app length", rec("\x01m")},
		{"a data key twice", `malformed data: key "k" twice`, rec(ids + "\x02\x01k\x011\x01k\x012")},
		{"no sent time", "truncated sent time", rec(ids + dataToPriority)},
		{"no expiry", "truncated expiry seconds", rec(ids + dataToPriority + sentToTTL + "\x00\x00")},
		{"bytes after the fields", "1 stray bytes after the fields", rec(ids + dataToPriority + sentToTTL + "\x00\x00\x00\x00\x09")},
		{"bad JSON", "decode held message: json: cannot unmarshal number", []byte(`{"id": 5}`)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var m Message
			err := decodeMessage(tt.v, &m)
			if err == nil || !strings.HasPrefix(err.Error(), "decode held message: ") || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error %v, want one with %q", err, tt.want)
			}
			if !reflect.DeepEqual(m, Message{}) {
				t.Errorf("a bad record left %+v", m)
			}
		})
	}
	// The fields are self-delimiting: every record cut short is bad.
	full := fullMessage()
	v := encodeMessage(nil, &full)
	for n := range len(v) {
		var m Message
		if err := decodeMessage(v[:n], &m); err == nil {
			t.Errorf("record cut to %d of %d bytes decoded: %+v", n, len(v), m)
		}
	}
}

// A store written by an earlier version, whose records are JSON, opens
// and reads as before, beside records written since; every way a message
// leaves (quota, unregistration, ack) reads the old records too.
func TestReadsRecordsOfEarlierVersions(t *testing.T) {
	s, path := openTemp(t)
	mustRegister(t, s, "a", "1", "tok-1", 1000)
	mustRegister(t, s, "a", "2", "tok-2", 1000)
	first := fullMessage()
	first.ID, first.From, first.Token, first.Expires = "old-1", "1", "tok-1", first.Received.Add(time.Minute)
	second := msg("old-2", "a", "2", "tok-2", 2*time.Hour)
	second.Raw = []byte("raw")
	third := msg("new-3", "a", "1", "tok-1", time.Hour)
	first.App = "a"
	msgs := []Message{first, second, third}
	if oc, _, err := s.AddMessages(msgs, Quota{}); err != nil || !slices.Equal(oc, []Outcome{Stored, Stored, Stored}) {
		t.Fatalf("store: %v, %v", oc, err)
	}
	// The first two as an earlier version wrote them.
	var size int64
	err := s.db.Update(func(tx *bolt.Tx) error {
		inbox := appBucket(tx, "a").Bucket(bucketInbox)
		for _, m := range msgs[:2] {
			v, err := json.Marshal(m)
			if err != nil {
				return err
			}
			size += int64(len(v))
			if err := inbox.Put(encodeUint64(m.Seq), v); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	size += recordSize(third)
	s = reopen(t, s, path)

	got, err := s.Inbox("a", 0, 10, t0)
	if err != nil {
		t.Fatal(err)
	}
	var want []Message
	for _, m := range msgs {
		h := held(m)
		h.Seq = m.Seq
		want = append(want, h)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("inbox\n%+v\nwant\n%+v", got, want)
	}
	err = s.db.View(func(tx *bolt.Tx) error {
		if u := usageOf(appBucket(tx, "a")); u != (usage{3, size}) {
			return fmt.Errorf("usage %+v, want 3 messages of %d bytes", u, size)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// The quota drops the oldest, an old record, and its expiry with it.
	fourth := msg("new-4", "a", "1", "tok-1", 3*time.Hour)
	if _, dropped, err := s.AddMessages([]Message{fourth}, Quota{AppMessages: 3}); err != nil || !slices.Equal(dropped["a"], []string{"old-1"}) {
		t.Fatalf("quota dropped %v, %v; want old-1", dropped, err)
	}
	if next, ok, err := s.NextExpiry(); err != nil || !ok || !next.Equal(third.Expires) {
		t.Errorf("next expiry %v, %v, %v; want the third's, %v", next, ok, err, third.Expires)
	}
	if ids, err := s.Unregister("a", "2"); err != nil || !slices.Equal(ids, []string{"old-2"}) {
		t.Errorf("unregister dropped %v, %v; want old-2", ids, err)
	}
	if n, err := s.Ack("a", []string{"new-3"}); err != nil || n != 1 {
		t.Errorf("ack: %d, %v", n, err)
	}
	if ids := inboxIDs(t, s, "a", 0, 10, t0); !slices.Equal(ids, []string{"new-4"}) {
		t.Errorf("inbox %v, want new-4", ids)
	}
}

func FuzzDecodeMessage(f *testing.F) {
	full := fullMessage()
	for _, m := range []Message{full, {ID: "m", App: "a"}, {ID: "m", App: "a", Data: map[string]string{"k": "v"}, Raw: []byte("x"), Received: t0}} {
		v := encodeMessage(nil, &m)
		f.Add(v)
		f.Add(v[:len(v)/2])
		j, err := json.Marshal(m)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(j)
	}
	for _, s := range []string{
		``, `{}`, `{"id": 5}`, `{"data": {}, "raw": ""}`, `{"received": "0000-01-01T00:00:00+23:59"}`, "\x01", "\x01\x00", "\x02",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		var m Message
		if err := decodeMessage(v, &m); err != nil {
			if !strings.HasPrefix(err.Error(), "decode held message: ") {
				t.Fatalf("error %q does not say what failed", err)
			}
			return
		}
		again := encodeMessage(nil, &m)
		var back Message
		if err := decodeMessage(again, &back); err != nil {
			t.Fatalf("the record of %+v does not decode: %v", m, err)
		}
		if !sameMessage(back, m) {
			t.Fatalf("round trip of\n%+v\ngave\n%+v", m, back)
		}
		// From a record of this version, exactly the same, nil maps and
		// UTC times included.
		if v[0] == recordVersion && !reflect.DeepEqual(back, m) {
			t.Fatalf("round trip of\n%+v\ngave\n%+v", m, back)
		}
	})
}

// benchMessage is a typical held message: a few data fields, no raw.
var benchMessage = Message{
	ID: "0:1772366400000000%31bd3c4df9fd7ecd", App: "org.example.thermostat", From: "1034567890",
	CollapseKey: "set-point", Data: map[string]string{"set-point": "19.5", "room": "kitchen", "mode": "eco"},
	Priority: "high", SentTime: 1772366399123, TTL: 3600, Received: t0, Expires: t0.Add(time.Hour),
}

func BenchmarkMessageRecord(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		v := encodeMessage(nil, &benchMessage)
		var m Message
		if err := decodeMessage(v, &m); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMessageRecordJSON is the JSON record of earlier versions, for
// comparison.
func BenchmarkMessageRecordJSON(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		v, err := json.Marshal(&benchMessage)
		if err != nil {
			b.Fatal(err)
		}
		var m Message
		if err := decodeMessage(v, &m); err != nil {
			b.Fatal(err)
		}
	}
}
