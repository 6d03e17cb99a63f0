package natsstore

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"time"
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
//	       up.DEVICE.HASH.RECEIVED       a queued upstream message
//	       tm.SEQ                        a topic message waiting for fan-out

func devKey(device string) string     { return "dev." + device }
func queueKey(device string) string   { return "q." + device }
func sessionKey(device string) string { return "sess." + device }
func bodyKey(device string, seq uint64) string {
	return "m." + device + "." + strconv.FormatUint(seq, 10)
}
func bodiesOf(device string) string { return "m." + device + ".>" }
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
func upKey(device, app, id string, received time.Time) string {
	return "up." + device + "." + idHash(app, id) + "." + strconv.FormatInt(received.UnixNano(), 10)
}
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
