// SPDX-License-Identifier: Apache-2.0

package store

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
)

// MaxTopicsPerRegistration is GCM's limit on the topics one registration
// (app instance) may be subscribed to.
const MaxTopicsPerRegistration = 2000

// ErrTooManyTopics is wrapped when a registration has MaxTopicsPerRegistration
// subscriptions already.
var ErrTooManyTopics = errors.New("too many topic subscriptions")

// present is the value of set-like buckets: bbolt's Get cannot tell a nil
// value from a missing key. In token_topics it marks a subscription made
// before their dates were kept, which have their Unix seconds instead.
var present = []byte{1}

// Subscription is a registration's subscription to a topic.
type Subscription struct {
	Topic string
	// Added is when it was made, by the server's clock; zero for one made
	// before Tether kept the date.
	Added time.Time
}

// addedValue is the token_topics value of a subscription made at added.
func addedValue(added time.Time) []byte { return be64(uint64(added.Unix())) }

// addedTime reads a token_topics value.
func addedTime(v []byte) time.Time {
	if len(v) != 8 {
		return time.Time{}
	}
	return time.Unix(int64(binary.BigEndian.Uint64(v)), 0).UTC()
}

func subKey(sender, topic, token string) []byte { return join(sender, topic, token) }

func tokenTopicKey(token, topic string) []byte { return join(token, topic) }

// subscribe subscribes the active registration reg to topic; added is
// the token_topics value, which says when.
func subscribe(tx *bolt.Tx, reg Registration, topic string, added []byte) error {
	tt := tx.Bucket(bucketTokenTopic)
	if tt.Get(tokenTopicKey(reg.Token, topic)) != nil {
		return nil
	}
	if len(topicsOf(tx, reg.Token)) >= MaxTopicsPerRegistration {
		return ErrTooManyTopics
	}
	if err := tt.Put(tokenTopicKey(reg.Token, topic), added); err != nil {
		return err
	}
	return tx.Bucket(bucketTopicSubs).Put(subKey(reg.Sender, topic, reg.Token), present)
}

func unsubscribe(tx *bolt.Tx, reg Registration, topic string) error {
	if err := tx.Bucket(bucketTokenTopic).Delete(tokenTopicKey(reg.Token, topic)); err != nil {
		return err
	}
	return tx.Bucket(bucketTopicSubs).Delete(subKey(reg.Sender, topic, reg.Token))
}

// topicsOf lists the topics token is subscribed to.
func topicsOf(tx *bolt.Tx, token string) []string {
	var out []string
	for _, sub := range subscriptionsOf(tx, token) {
		out = append(out, sub.Topic)
	}
	return out
}

// subscriptionsOf lists token's subscriptions in the order of their
// topics.
func subscriptionsOf(tx *bolt.Tx, token string) []Subscription {
	var out []Subscription
	prefix := join(token, "")
	c := tx.Bucket(bucketTokenTopic).Cursor()
	for k, v := c.Seek(prefix); bytes.HasPrefix(k, prefix); k, v = c.Next() {
		out = append(out, Subscription{Topic: string(k[len(prefix):]), Added: addedTime(v)})
	}
	return out
}

func unsubscribeAll(tx *bolt.Tx, reg Registration) error {
	for _, topic := range topicsOf(tx, reg.Token) {
		if err := unsubscribe(tx, reg, topic); err != nil {
			return err
		}
	}
	return nil
}

// moveSubscriptions gives the subscriptions of old to the token newToken,
// with the dates they were made.
func moveSubscriptions(tx *bolt.Tx, old Registration, newToken string) error {
	fresh := old
	fresh.Token = newToken
	for _, topic := range topicsOf(tx, old.Token) {
		added := bytes.Clone(tx.Bucket(bucketTokenTopic).Get(tokenTopicKey(old.Token, topic)))
		if err := unsubscribe(tx, old, topic); err != nil {
			return err
		}
		if err := subscribe(tx, fresh, topic, added); err != nil {
			return err
		}
	}
	return nil
}

