// SPDX-License-Identifier: Apache-2.0

package natsstore

import (
	"crypto/rand"
	"encoding/hex"
	"maps"
	"slices"
	"strings"
	"time"

	"tether/server/store"
)

// device is the record of one device's queue and registrations, the unit
// of every change to the device: what GCM's caps count is computed on it,
// and a change is written only if it is still the record read.
type device struct {
	// Next is the Seq of the last message queued.
	Next uint64 `json:"next,omitempty"`
	// Queue is every stored message, in Seq order; the bodies are
	// records of their own.
	Queue []entry `json:"queue,omitempty"`
	// Regs maps app and sender (regKey) to the active registration's token.
	Regs map[string]string `json:"regs,omitempty"`
	// Refresh holds the token refreshes the device has not acked, by regKey.
	Refresh map[string]refresh `json:"refresh,omitempty"`
	// Deleted counts each app's dropped messages (store.Notice).
	Deleted map[string]deleted `json:"deleted,omitempty"`
}

// entry is a queued message as the caps, acks and receipts need it.
type entry struct {
	Seq      uint64    `json:"seq"`
	ID       string    `json:"id"`
	App      string    `json:"app"`
	Sender   string    `json:"sender"`
	Token    string    `json:"token"`
	Collapse string    `json:"collapse,omitempty"`
	Expiry   time.Time `json:"expiry"`
	// Receipt asks for a delivery receipt; Sent and OriginID then fill it.
	Receipt  bool      `json:"receipt,omitempty"`
	Sent     time.Time `json:"sent,omitzero"`
	OriginID string    `json:"origin_id,omitempty"`
}

type refresh struct {
	ID    string `json:"id"`
	Token string `json:"token"`
}

// deleted is an app's count of dropped messages: Pending accumulates, and
// a sealed notice keeps its ID and count until the device acks it (see
// the bbolt store's deletedNotice).
type deleted struct {
	Pending     int    `json:"pending,omitempty"`
	SealedID    string `json:"sealed_id,omitempty"`
	SealedCount int    `json:"sealed_count,omitempty"`
}

func regKey(app, sender string) string { return app + "\x00" + sender }

func splitRegKey(k string) (app, sender string) {
	app, sender, _ = strings.Cut(k, "\x00")
	return app, sender
}

// Notice IDs, as the bbolt store makes them.
const (
	refreshIDPrefix = "tr:"
	deletedIDPrefix = "dm:"
)

