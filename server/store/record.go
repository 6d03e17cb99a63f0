// SPDX-License-Identifier: Apache-2.0

package store

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"tether/internal/record"
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
// The strings, maps and times are package record's: a time keeps every
// instant a JSON record can hold. An empty map and an empty Raw come back
// nil, as they did from the JSON records of earlier versions (omitempty).
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
	dst = record.Grow(dst, encodedSize(m))
	dst = append(dst, recordVersion)
	dst = binary.AppendUvarint(dst, uint64(len(m.Raw)))
	dst = record.AppendString(dst, m.ID)
	dst = record.AppendString(dst, m.Device)
	dst = record.AppendString(dst, m.Token)
	dst = record.AppendString(dst, m.App)
	dst = record.AppendString(dst, m.Sender)
	dst = binary.AppendUvarint(dst, m.Seq)
	dst = record.AppendString(dst, m.CollapseKey)
	dst = record.AppendString(dst, m.Priority)
	dst = binary.AppendUvarint(dst, flags(m))
	dst = record.AppendMap(dst, m.Data)
	dst = record.AppendMap(dst, m.Notification)
	dst = record.AppendString(dst, m.Topic)
	dst = record.AppendString(dst, m.Urgency)
	dst = record.AppendString(dst, m.OriginID)
	dst = record.AppendTime(dst, m.Sent)
	dst = record.AppendTime(dst, m.Expiry)
	return append(dst, m.Raw...)
}

// encodedSize is the length of m's record.
func encodedSize(m *Message) int {
	return 1 + record.UvarintSize(uint64(len(m.Raw))) +
		record.StringSize(m.ID) + record.StringSize(m.Device) + record.StringSize(m.Token) + record.StringSize(m.App) + record.StringSize(m.Sender) +
		record.UvarintSize(m.Seq) + record.StringSize(m.CollapseKey) + record.StringSize(m.Priority) + record.UvarintSize(flags(m)) +
		record.MapSize(m.Data) + record.MapSize(m.Notification) +
		record.StringSize(m.Topic) + record.StringSize(m.Urgency) + record.StringSize(m.OriginID) +
		record.TimeSize(m.Sent) + record.TimeSize(m.Expiry) + len(m.Raw)
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
	fields, raw, err := record.CutTail(v[1:], "raw")
	if err != nil {
		return corrupt(err)
	}
	r := record.NewReader(fields)
	m.ID = r.String("id")
	m.Device = r.String("device")
	m.Token = r.String("token")
	m.App = r.String("app")
	m.Sender = r.String("sender")
	m.Seq = r.Uvarint("seq")
	m.CollapseKey = r.String("collapse key")
	m.Priority = r.String("priority")
	f := r.Uvarint("flags")
	if f&^knownFlags != 0 {
		// A later version's, whose meaning this one would drop.
		r.Fail(fmt.Errorf("unknown flags 0x%x", f&^knownFlags))
	}
	m.DelayWhileIdle, m.Receipt = f&flagDelayWhileIdle != 0, f&flagReceipt != 0
	m.Data = r.Map("data")
	m.Notification = r.Map("notification")
	m.Topic = r.String("topic")
	m.Urgency = r.String("urgency")
	m.OriginID = r.String("origin id")
	m.Sent = r.Time("sent time")
	m.Expiry = r.Time("expiry")
	if err := r.Finish(); err != nil {
		*m = Message{}
		return corrupt(err)
	}
	if len(raw) > 0 {
		m.Raw = slices.Clone(raw)
	}
	return nil
}

// corrupt is the error of a record that does not decode, for what is wrong
// with it.
func corrupt(err error) error {
	return fmt.Errorf("decode queued message: %w: %w", ErrCorrupt, err)
}
