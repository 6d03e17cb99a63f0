// SPDX-License-Identifier: Apache-2.0

package store

import (
	"encoding/json"
	"errors"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"tether/internal/record/recordtest"

	bolt "go.etcd.io/bbolt"
)

// fullMessage has every field set.
func fullMessage() Message {
	return Message{
		ID: "0:1772366400000000%31bd3c4df9fd7ecd", Seq: 7, Device: "4411223344556677",
		Token: "dGhpcyBpcyBhIHRva2VuIG9mIGZvcnR5LWVpZ2h0IHJhbmRvbSBieXRlcyBpbiBiYXNl",
		App:   "org.example.thermostat", Sender: "1034567890", CollapseKey: "set-point", Priority: "high",
		DelayWhileIdle: true, Data: map[string]string{"set-point": "19.5", "room": "kitchen", "mode": "eco"},
		Notification: map[string]string{"title": "Heating", "body": "Set to 19.5 °C"},
		Topic:        "/topics/heating", Raw: []byte{0, 1, 2, 0xff}, Urgency: "low", Receipt: true,
		OriginID: "m-42", Sent: t0.Add(123456789), Expiry: t0.Add(time.Hour + 123456789),
	}
}

// codec is the queued message record, for the tests all records share.
var codec = recordtest.Codec[Message]{
	Version: recordVersion, Encode: encodeMessage, Size: encodedSize,
	Decode: decode[Message], Wraps: ErrCorrupt,
}

// TestMessageRecordKeepsEveryField fills every field of Message, whatever
// fields it has, and reads it back: a field added to Message that the
// record does not keep fails here.
func TestMessageRecordKeepsEveryField(t *testing.T) {
	var m Message
	v := reflect.ValueOf(&m).Elem()
	for i := range v.NumField() {
		f, name := v.Field(i), v.Type().Field(i).Name
		switch {
		case f.Kind() == reflect.String:
			f.SetString("s-" + name)
		case f.Kind() == reflect.Uint64:
			f.SetUint(1<<40 + uint64(i))
		case f.Kind() == reflect.Bool:
			f.SetBool(true)
		case f.Type() == reflect.TypeFor[map[string]string]():
			f.Set(reflect.ValueOf(map[string]string{"k-" + name: "v-" + name}))
		case f.Type() == reflect.TypeFor[[]byte]():
			f.SetBytes([]byte("b-" + name))
		case f.Type() == reflect.TypeFor[time.Time]():
			f.Set(reflect.ValueOf(t0.Add(time.Duration(i)*time.Hour + 123456789)))
		default:
			t.Fatalf("Message.%s is a %v, which this test cannot fill: teach it, and the record", name, f.Type())
		}
	}
	var got Message
	if err := decodeMessage(encodeMessage(nil, &m), &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("decoded\n%+v\nwant\n%+v", got, m)
	}
	// The flags are apart, each of them.
	for _, flip := range []func(*Message){
		func(m *Message) { m.DelayWhileIdle = false },
		func(m *Message) { m.Receipt = false },
	} {
		one := m
		flip(&one)
		if err := decodeMessage(encodeMessage(nil, &one), &got); err != nil || !reflect.DeepEqual(got, one) {
			t.Errorf("decoded\n%+v, %v\nwant\n%+v", got, err, one)
		}
	}
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
		{"nothing but an ID, zero times", Message{ID: "m"}},
		{"nothing at all", Message{}},
		{"empty maps and raw", Message{ID: "m", Data: map[string]string{}, Notification: map[string]string{}, Raw: []byte{}}},
		{"4096-byte raw of every byte value", Message{ID: "m", Sender: "webpush", Urgency: "very-low", Raw: allBytes, Sent: t0, Expiry: t0.Add(time.Hour)}},
		{"the largest seq", Message{ID: "m", Seq: 1<<64 - 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) { codec.RoundTrip(t, tt.m) })
	}
}

// An earlier version's JSON record and this version's record of one
// message read the same.
func TestMessageRecordReadsJSON(t *testing.T) {
	paris := time.FixedZone("CET", 3600)
	for _, m := range []Message{fullMessage(), {ID: "m"}, {ID: "m", Sent: t0.In(paris), Expiry: t0.In(paris).Add(time.Hour)}} {
		j, err := json.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		got, err := decode[Message](j)
		if err != nil {
			t.Fatal(err)
		}
		if want := recordtest.Normal(m); !reflect.DeepEqual(got, want) {
			t.Errorf("decoded from JSON\n%+v\nwant\n%+v", got, want)
		}
	}
}

