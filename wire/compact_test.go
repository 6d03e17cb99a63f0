// SPDX-License-Identifier: Apache-2.0

package wire

import (
	"encoding/hex"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// session is the two ends of one version 2 session.
func session(t testing.TB) (server, agent *Codec) {
	t.Helper()
	server, err := NewCodec(2)
	if err != nil {
		t.Fatal(err)
	}
	agent, _ = NewCodec(2)
	return server, agent
}

// pass encodes b at from and decodes it at to, into into.
func pass(t testing.TB, from, to *Codec, b, into Body) []byte {
	t.Helper()
	frame, err := from.Encode("", b)
	if err != nil {
		t.Fatalf("Encode: %v", err)
	}
	f, err := to.Decode(frame)
	if err != nil {
		t.Fatalf("Decode(%x): %v", frame, err)
	}
	if err := f.Decode(into); err != nil {
		t.Fatalf("Frame.Decode(%x): %v", frame, err)
	}
	return frame
}

var benchToken = strings.Repeat("T", 64)

// benchMessage is a message as `make bench` sends it: one data value of
// 200 bytes, to a 64-character token.
func benchMessage(i int) Message {
	return Message{
		ID: fmt.Sprintf("0:1765000000%06d%%%016x", i, 0x9e3779b97f4a7c15^uint64(i)), Token: benchToken,
		App: "com.example.bench", From: "493827164502", Data: map[string]string{"p": strings.Repeat("x", 200)},
		TTL: MaxTTL, SentTime: 1765000000000 + int64(i),
	}
}

func TestCompactRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		msgs []Message
	}{
		{"one", []Message{benchMessage(1)}},
		{"every field", []Message{{
			ID: "0:1%ab", Token: "t", App: "a", From: "1", CollapseKey: "c", Data: map[string]string{"k": "v", "k2": ""},
			Priority: "high", TTL: 60, SentTime: 1700000000000, Notification: map[string]string{"title": "Hi"}, Topic: "news~1%2F",
		}}},
		{"no data, ttl 0", []Message{{ID: "i", Token: "t", App: "a", From: "1"}}},
		{"raw", []Message{{ID: "w", Token: "t", App: "a", From: WebPushSender, TTL: 30, CollapseKey: "topic", Raw: []byte("\x00\x01binary\xff")}}},
		{"largest raw", []Message{{ID: "w", Token: "t", App: "a", From: WebPushSender, Raw: make([]byte, MaxRawSize)}}},
		{"two registrations", []Message{
			{ID: "1", Token: "t1", App: "a", From: "1", TTL: 5},
			{ID: "2", Token: "t2", App: "b", From: "2", TTL: 5},
			{ID: "3", Token: "t1", App: "a", From: "1", TTL: 5},
			{ID: "4", Token: "t2", App: "b", From: "2", TTL: 5},
		}},
		{"the same message twice", []Message{benchMessage(7), benchMessage(7)}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			server, agent := session(t)
			var ids []string
			for _, m := range tc.msgs {
				var got Message
				pass(t, server, agent, m, &got)
				if !reflect.DeepEqual(got, m) {
					t.Fatalf("round trip = %+v, want %+v", got, m)
				}
				ids = append(ids, m.ID)
			}
			ids = append(ids, "tr:notice")
			var acked Ack
			pass(t, agent, server, Ack{IDs: ids}, &acked)
			if !slices.Equal(acked.IDs, ids) {
				t.Fatalf("ack round trip = %q, want %q", acked.IDs, ids)
			}
		})
	}
}

// TestCompactShort checks what makes the frames short: the binding comes
// once per registration, and acks name numbers, not IDs.
func TestCompactShort(t *testing.T) {
	server, agent := session(t)
	var m Message
	first := pass(t, server, agent, benchMessage(1), &m)
	second := pass(t, server, agent, benchMessage(2), &m)
	if !strings.Contains(string(first), benchToken) || strings.Contains(string(second), benchToken) {
		t.Fatalf("the token should be in the first frame only:\n%x\n%x", first, second)
	}
	ack, err := agent.Encode("", Ack{IDs: []string{benchMessage(1).ID, benchMessage(2).ID, "tr:notice"}})
	if err != nil {
		t.Fatal(err)
	}
	if want := "\x02\x04\x01\x04\x02\x09\x09tr:notice"; string(ack) != want {
		t.Fatalf("ack = %x, want %x", ack, want)
	}
	var third Message
	pass(t, server, agent, benchMessage(3), &third)
	own, _ := agent.Encode("", Ack{IDs: []string{third.ID}})
	// A WebSocket frame adds 4 bytes to the message (server to agent,
	// unmasked, 126 to 65,535 bytes) and 6 to the ack (masked, short).
	if n := 4 + len(second) + 6 + len(own); n > 300 {
		t.Fatalf("a 200-byte payload takes %d bytes on the link, message and its own ack, want at most 300", n)
	}
	v1, _ := Encode("", benchMessage(2))
	t.Logf("message frame: %d bytes in version 2 (%d with its binding), %d in version 1", len(second), len(first), len(v1))
}

