// SPDX-License-Identifier: Apache-2.0

package cluster

import (
	"context"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
)

// DeviceHandler takes, on the node that holds a device's session, what
// other nodes publish about the device.
type DeviceHandler interface {
	// Kick: the device's queue or notices changed.
	Kick(device string)
	// End: the device was revoked or removed; its session ends.
	End(device string)
	// Live: a message with no time to live, for the session only; payload
	// is as the publisher encoded it.
	Live(device string, payload []byte)
	// Takeover: a session of the device opened elsewhere, named by key;
	// the older of two sessions ends.
	Takeover(device, key string)
}

// Devices publishes to the node that holds a device's session and
// receives what is published to the sessions of this node. Each session
// subscribes to its device's subjects (prefix.dev.DEVICE.KIND) for as long
// as it lives; all of a node's subscriptions feed one channel, read by
// Run, so that an idle session costs a subscription and no goroutine.
type Devices struct {
	nc      *nats.Conn
	prefix  string
	handler DeviceHandler
	in      chan *nats.Msg
}

// deviceBacklog bounds what waits for Run; beyond it NATS drops messages
// and reports a slow consumer, and a session then learns of its queue at
// its next kick or ack.
const deviceBacklog = 1 << 16

// Kinds of device messages, the last token of their subjects.
const (
	kindKick     = "kick"
	kindEnd      = "end"
	kindLive     = "live"
	kindTakeover = "takeover"
)

// NewDevices prepares the node's device subjects; Run delivers them.
func NewDevices(n *Node, h DeviceHandler) *Devices {
	return &Devices{nc: n.nc, prefix: n.cfg.Prefix, handler: h, in: make(chan *nats.Msg, deviceBacklog)}
}

// DevicePublisher publishes to devices' sessions and receives nothing:
// for a process that is not a node, such as an admin command.
func DevicePublisher(nc *nats.Conn, prefix string) *Devices {
	return &Devices{nc: nc, prefix: prefix}
}

func (d *Devices) subject(device, kind string) string {
	return d.prefix + ".dev." + device + "." + kind
}

// Watch subscribes this node to what is published for device, until
// unwatch is called.
func (d *Devices) Watch(device string) (unwatch func(), err error) {
	if !validDevice(device) {
		return nil, fmt.Errorf("watch device %.40q: not a device ID", device)
	}
	sub, err := d.nc.ChanSubscribe(d.subject(device, "*"), d.in)
	if err != nil {
		return nil, fmt.Errorf("watch device %s: %w", device, err)
	}
	return func() { sub.Unsubscribe() }, nil
}

// Kick tells the node holding device's session to look at its queue.
func (d *Devices) Kick(device string) { d.publish(device, kindKick, nil) }

// End ends device's session, wherever it is.
func (d *Devices) End(device string) { d.publish(device, kindEnd, nil) }

// Live hands payload to device's session, if it has one anywhere.
func (d *Devices) Live(device string, payload []byte) { d.publish(device, kindLive, payload) }

// Takeover announces a new session of device, named key.
func (d *Devices) Takeover(device, key string) { d.publish(device, kindTakeover, []byte(key)) }

// publish sends without waiting: when no node holds a session of the
// device, nobody needs to know.
func (d *Devices) publish(device, kind string, payload []byte) {
	if !validDevice(device) {
		return
	}
	d.nc.Publish(d.subject(device, kind), payload)
}

// Run delivers what arrives for this node's sessions until ctx ends.
func (d *Devices) Run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case msg := <-d.in:
			rest := strings.TrimPrefix(msg.Subject, d.prefix+".dev.")
			dot := strings.LastIndexByte(rest, '.')
			if dot < 0 {
				continue
			}
			device, kind := rest[:dot], rest[dot+1:]
			switch kind {
			case kindKick:
				d.handler.Kick(device)
			case kindEnd:
				d.handler.End(device)
			case kindLive:
				d.handler.Live(device, msg.Data)
			case kindTakeover:
				d.handler.Takeover(device, string(msg.Data))
			}
		}
	}
}

// validDevice reports whether id can stand in a subject: device IDs are
// hex, and one that is not never had a session.
func validDevice(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'f' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}