func TestMessageRecordAllocations(t *testing.T) {
	codec.EncodeAllocations(t, fullMessage())
	// One allocation for all the strings: neither the message nor its
	// fields each take one.
	plain := Message{ID: "0:1%ab", Seq: 9, Device: "d", Token: "t", App: "a", Sender: "s", Sent: t0, Expiry: t0.Add(time.Hour)}
	v := encodeMessage(nil, &plain)
	if n := testing.AllocsPerRun(100, func() { decode[Message](v) }); n != 1 {
		t.Errorf("decode of a message without maps or raw: %v allocations, want 1", n)
	}
}

func TestDecodeMessageErrors(t *testing.T) {
	// In the records below, without raw bytes, ids are ID "m", Device
	// "d", Token "t", App "a" and Sender "s"; seq is 7, and the other
	// fields are empty or zero.
	const ids, seqToFlags, mapsToOrigin = "\x01m\x01d\x01t\x01a\x01s", "\x07\x00\x00\x00", "\x00\x00\x00\x00\x00"
	codec.DecodeErrors(t, "decode queued message: corrupt record: ", []recordtest.Bad{
		{"empty", "empty", nil},
		{"unknown version", "unknown version 0x02", []byte{2, 0}},
		{"short id", "truncated id: 2 bytes of 5", codec.Fields("\x05ab")},
		{"no device", "truncated device length", codec.Fields("\x01m")},
		{"short sender", "truncated sender: 0 bytes of 3", codec.Fields("\x01m\x01d\x01t\x01a\x03")},
		{"no seq", "truncated seq", codec.Fields(ids)},
		{"no flags", "truncated flags", codec.Fields(ids + "\x07\x00\x00")},
		{"unknown flags", "unknown flags 0x4", codec.Fields(ids + "\x07\x00\x00\x05")},
		{"no notification", "truncated notification count", codec.Fields(ids + seqToFlags + "\x00")},
		{"no origin id", "truncated origin id length", codec.Fields(ids + seqToFlags + "\x00\x00\x00\x00")},
		{"no sent time", "truncated sent time seconds", codec.Fields(ids + seqToFlags + mapsToOrigin)},
		{"no expiry nanoseconds", "truncated expiry nanoseconds", codec.Fields(ids + seqToFlags + mapsToOrigin + "\x00\x00\x00")},
		{"bytes after the fields", "1 stray bytes after the fields", codec.Fields(ids + seqToFlags + mapsToOrigin + "\x00\x00\x00\x00\x09")},
		{"bad JSON", "json: cannot unmarshal number", []byte(`{"id": 5}`)},
		{"JSON cut short", "unexpected end of JSON input", []byte(`{"id": "m"`)},
	})
	codec.CutShort(t, fullMessage())
}