// TestCompactBounds checks that a codec's memory is bounded and that the
// frames past the bounds still say everything.
func TestCompactBounds(t *testing.T) {
	server, agent := session(t)
	var m Message
	for i := range MaxHandle + 1 {
		msg := Message{ID: fmt.Sprint("id", i), Token: fmt.Sprint("token", i), App: "a", From: "1"}
		pass(t, server, agent, msg, &m)
		if m.Token != msg.Token {
			t.Fatalf("message %d to token %q arrived for %q", i, msg.Token, m.Token)
		}
	}
	if len(server.handles) != 1 || len(agent.bound) != MaxHandle {
		t.Fatalf("%d handles bound at the server, %d at the agent; want 1 and %d", len(server.handles), len(agent.bound), MaxHandle)
	}
	// The same registration again: its handle was given up, so bound anew.
	pass(t, server, agent, Message{ID: "again", Token: "token0", App: "a", From: "1"}, &m)
	if m.Token != "token0" {
		t.Fatalf("token %q, want token0", m.Token)
	}

	server, agent = session(t)
	for i := range maxNumbered + 1 {
		pass(t, server, agent, Message{ID: fmt.Sprint("id", i), Token: "t", App: "a", From: "1"}, &m)
	}
	last := fmt.Sprint("id", maxNumbered)
	if _, ok := agent.numbers[last]; ok || len(server.numbered) != maxNumbered {
		t.Fatalf("message past %d unacked ones: numbered", maxNumbered)
	}
	var a Ack
	frame := pass(t, agent, server, Ack{IDs: []string{"id0", last}}, &a)
	if !slices.Equal(a.IDs, []string{"id0", last}) || !strings.Contains(string(frame), last) {
		t.Fatalf("ack %x decoded as %q", frame, a.IDs)
	}
	if _, ok := server.numbered[1]; ok {
		t.Fatal("an acked number is still remembered")
	}
	var ids []string
	for i := 1; i < maxNumbered; i++ {
		ids = append(ids, fmt.Sprint("id", i))
	}
	for chunk := range slices.Chunk(ids, MaxAckIDs) {
		pass(t, agent, server, Ack{IDs: chunk}, &a)
	}
	if server.numbered != nil || len(agent.numbers) != 0 {
		t.Fatalf("all acked, and the server keeps %d numbers, the agent %d", len(server.numbered), len(agent.numbers))
	}
}

