// SPDX-License-Identifier: Apache-2.0

package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	bolt "go.etcd.io/bbolt"
)

var bucketNetworks = []byte("networks")

// Heartbeat is what the agent learned about the idle timeout of one
// network's middleboxes: the longest heartbeat interval that held and the
// shortest that did not.
type Heartbeat struct {
	// Good is the longest interval a connection survived idle.
	Good time.Duration `json:"good"`
	// Bad is the shortest interval after which a connection died
	// silently; zero when none has.
	Bad     time.Duration `json:"bad,omitempty"`
	Updated time.Time     `json:"updated"`
}

// Heartbeat returns what was learned about network, or ErrNotFound.
func (s *Store) Heartbeat(network string) (Heartbeat, error) {
	var h Heartbeat
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketNetworks)
		if b == nil {
			return ErrNotFound
		}
		v := b.Get([]byte(network))
		if v == nil {
			return ErrNotFound
		}
		return json.Unmarshal(v, &h)
	})
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return Heartbeat{}, fmt.Errorf("heartbeat of network %q: %w", network, err)
		}
		return Heartbeat{}, fmt.Errorf("read heartbeat of network %q: %w", network, err)
	}
	return h, nil
}

// SetHeartbeat records what was learned about network.
func (s *Store) SetHeartbeat(network string, h Heartbeat) error {
	if network == "" {
		return errors.New("set heartbeat: no network")
	}
	v, err := json.Marshal(h)
	if err != nil {
		return fmt.Errorf("set heartbeat of network %q: %w", network, err)
	}
	err = s.db.Update(func(tx *bolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketNetworks)
		if err != nil {
			return err
		}
		return b.Put([]byte(network), v)
	})
	if err != nil {
		return fmt.Errorf("set heartbeat of network %q: %w", network, err)
	}
	return nil
}