// Subscribe subscribes the active registration of (device, app, sender)
// to topic at now. It wraps ErrNotFound when there is no such
// registration and ErrTooManyTopics when it has too many subscriptions
// already.
func (s *Store) Subscribe(ctx context.Context, device, app, sender, topic string, now time.Time) error {
	var refused error
	err := s.batch(func(tx *bolt.Tx) error {
		refused = nil
		token := tx.Bucket(bucketRegIndex).Get(join(device, app, sender))
		if token == nil {
			refused = ErrNotFound
			return nil
		}
		reg, _, err := get[Registration](tx.Bucket(bucketRegs), token)
		if err != nil {
			return err
		}
		if err := subscribe(tx, reg, topic, addedValue(now)); errors.Is(err, ErrTooManyTopics) {
			refused = err
		} else if err != nil {
			return err
		}
		return nil
	})
	if err == nil {
		err = refused
	}
	if err != nil {
		return fmt.Errorf("subscribe app %q for sender %s to topic %q: %w", app, sender, topic, err)
	}
	return nil
}

// Unsubscribe ends the subscription of the active registration of (device,
// app, sender) to topic. Ending one that does not exist is not an error.
func (s *Store) Unsubscribe(ctx context.Context, device, app, sender, topic string) error {
	err := s.batch(func(tx *bolt.Tx) error {
		token := tx.Bucket(bucketRegIndex).Get(join(device, app, sender))
		if token == nil {
			return nil
		}
		reg, _, err := get[Registration](tx.Bucket(bucketRegs), token)
		if err != nil {
			return err
		}
		return unsubscribe(tx, reg, topic)
	})
	if err != nil {
		return fmt.Errorf("unsubscribe app %q for sender %s from topic %q: %w", app, sender, topic, err)
	}
	return nil
}

// Topics lists the topics token is subscribed to, in order.
func (s *Store) Topics(ctx context.Context, token string) ([]string, error) {
	var out []string
	err := s.db.View(func(tx *bolt.Tx) error {
		out = topicsOf(tx, token)
		return nil
	})
	return out, err
}

// Subscriptions lists the subscriptions of token, in the order of their
// topics.
func (s *Store) Subscriptions(ctx context.Context, token string) ([]Subscription, error) {
	var out []Subscription
	err := s.db.View(func(tx *bolt.Tx) error {
		out = subscriptionsOf(tx, token)
		return nil
	})
	return out, err
}

// SubscriptionOutcome is what ChangeSubscriptions did for one token.
type SubscriptionOutcome int

// Outcomes of ChangeSubscriptions.
const (
	SubscriptionDone          SubscriptionOutcome = iota // subscribed or unsubscribed (or already so)
	SubscriptionNotFound                                 // the token is not an active registration
	SubscriptionWrongSender                              // the token belongs to another sender
	SubscriptionTooManyTopics                            // the registration has too many topics already
)