func TestCompactRejects(t *testing.T) {
	bound := func(c *Codec) { // the session has seen one message, number 1
		c.bound = map[uint64]binding{1: {"t", "a", "1"}}
		c.numbered = map[uint64]string{1: "m1"}
	}
	big := "\x22\x01k\x80\x20" + strings.Repeat("v", MaxDataSize) // 4097 bytes
	cases := []struct {
		name, frame, want string
		state             func(*Codec)
	}{
		{"key with field 0", "\x01\x01", "field key", nil},
		{"kind 3", "\x01\x0b\x01", "field key", nil},
		{"truncated varint", "\x01\x0c\x80", "varint", bound},
		{"overlong varint", "\x01\x0c\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", "varint", bound},
		{"string past the end", "\x01\x09\x05ab", "left in the frame", bound},
		{"no handle", "\x01\x09\x02m1", "handle 0", bound},
		{"handle too big", "\x01\x09\x02m1\x0c\x81\x08", "handle 1025", bound},
		{"unbound handle", "\x01\x09\x02m1\x0c\x02", "not bound", bound},
		{"no id", "\x01\x0c\x01", "id is missing", bound},
		{"field twice", "\x01\x09\x02m1\x09\x02m2\x0c\x01", "twice", bound},
		{"wrong kind", "\x01\x08\x02m1\x0c\x01", "another kind", bound},
		{"control character", "\x01\x09\x02m\x01\x0c\x01", "control character", bound},
		{"ttl out of range", "\x01\x09\x02m1\x0c\x01\x28\xff\xff\xff\x0f", "ttl", bound},
		{"data too big", "\x01\x09\x02m1\x0c\x01" + big, "limit", bound},
		{"binding without sender", "\x01\x09\x02m1\x0c\x01\x11\x01t\x15\x01a", "sender", nil},
		{"bad priority", "\x01\x09\x02m1\x0c\x01\x25\x03low", "priority", bound},
		{"empty ack", "\x02", "ack of 0 ids", bound},
		{"ack of an unknown number", "\x02\x04\x02", "number 2", bound},
		{"ack id of the wrong kind", "\x02\x08\x01", "another kind", bound},
		{"ack of too many", "\x02" + strings.Repeat("\x09\x01x", MaxAckIDs+1), "more than", bound},
		{"too big", "\x02" + strings.Repeat("\x09\x01x", MaxFrameSize), "limit", bound},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, _ := NewCodec(2)
			if tc.state != nil {
				tc.state(c)
			}
			_, err := c.Decode([]byte(tc.frame))
			if !errors.Is(err, ErrBadFrame) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Decode(%x) = %v, want ErrBadFrame containing %q", tc.frame, err, tc.want)
			}
		})
	}
}

func TestCompactLaterFields(t *testing.T) {
	c, _ := NewCodec(2)
	// Fields 40 (a number), 41 (bytes) and 42 (a pair) are unknown.
	f, err := c.Decode([]byte("\x01\xa0\x07\x09\x02m1\xa5\x02zz\x0c\x01\x11\x01t\x15\x01a\x19\x011\xaa\x01k\x01v"))
	if err != nil {
		t.Fatal(err)
	}
	var m Message
	if err := f.Decode(&m); err != nil || m.ID != "m1" || m.Token != "t" || m.Data != nil {
		t.Fatalf("decoded %+v, %v", m, err)
	}
	f, err = c.Decode([]byte("\x07\x01"))
	if err != nil || f.Type != "compact 0x07" {
		t.Fatalf("unknown compact type: %+v, %v", f, err)
	}
}

func TestCodecVersions(t *testing.T) {
	for _, v := range []int{0, Version + 1} {
		if _, err := NewCodec(v); err == nil {
			t.Errorf("NewCodec(%d) succeeded", v)
		}
	}
	v1, _ := NewCodec(1)
	frame, err := v1.Encode("", benchMessage(1))
	if err != nil || MessageType(frame) != TextMessage {
		t.Fatalf("version 1 message frame %q, %v; want JSON", frame, err)
	}
	server, agent := session(t)
	binary, _ := server.Encode("", benchMessage(1))
	if MessageType(binary) != BinaryMessage {
		t.Fatalf("a compact frame goes in a message of type %d", MessageType(binary))
	}
	if _, err := v1.Decode(binary); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("version 1 decoded a compact frame: %v", err)
	}
	// A version 2 codec takes JSON frames and sends other types as JSON.
	var m Message
	pass(t, v1, agent, benchMessage(2), &m)
	reg, err := agent.Encode("r1", Register{App: "a", Sender: "1"})
	if err != nil || MessageType(reg) != TextMessage {
		t.Fatalf("register frame %q, %v; want JSON", reg, err)
	}
	if _, err := server.Encode("r1", Ack{IDs: []string{"x"}}); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("a compact frame with a ref: %v", err)
	}
	if _, err := server.Encode("", &Message{ID: "i"}); !errors.Is(err, ErrBadFrame) {
		t.Fatalf("an invalid message: %v", err)
	}
	if got := []int{Negotiate(1), Negotiate(2), Negotiate(7)}; !slices.Equal(got, []int{1, 2, 2}) {
		t.Fatalf("Negotiate(1, 2, 7) = %v", got)
	}
}

