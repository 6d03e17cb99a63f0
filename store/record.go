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

// A held message's record in an app's inbox is binary, written by
// encodeMessage:
//
//	0x01                          the version
//	uvarint                       the length of Raw, whose bytes end the record
//	string  ID, App, From, CollapseKey
//	map     Data
//	string  Priority
//	varint  SentTime
//	map     Notification
//	string  Topic
//	varint  TTL
//	time    Received, Expires
//	bytes   Raw
//
// The strings, maps and times are package record's: a time keeps every
// instant a JSON record can hold. Seq and Token are not kept: the key is
// the Seq, and the Token is checked before the message is held.
// An empty map and an empty Raw come back nil, as they did from the JSON
// records of earlier versions (omitempty).
//
// Raw's length comes first so that the decoder can copy all the string
// fields out of the transaction's memory in one allocation: the bytes
// between the header and Raw.
//
// Earlier versions wrote the JSON of Message, which starts with '{';
// decodeMessage reads those too, since a device's store outlives upgrades.
const recordVersion = 0x01

// encodeMessage appends m's record to dst, growing dst at most once.
func encodeMessage(dst []byte, m *Message) []byte {
	dst = record.Grow(dst, encodedSize(m))
	dst = append(dst, recordVersion)
	dst = binary.AppendUvarint(dst, uint64(len(m.Raw)))
	dst = record.AppendString(dst, m.ID)
	dst = record.AppendString(dst, m.App)
	dst = record.AppendString(dst, m.From)
	dst = record.AppendString(dst, m.CollapseKey)
	dst = record.AppendMap(dst, m.Data)
	dst = record.AppendString(dst, m.Priority)
	dst = binary.AppendVarint(dst, m.SentTime)
	dst = record.AppendMap(dst, m.Notification)
	dst = record.AppendString(dst, m.Topic)
	dst = binary.AppendVarint(dst, m.TTL)
	dst = record.AppendTime(dst, m.Received)
	dst = record.AppendTime(dst, m.Expires)
	return append(dst, m.Raw...)
}

// encodedSize is the length of m's record.
func encodedSize(m *Message) int {
	return 1 + record.UvarintSize(uint64(len(m.Raw))) +
		record.StringSize(m.ID) + record.StringSize(m.App) + record.StringSize(m.From) + record.StringSize(m.CollapseKey) +
		record.MapSize(m.Data) + record.StringSize(m.Priority) + record.VarintSize(m.SentTime) +
		record.MapSize(m.Notification) + record.StringSize(m.Topic) + record.VarintSize(m.TTL) +
		record.TimeSize(m.Received) + record.TimeSize(m.Expires) + len(m.Raw)
}

// decodeMessage reads a record that encodeMessage or an earlier version's
// JSON wrote into m, which it overwrites. m shares no memory with v, which
// is bbolt's and valid only during the transaction. Times come back in UTC:
// only the instant is kept.
func decodeMessage(v []byte, m *Message) error {
	*m = Message{}
	if len(v) == 0 {
		return errors.New("decode held message: empty record")
	}
	switch v[0] {
	case '{':
		// Into a message of its own: passing m to json would move every
		// caller's message to the heap, binary records' included.
		var old Message
		if err := json.Unmarshal(v, &old); err != nil {
			return fmt.Errorf("decode held message: %w", err)
		}
		*m = old
		return nil
	case recordVersion:
	default:
		return fmt.Errorf("decode held message: unknown record version 0x%02x", v[0])
	}
	fields, raw, err := record.CutTail(v[1:], "raw")
	if err != nil {
		return fmt.Errorf("decode held message: %w", err)
	}
	r := record.NewReader(fields)
	m.ID = r.String("id")
	m.App = r.String("app")
	m.From = r.String("from")
	m.CollapseKey = r.String("collapse key")
	m.Data = r.Map("data")
	m.Priority = r.String("priority")
	m.SentTime = r.Varint("sent time")
	m.Notification = r.Map("notification")
	m.Topic = r.String("topic")
	m.TTL = r.Varint("ttl")
	m.Received = r.Time("received time")
	m.Expires = r.Time("expiry")
	if err := r.Finish(); err != nil {
		*m = Message{}
		return fmt.Errorf("decode held message: %w", err)
	}
	if len(raw) > 0 {
		m.Raw = slices.Clone(raw)
	}
	return nil
}