// ChangeSubscriptions subscribes (or, with subscribe false, unsubscribes)
// the registrations of tokens to topic on behalf of sender, in one
// transaction: the app server's way to manage topics. A token replaced
// within its grace period stands for the registration that replaced it.
func (s *Store) ChangeSubscriptions(ctx context.Context, sender, topic string, tokens []string, subscribing bool, now time.Time) ([]SubscriptionOutcome, error) {
	var out []SubscriptionOutcome
	err := s.batch(func(tx *bolt.Tx) error {
		out = make([]SubscriptionOutcome, len(tokens))
		regs := tx.Bucket(bucketRegs)
		for i, t := range tokens {
			var r Resolution
			if t != "" && len(t) <= bolt.MaxKeySize {
				var err error
				if r, err = resolve(regs, t, now); err != nil {
					return err
				}
			}
			switch {
			case r.Given.Token != "" && r.Given.Sender != sender:
				out[i] = SubscriptionWrongSender
			case r.Reg.Token == "":
				out[i] = SubscriptionNotFound
			case !subscribing:
				if err := unsubscribe(tx, r.Reg, topic); err != nil {
					return err
				}
			default:
				err := subscribe(tx, r.Reg, topic, addedValue(now))
				if errors.Is(err, ErrTooManyTopics) {
					out[i] = SubscriptionTooManyTopics
				} else if err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("change %d subscriptions to topic %q: %w", len(tokens), topic, err)
	}
	return out, nil
}

// TopicMessage is a message to a topic or a condition, stored before the
// app server gets its answer and kept until it has been copied into the
// queue of every registration it is for.
type TopicMessage struct {
	// Seq orders topic messages; PutTopicMessage assigns it.
	Seq uint64 `json:"seq"`
	// ID is the message ID answered to the app server.
	ID     string `json:"id"`
	Sender string `json:"sender"`
	// Topic is set for a send to /topics/Topic, Condition for a condition.
	Topic     string `json:"topic,omitempty"`
	Condition string `json:"condition,omitempty"`
	// Topics are those whose subscribers may receive it, in the order they
	// are fanned out: Topic, or the topics the condition names.
	Topics []string `json:"topics"`
	// RestrictedPackage, when set, limits the copies to that app ID.
	RestrictedPackage string            `json:"restricted_package,omitempty"`
	CollapseKey       string            `json:"collapse_key,omitempty"`
	Priority          string            `json:"priority,omitempty"`
	DelayWhileIdle    bool              `json:"delay_while_idle,omitempty"`
	Data              map[string]string `json:"data,omitempty"`
	Notification      map[string]string `json:"notification,omitempty"`
	Receipt           bool              `json:"receipt,omitempty"`
	// OriginID is the app server's message_id, over XMPP (Message.OriginID).
	OriginID string    `json:"origin_id,omitempty"`
	Sent     time.Time `json:"sent"`
	Expiry   time.Time `json:"expiry"`
	// Live marks a time-to-live-0 message: copies go only to the devices
	// connected while it is fanned out, and are never stored.
	Live bool `json:"live,omitempty"`

	// The fan-out position: the subscribers of Topics[Next] after the
	// token After are still to do.
	Next   int    `json:"next"`
	After  string `json:"after,omitempty"`
	Copies int    `json:"copies"`
}

// PutTopicMessage stores tm for fan-out and assigns its Seq.
func (s *Store) PutTopicMessage(ctx context.Context, tm *TopicMessage) error {
	need := messageCost(payloadSize(tm.Data, tm.Notification))
	err := s.batch(func(tx *bolt.Tx) error {
		if s.room(tx) < need {
			return ErrFull
		}
		b := tx.Bucket(bucketTopicMsgs)
		var err error
		if tm.Seq, err = b.NextSequence(); err != nil {
			return err
		}
		return put(b, be64(tm.Seq), tm)
	})
	if err != nil {
		return fmt.Errorf("store topic message: %w", err)
	}
	return nil
}

// TopicMessages returns up to limit topic messages not yet fanned out with
// Seq above after, in order.
func (s *Store) TopicMessages(ctx context.Context, after uint64, limit int) ([]TopicMessage, error) {
	var out []TopicMessage
	err := s.db.View(func(tx *bolt.Tx) error {
		out = nil
		c := tx.Bucket(bucketTopicMsgs).Cursor()
		for k, v := c.Seek(be64(after + 1)); k != nil && len(out) < limit; k, v = c.Next() {
			tm, err := decode[TopicMessage](v)
			if err != nil {
				// FanOut reports it, and the caller can delete it.
				tm = TopicMessage{Seq: binary.BigEndian.Uint64(k)}
			}
			out = append(out, tm)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read topic messages: %w", err)
	}
	return out, nil
}

// DeleteTopicMessage drops topic message seq, fanned out or not.
func (s *Store) DeleteTopicMessage(ctx context.Context, seq uint64) error {
	err := s.batch(func(tx *bolt.Tx) error { return tx.Bucket(bucketTopicMsgs).Delete(be64(seq)) })
	if err != nil {
		return fmt.Errorf("delete topic message %d: %w", seq, err)
	}
	return nil
}

// Matches reports whether a registration with the subscriptions that
// subscribed reports gets a copy of tm, to a condition, in the fan-out of
// tm.Topics[tm.Next]: match says so, unless it is subscribed to an
// earlier topic of the condition, whose fan-out considered it already.
func (tm *TopicMessage) Matches(match func(subscribed func(topic string) bool) bool, subscribed func(topic string) bool) bool {
	return !slices.ContainsFunc(tm.Topics[:tm.Next], subscribed) && match(subscribed)
}

// CopyFor is tm's copy for the registration reg, with message ID id. A
// time-to-live-0 message's copy has no time to live left: the message's
// Expiry is the window of its fan-out.
func (tm *TopicMessage) CopyFor(id string, reg Registration) Message {
	m := Message{
		ID: id, Device: reg.Device, Token: reg.Token, App: reg.App, Sender: tm.Sender,
		CollapseKey: tm.CollapseKey, Priority: tm.Priority, DelayWhileIdle: tm.DelayWhileIdle,
		Data: tm.Data, Notification: tm.Notification, Topic: tm.Topic, Receipt: tm.Receipt, OriginID: tm.OriginID,
		Sent: tm.Sent, Expiry: tm.Expiry,
	}
	if tm.Live {
		m.Expiry = tm.Sent
	}
	return m
}

// FanOutStep says how FanOut makes one step.
type FanOutStep struct {
	// Limit bounds the subscribers considered in the step.
	Limit int
	Now   time.Time
	// NewID makes the message ID of one copy.
	NewID func() string
	// Match, for a condition, reports whether a registration with the
	// subscriptions that subscribed reports gets a copy. Nil matches all.
	Match func(subscribed func(topic string) bool) bool
	// Live, when set, is the subscribers' live sessions, as for Enqueue.
	Live Live
}

// FanOutResult is what one step of FanOut did.
type FanOutResult struct {
	// Devices have new messages in their queues, each named once.
	Devices []string
	// Live are the copies of a time-to-live-0 message, for the devices'
	// sessions; they were not stored.
	Live []Message
	// Copies counts the copies made in the step.
	Copies int
	// Done means the message is fanned out (or expired) and deleted.
	Done bool
}

// FanOut copies topic message seq into the queues of the next subscribers,
// at most step.Limit of them, and saves the position in the same
// transaction: after a crash, fan-out resumes where the last step ended,
// with no subscriber left out or served twice. Only one goroutine may fan
// out a given message.
func (s *Store) FanOut(ctx context.Context, seq uint64, step FanOutStep) (FanOutResult, error) {
	var res FanOutResult
	err := s.update(func(tx *bolt.Tx) error {
		res = FanOutResult{}
		msgs := tx.Bucket(bucketTopicMsgs)
		tm, ok, err := get[TopicMessage](msgs, be64(seq))
		if err != nil {
			return err
		}
		if !ok || !step.Now.Before(tm.Expiry) {
			res.Done = true
			return msgs.Delete(be64(seq))
		}
		// Each copy takes room: with little left, the step makes fewer,
		// and none at all is ErrFull, retried later.
		limit := step.Limit
		if !tm.Live {
			room := s.room(tx)
			if room < messageCost(payloadSize(tm.Data, tm.Notification)) {
				return ErrFull
			}
			limit = int(min(int64(limit), room/messageCost(payloadSize(tm.Data, tm.Notification))))
		}
		step.Limit = limit
		devices := make(map[string]bool)
		considered := 0
		for tm.Next < len(tm.Topics) && considered < step.Limit {
			done, err := s.fanOutTopic(tx, &tm, step, &res, devices, &considered)
			if err != nil {
				return err
			}
			if done {
				tm.Next, tm.After = tm.Next+1, ""
			}
		}
		for d := range devices {
			res.Devices = append(res.Devices, d)
		}
		tm.Copies += res.Copies
		if tm.Next >= len(tm.Topics) {
			res.Done = true
			return msgs.Delete(be64(seq))
		}
		return put(msgs, be64(seq), tm)
	})
	if err != nil {
		return FanOutResult{}, fmt.Errorf("fan out topic message %d: %w", seq, err)
	}
	return res, nil
}

// fanOutTopic copies tm to the subscribers of tm.Topics[tm.Next] after
// tm.After until the step's limit; done means that topic is finished.
func (s *Store) fanOutTopic(tx *bolt.Tx, tm *TopicMessage, step FanOutStep, res *FanOutResult, devices map[string]bool, considered *int) (done bool, err error) {
	topic := tm.Topics[tm.Next]
	prefix := join(tm.Sender, topic, "")
	regs, tt := tx.Bucket(bucketRegs), tx.Bucket(bucketTokenTopic)
	c := tx.Bucket(bucketTopicSubs).Cursor()
	start := append(bytes.Clone(prefix), tm.After...)
	k, _ := c.Seek(start)
	if tm.After != "" && bytes.Equal(k, start) {
		k, _ = c.Next()
	}
	for ; bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if *considered >= step.Limit {
			return false, nil
		}
		*considered++
		token := string(k[len(prefix):])
		tm.After = token
		reg, ok, err := get[Registration](regs, []byte(token))
		if errors.Is(err, ErrCorrupt) {
			continue // one damaged registration must not hold up the rest
		}
		if err != nil {
			return false, err
		}
		if !ok || !reg.Active() || tm.RestrictedPackage != "" && reg.App != tm.RestrictedPackage {
			continue
		}
		if step.Match != nil && !tm.Matches(step.Match, func(t string) bool { return tt.Get(tokenTopicKey(token, t)) != nil }) {
			continue
		}
		m := tm.CopyFor(step.NewID(), reg)
		if tm.Live {
			res.Live = append(res.Live, m)
			res.Copies++
			continue
		}
		queued, err := s.enqueueOne(tx, &m, step.Live)
		if err != nil {
			return false, err
		}
		if queued {
			devices[reg.Device] = true
			res.Copies++
		}
	}
	return true, nil
}