// ExampleCodec shows the frames of docs/protocol.md's example.
func ExampleCodec() {
	server, _ := NewCodec(2)
	agent, _ := NewCodec(2)
	m := Message{ID: "0:1765000000123456%7f3a", Token: "tok", App: "com.example.thermo", From: "493827164502",
		Data: map[string]string{"t": "21.5"}, TTL: 3600, SentTime: 1765000000123}
	first, _ := server.Encode("", m)
	m.ID = "0:1765000000124456%81c0"
	second, _ := server.Encode("", m)
	agent.Decode(first)
	agent.Decode(second)
	ack, _ := agent.Encode("", Ack{IDs: []string{"0:1765000000123456%7f3a", "0:1765000000124456%81c0"}})
	fmt.Println(hex.EncodeToString(first))
	fmt.Println(hex.EncodeToString(second))
	fmt.Println(hex.EncodeToString(ack))
	// Output:
	// 0104010917303a3137363530303030303031323334353625376633610c011103746f6b1512636f6d2e6578616d706c652e746865726d6f190c3439333832373136343530322201740432312e3528901c2cfbe4ca91af33
	// 0104020917303a3137363530303030303031323434353625383163300c012201740432312e3528901c2cfbe4ca91af33
	// 0204010402
}

// FuzzCompactDecode feeds arbitrary bytes to the compact decoder of a
// session that has seen a message. Whatever decodes must be valid and
// survive a round trip.
func FuzzCompactDecode(f *testing.F) {
	server, agent := session(f)
	for i := range 2 {
		frame, _ := server.Encode("", benchMessage(i))
		f.Add(frame)
		agent.Decode(frame)
	}
	raw := benchMessage(2)
	raw.Data, raw.Raw = nil, []byte{0, 1, 2, 0xff}
	frame, _ := server.Encode("", raw)
	f.Add(frame)
	ack, _ := agent.Encode("", Ack{IDs: []string{benchMessage(0).ID, "x"}})
	f.Add(ack)
	for _, s := range []string{"\x01", "\x02", "\x03\x00", "\x01\x0c\x01", "\x02\x04\x01", "\x01\xa0\x07\x09\x02m1\xa5\x02zz\x0c\x01\x11\x01t\x15\x01a\x19\x011\xaa\x01k\x01v"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, _ := NewCodec(2)
		c.bound = map[uint64]binding{1: {benchToken, "com.example.bench", "493827164502"}}
		c.numbered = map[uint64]string{1: "m1", 2: "m2"}
		fr, err := c.Decode(data)
		if err != nil {
			if !errors.Is(err, ErrBadFrame) {
				t.Fatalf("error %v is not ErrBadFrame", err)
			}
			return
		}
		switch fr.Type {
		case TypeMessage:
			var m, again Message
			if err := fr.Decode(&m); err != nil {
				t.Fatal(err)
			}
			if err := m.Validate(); err != nil {
				t.Fatalf("decoded an invalid message: %v", err)
			}
			server, agent := session(t)
			pass(t, server, agent, m, &again)
			if !reflect.DeepEqual(again, m) {
				t.Fatalf("round trip = %+v, want %+v", again, m)
			}
		case TypeAck:
			var a Ack
			if err := fr.Decode(&a); err != nil {
				t.Fatal(err)
			}
			if err := a.Validate(); err != nil {
				t.Fatalf("decoded an invalid ack: %v", err)
			}
		}
	})
}

// TestCompactLargestMessageFits: the largest valid message fits in a
// frame, so that a binding or number the codec noted always goes out.
func TestCompactLargestMessageFits(t *testing.T) {
	long := strings.Repeat("x", maxNameLen)
	m := Message{
		ID: long, Token: long, App: strings.Repeat("a", MaxAppIDLen), From: strings.Repeat("1", maxNameLen),
		CollapseKey: long, Priority: "normal", TTL: MaxTTL, SentTime: 1 << 62, Topic: strings.Repeat("t", MaxTopicLen),
		Data: map[string]string{}, Raw: make([]byte, MaxRawSize),
	}
	// Short keys with empty values cost the most frame per byte counted.
	for i := 0; DataSize(m.Data)+len(fmt.Sprint(i)) <= MaxDataSize; i++ {
		m.Data[fmt.Sprint(i)] = ""
	}
	server, _ := session(t)
	frame, err := server.Encode("", m)
	if err != nil {
		t.Fatal(err)
	}
	if len(frame) > 30<<10 {
		t.Fatalf("the largest message takes %d bytes", len(frame))
	}
}
