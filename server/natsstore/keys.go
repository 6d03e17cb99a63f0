// SPDX-License-Identifier: Apache-2.0

package natsstore

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strconv"

	"tether/server/store"
)

// The records' keys, after a shard's prefix (prefix.N.) or the meta
// stream's (prefix.meta.). Parts that come from outside (device IDs, sender
// IDs) are checked with validToken before they make a subject; tokens, app
// IDs and message IDs are hashed, topics encoded.
//
//	meta:  schema                        the layout (meta)
//	       snd.SENDER                    store.Sender
//	       sndkey.HASH                   sender ID of a server key's hash
//	       cert.HASH                     store.CertBinding, by its identity's hash
//	       ek.ID                         store.EnrollKey
//	       ekhash.HASH                   enrollment key ID of a key's hash
//	shard: dev.DEVICE                    store.Device
//	       q.DEVICE                      the device's queue (device)
//	       sess.DEVICE                   its latest session, whose sequence orders them
//	       m.DEVICE.SEQ                  a queued message's body (store.Message)
//	       tok.HASH                      store.Registration, by its token's hash
//	       tt.HASH                       the token's topics
//	       sub.SENDER.TOPIC.HASH         a subscription, for fan-out
//	       seen.DEVICE.HASH              an upstream message ID seen lately
//	       up.DEVICE.SENDER.app.HASH.N   an app's queued upstream message, in
//	                                     the Nth of its store.MaxUpstreamPerApp
//	                                     slots (HASH names the app)
//	       up.DEVICE.SENDER.other.HASH.RECEIVED
//	                                     a queued delivery receipt, or an
//	                                     upstream message moved in (outside the cap)
//	       tm.SEQ                        a topic message waiting for fan-out

func devKey(device string) string     { return "dev." + device }
func queueKey(device string) string   { return "q." + device }
func sessionKey(device string) string { return "sess." + device }
func bodyKey(device string, seq uint64) string {
	return "m." + device + "." + strconv.FormatUint(seq, 10)
}
func tokKey(token string) string    { return "tok." + secretHash(token) }
func topicsKey(token string) string { return "tt." + secretHash(token) }
func subKey(sender, topic, token string) string {
	return "sub." + sender + "." + topicToken(topic) + "." + secretHash(token)
}

// secretHash names a token in subjects: a token is a secret, and subjects
// show in NATS's monitoring and tools.
func secretHash(token string) string {
	h := sha256.Sum256([]byte(token))
	return hex.EncodeToString(h[:16])
}
func subsOf(sender, topic string) string { return "sub." + sender + "." + topicToken(topic) + ".>" }
func seenKey(device, app, id string) string {
	return "seen." + device + "." + idHash(app, id)
}

// upSlotKey is the subject of one of app's slots on device, holding a
// message for sender; "*" for sender or slot makes a filter. The app ID
// is hashed as a token is: it may hold what a subject may not.
func upSlotKey(device, sender, app, slot string) string {
	return "up." + device + "." + sender + ".app." + secretHash(app) + "." + slot
}

// upKey is the subject of an upstream message outside its app's slots.
func upKey(u store.Upstream) string {
	return "up." + u.Device + "." + u.Sender + ".other." + idHash(u.App, u.ID) + "." + strconv.FormatInt(u.Received.UnixNano(), 10)
}

// upLane matches the upstream messages of device for sender: a lane of
// the dispatcher.
func upLane(device, sender string) string { return "up." + device + "." + sender + ".>" }

// legacyUp matches upstream messages as servers before lanes stored
// them, up.DEVICE.HASH.RECEIVED; no subject of today's has as few tokens.
const legacyUp = "up.*.*.*"

func topicMsgKey(seq uint64) string { return "tm." + strconv.FormatUint(seq, 10) }

func senderKey(id string) string       { return "snd." + id }
func senderKeyHash(hash []byte) string { return "sndkey." + hex.EncodeToString(hash) }
func certKey(certID string) string     { return "cert." + secretHash(certID) }
func enrollKey(id string) string       { return "ek." + id }
func enrollHashKey(hash []byte) string { return "ekhash." + hex.EncodeToString(hash) }

// topicToken encodes a topic name, whose characters ('.', '~', '%') may
// not stand in a subject, as one subject token.
func topicToken(topic string) string { return base64.RawURLEncoding.EncodeToString([]byte(topic)) }

// idHash names an app's message ID within a device's subjects.
func idHash(app, id string) string {
	h := sha256.Sum256([]byte(app + "\x00" + id))
	return hex.EncodeToString(h[:16])
}
