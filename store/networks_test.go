// SPDX-License-Identifier: Apache-2.0

package store

import (
	"errors"
	"path/filepath"
	"testing"
	"time"
)

func TestHeartbeatPerNetwork(t *testing.T) {
	path := filepath.Join(t.TempDir(), "agent.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Heartbeat("wlan0/192.0.2.1"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("unknown network: %v, want ErrNotFound", err)
	}
	if err := s.SetHeartbeat("", Heartbeat{Good: time.Minute}); err == nil {
		t.Fatal("a heartbeat for no network was accepted")
	}
	at := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	wifi := Heartbeat{Good: 9 * time.Minute, Bad: 10 * time.Minute, Updated: at}
	cell := Heartbeat{Good: 28 * time.Minute, Updated: at}
	if err := s.SetHeartbeat("wlan0/192.0.2.1", wifi); err != nil {
		t.Fatal(err)
	}
	if err := s.SetHeartbeat("wwan0/-", cell); err != nil {
		t.Fatal(err)
	}
	// It survives a restart.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if s, err = Open(path); err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for network, want := range map[string]Heartbeat{"wlan0/192.0.2.1": wifi, "wwan0/-": cell} {
		got, err := s.Heartbeat(network)
		if err != nil || got != want {
			t.Errorf("heartbeat of %s = %+v, %v; want %+v", network, got, err, want)
		}
	}
}