func newNoticeID(prefix string) string {
	b := make([]byte, 12)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// change is what one operation does to a device beyond its record: bodies
// to write and to delete, and counts the caller reports.
type change struct {
	put     []store.Message // bodies of new entries
	dropped []entry         // entries removed, whose bodies go
	// drops counts the entries the rules dropped undelivered, by reason,
	// for the observer once the change is written.
	drops map[store.DropReason]int
}

// drop counts n entries dropped for reason.
func (ch *change) drop(reason store.DropReason, n int) {
	if n <= 0 {
		return
	}
	if ch.drops == nil {
		ch.drops = map[store.DropReason]int{}
	}
	ch.drops[reason] += n
}

// merge adds what o did to ch.
func (ch *change) merge(o change) {
	ch.put = append(ch.put, o.put...)
	ch.dropped = append(ch.dropped, o.dropped...)
	for r, n := range o.drops {
		ch.drop(r, n)
	}
}

// clone is a copy of d that shares nothing with it.
func (d device) clone() device {
	c := d
	c.Queue = slices.Clone(d.Queue)
	c.Regs = maps.Clone(d.Regs)
	c.Refresh = maps.Clone(d.Refresh)
	c.Deleted = maps.Clone(d.Deleted)
	return c
}

// prune drops the entries expired by now, counting them in ch: their
// bodies expire by themselves.
func (d *device) prune(now time.Time, ch *change) {
	if now.IsZero() {
		return
	}
	n := len(d.Queue)
	d.Queue = slices.DeleteFunc(d.Queue, func(e entry) bool { return !e.Expiry.After(now) })
	ch.drop(store.DropExpired, n-len(d.Queue))
}

// enqueue stores m under the collapse rule and the caps, as the bbolt
// store's enqueueOne does; false means m's token is not the active
// registration of its app and sender on this device. What live names
// flowing stays and is not counted. Nothing is offered to live: a change
// may be tried again, and the session may be on another node.
func (d *device) enqueue(m *store.Message, ch *change, live store.Live) bool {
	if d.Regs[regKey(m.App, m.Sender)] != m.Token || m.Token == "" {
		return false
	}
	d.Next++
	m.Seq = d.Next
	e := entry{Seq: m.Seq, ID: m.ID, App: m.App, Sender: m.Sender, Token: m.Token, Collapse: m.CollapseKey, Expiry: m.Expiry}
	if m.Receipt {
		e.Receipt, e.Sent, e.OriginID = true, m.Sent, m.OriginID
	}
	if m.CollapseKey == "" {
		var flow []string
		if live != nil {
			flow = live.Flowing(m.Device, m.App)
		}
		waiting := func(x entry) bool { return x.App == m.App && x.Collapse == "" && !slices.Contains(flow, x.ID) }
		if d.count(waiting) >= store.MaxPendingPerApp {
			n := d.remove(waiting, ch)
			d.addDeleted(m.App, n)
			ch.drop(store.DropCap, n)
		}
	} else {
		ch.drop(store.DropCollapsed, d.remove(func(x entry) bool { return x.Token == m.Token && x.Collapse == m.CollapseKey }, ch))
	}
	d.Queue = append(d.Queue, e)
	ch.put = append(ch.put, *m)
	if m.CollapseKey != "" {
		if keys := d.keys(m.App); len(keys) > store.MaxCollapseKeysPerApp {
			oldest := keys[0]
			d.remove(func(x entry) bool { return x.Seq == oldest.Seq }, ch)
			d.addDeleted(m.App, 1)
			ch.drop(store.DropCap, 1)
		}
	}
	return true
}

// count counts the entries that match.
func (d *device) count(match func(entry) bool) int {
	n := 0
	for _, e := range d.Queue {
		if match(e) {
			n++
		}
	}
	return n
}

// keys lists the entries of app's collapse keys, oldest first: each
// (token, key) has one.
func (d *device) keys(app string) []entry {
	var out []entry
	for _, e := range d.Queue {
		if e.App == app && e.Collapse != "" {
			out = append(out, e)
		}
	}
	return out
}

// remove takes the entries that match out of the queue into ch.dropped
// and returns how many.
func (d *device) remove(match func(entry) bool, ch *change) int {
	n := 0
	d.Queue = slices.DeleteFunc(d.Queue, func(e entry) bool {
		if !match(e) {
			return false
		}
		ch.dropped = append(ch.dropped, e)
		n++
		return true
	})
	return n
}

func (d *device) addDeleted(app string, n int) {
	if n <= 0 {
		return
	}
	if d.Deleted == nil {
		d.Deleted = map[string]deleted{}
	}
	x := d.Deleted[app]
	x.Pending += n
	d.Deleted[app] = x
}

// notices lists what the device must be told; unsealed means a count of
// deleted messages waits to be sealed into a notice (seal).
func (d *device) notices() (out []store.Notice, unsealed bool) {
	for _, k := range sortedKeys(d.Refresh) {
		r := d.Refresh[k]
		app, sender := splitRegKey(k)
		out = append(out, store.Notice{ID: r.ID, Kind: store.NoticeTokenRefresh, App: app, Sender: sender, Token: r.Token})
	}
	for _, app := range sortedKeys(d.Deleted) {
		x := d.Deleted[app]
		if x.SealedID != "" {
			out = append(out, store.Notice{ID: x.SealedID, Kind: store.NoticeDeleted, App: app, Count: x.SealedCount})
		} else if x.Pending > 0 {
			unsealed = true
		}
	}
	return out, unsealed
}

// seal gives every pending count without a notice one, with a fixed ID.
func (d *device) seal() {
	for app, x := range d.Deleted {
		if x.SealedID == "" && x.Pending > 0 {
			x.SealedID, x.SealedCount, x.Pending = newNoticeID(deletedIDPrefix), x.Pending, 0
			d.Deleted[app] = x
		}
	}
}

// ackNotice forgets notice id; an unknown one is ignored.
func (d *device) ackNotice(id string) {
	if strings.HasPrefix(id, refreshIDPrefix) {
		for k, r := range d.Refresh {
			if r.ID == id {
				delete(d.Refresh, k)
			}
		}
		return
	}
	for app, x := range d.Deleted {
		if x.SealedID != id {
			continue
		}
		if x.Pending == 0 {
			delete(d.Deleted, app)
		} else {
			x.SealedID, x.SealedCount = "", 0
			d.Deleted[app] = x
		}
	}
}

func isNoticeID(id string) bool {
	return strings.HasPrefix(id, refreshIDPrefix) || strings.HasPrefix(id, deletedIDPrefix)
}

// ack removes the entries with these IDs and forgets the notices; it
// returns the removed entries.
func (d *device) ack(ids []string, ch *change) []entry {
	before := len(ch.dropped)
	for _, id := range ids {
		if isNoticeID(id) {
			d.ackNotice(id)
			continue
		}
		d.remove(func(e entry) bool { return e.ID == id }, ch)
	}
	return ch.dropped[before:]
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