// A store written by an earlier version, whose message records are JSON,
// opens and reads as before, beside records written since; every way a
// message leaves (collapse, ack, expiry) and the export that moves a
// store into a cluster read the old records too.
func TestReadsRecordsOfEarlierVersions(t *testing.T) {
	s, path := openTemp(t)
	f := newFixture(t, s)
	plain := f.msg("0:1%old-plain", "", time.Hour)
	plain.Receipt, plain.OriginID = true, "origin-1"
	collapsed := f.msg("0:2%old-collapsed", "k", 2*time.Hour)
	collapsed.Notification, collapsed.Priority, collapsed.DelayWhileIdle = map[string]string{"title": "t"}, "high", true
	push := f.msg("0:3%new-push", "", 3*time.Hour)
	push.Data, push.Raw, push.Urgency = nil, []byte{0, 0xff}, "low"
	enqueue(t, s, plain, collapsed, push)
	want, _, err := s.Pending(ctx, f.device.ID, 0, 0, nil)
	if err != nil || len(want) != 3 {
		t.Fatalf("pending %+v, %v", want, err)
	}
	// The first two as an earlier version wrote them, in a store from
	// before the per-app counts, which Open makes from the records.
	err = s.db.Update(func(tx *bolt.Tx) error {
		for _, m := range want[:2] {
			v, err := json.Marshal(m)
			if err != nil {
				return err
			}
			if err := tx.Bucket(bucketMsgs).Put([]byte(m.ID), v); err != nil {
				return err
			}
		}
		return tx.DeleteBucket(bucketAppPending)
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Close()
	s, err = Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	got, _, err := s.Pending(ctx, f.device.ID, 0, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("pending\n%+v\nwant\n%+v", got, want)
	}
	if st, err := s.Stats(ctx); err != nil || st.Messages != 3 || !st.Oldest.Equal(t0) {
		t.Errorf("stats %+v, %v; want 3 messages, the oldest sent at %v", st, err, t0)
	}
	var exported []Message
	err = s.Export(ctx, func(r Record) error {
		if r.Queue != nil {
			exported = append(exported, r.Queue.Messages...)
		}
		return nil
	})
	if err != nil || !reflect.DeepEqual(exported, want) {
		t.Errorf("export\n%+v, %v\nwant\n%+v", exported, err, want)
	}

	// A new message under the collapse key replaces the old record, and
	// an ack of the other old one asks for its receipt.
	enqueue(t, s, f.msg("0:4%new-collapsed", "k", time.Hour))
	if acked, receipts, err := s.Ack(ctx, f.device.ID, []string{plain.ID}, t0); err != nil || acked != 1 || len(receipts) != 1 {
		t.Errorf("ack of the old record: %d acked, receipts %+v, %v", acked, receipts, err)
	}
	if ids := pendingIDs(t, s, f.device.ID); !slices.Equal(ids, []string{push.ID, "0:4%new-collapsed"}) {
		t.Errorf("pending %v", ids)
	}
	// The counts made at Open saw the collapse key: a fifth key evicts
	// the oldest, the new one under k.
	for _, k := range []string{"k2", "k3", "k4", "k5"} {
		enqueue(t, s, f.msg("0:5%"+k, k, time.Hour))
	}
	if ids := pendingIDs(t, s, f.device.ID); slices.Contains(ids, "0:4%new-collapsed") || len(ids) != 5 {
		t.Errorf("pending %v after a fifth collapse key", ids)
	}
	if _, n, err := s.SweepExpired(ctx, t0.Add(24*time.Hour)); err != nil || n != 5 {
		t.Errorf("sweep removed %d, %v; want 5", n, err)
	}
}

func FuzzDecodeMessage(f *testing.F) {
	codec.Seed(f, fullMessage(), Message{ID: "m"}, Message{ID: "m", Data: map[string]string{"k": "v"}, Raw: []byte("x"), Receipt: true, Sent: t0})
	for _, s := range []string{
		``, `{}`, `{"id": 5}`, `{"data": {}, "raw": ""}`, `{"sent": "0000-01-01T00:00:00+23:59"}`, `{"seq": 18446744073709551615}`,
		"\x01", "\x01\x00", "\x02",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, v []byte) {
		if err := codec.Redecode(t, v); err != nil && (!errors.Is(err, ErrCorrupt) || !strings.HasPrefix(err.Error(), "decode queued message: ")) {
			t.Fatalf("error %q does not say what failed", err)
		}
	})
}

// benchMessage is a typical queued message: a few data fields, no raw.
var benchMessage = Message{
	ID: "0:1772366400000000%31bd3c4df9fd7ecd", Seq: 123456, Device: "4411223344556677",
	Token: "dGhpcyBpcyBhIHRva2VuIG9mIGZvcnR5LWVpZ2h0IHJhbmRvbSBieXRlcyBpbiBiYXNl",
	App:   "org.example.thermostat", Sender: "1034567890", CollapseKey: "set-point", Priority: "high",
	Data: map[string]string{"set-point": "19.5", "room": "kitchen", "mode": "eco"},
	Sent: t0, Expiry: t0.Add(time.Hour),
}

// BenchmarkMessageRecord writes and reads a record as put and decode do;
// BenchmarkMessageRecordJSON the JSON record of earlier versions, for
// comparison.
func BenchmarkMessageRecord(b *testing.B)     { codec.Benchmark(b, benchMessage) }
func BenchmarkMessageRecordJSON(b *testing.B) { codec.BenchmarkJSON(b, benchMessage) }
