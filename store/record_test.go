// SPDX-License-Identifier: Apache-2.0

package store

import (
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"tether/internal/record/recordtest"

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
	return recordtest.Normal(m)
}

// codec is the held message record, for the tests all records share.
var codec = recordtest.Codec[Message]{
	Version: recordVersion, Encode: encodeMessage, Size: encodedSize,
	Decode: func(v []byte) (Message, error) {
		var m Message
		err := decodeMessage(v, &m)
		return m, err
	},
	Read: held,
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
		t.Run(tt.name, func(t *testing.T) { codec.RoundTrip(t, tt.m) })
	}
}

func TestEncodeMessageAllocations(t *testing.T) {
	codec.EncodeAllocations(t, fullMessage())
}

func TestDecodeMessageErrors(t *testing.T) {
	// In the records below, without raw bytes, ids are ID "m", App "a"
	// and no From or CollapseKey; the other fields are empty or zero.
	const ids, dataToPriority, sentToTTL = "\x01m\x01a\x00\x00", "\x00\x00", "\x00\x00\x00\x00"
	codec.DecodeErrors(t, "decode held message: ", []recordtest.Bad{
		{"empty", "empty record", nil},
		{"unknown version", "unknown record version 0x02", []byte{2, 0}},
		{"short id", "truncated id: 2 bytes of 5", codec.Fields("\x05ab")},
		{"no app", "truncated app length", codec.Fields("\x01m")},
		{"a data key twice", `malformed data: key "k" twice`, codec.Fields(ids + "\x02\x01k\x011\x01k\x012")},
		{"no sent time", "truncated sent time", codec.Fields(ids + dataToPriority)},
		{"no expiry", "truncated expiry seconds", codec.Fields(ids + dataToPriority + sentToTTL + "\x00\x00")},
		{"bytes after the fields", "1 stray bytes after the fields", codec.Fields(ids + dataToPriority + sentToTTL + "\x00\x00\x00\x00\x09")},
		{"bad JSON", "decode held message: json: cannot unmarshal number", []byte(`{"id": 5}`)},
	})
	codec.CutShort(t, fullMessage())
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
	codec.Seed(f, fullMessage(), Message{ID: "m", App: "a"}, Message{ID: "m", App: "a", Data: map[string]string{"k": "v"}, Raw: []byte("x"), Received: t0})
	for _, s := range []string{
		``, `{}`, `{"id": 5}`, `{"data": {}, "raw": ""}`, `{"received": "0000-01-01T00:00:00+23:59"}`, "\x01", "\x01\x00", "\x02",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		if err := codec.Redecode(t, v); err != nil && !strings.HasPrefix(err.Error(), "decode held message: ") {
			t.Fatalf("error %q does not say what failed", err)
		}
	})
}

// benchMessage is a typical held message: a few data fields, no raw.
var benchMessage = Message{
	ID: "0:1772366400000000%31bd3c4df9fd7ecd", App: "org.example.thermostat", From: "1034567890",
	CollapseKey: "set-point", Data: map[string]string{"set-point": "19.5", "room": "kitchen", "mode": "eco"},
	Priority: "high", SentTime: 1772366399123, TTL: 3600, Received: t0, Expires: t0.Add(time.Hour),
}

// BenchmarkMessageRecord writes and reads a record as put and decode do;
// BenchmarkMessageRecordJSON the JSON record of earlier versions, for
// comparison.
func BenchmarkMessageRecord(b *testing.B)     { codec.Benchmark(b, benchMessage) }
func BenchmarkMessageRecordJSON(b *testing.B) { codec.BenchmarkJSON(b, benchMessage) }
