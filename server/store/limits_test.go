package store

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

// TestRegistrationsPerDeviceBounded: a device may hold
// MaxRegistrationsPerDevice registrations; re-registering one of them
// still works, another device is not affected, and unregistering makes room.
func TestRegistrationsPerDeviceBounded(t *testing.T) {
	s, _ := openTemp(t)
	now := time.Now()
	snd, err := s.AddSender("s", "", hash("key"), now)
	if err != nil {
		t.Fatal(err)
	}
	for i := range MaxRegistrationsPerDevice {
		if _, err := s.Register("dev", fmt.Sprint("app.", i), snd.ID, now); err != nil {
			t.Fatalf("registration %d: %v", i+1, err)
		}
	}
	if _, err := s.Register("dev", "app.one-more", snd.ID, now); !errors.Is(err, ErrTooManyRegistrations) {
		t.Fatalf("registration over the limit: %v, want ErrTooManyRegistrations", err)
	}
	if _, err := s.Register("dev", "app.0", snd.ID, now); err != nil {
		t.Errorf("re-registering an app at the limit: %v", err)
	}
	if _, err := s.Register("other-dev", "app.0", snd.ID, now); err != nil {
		t.Errorf("another device: %v", err)
	}
	if _, err := s.Unregister("dev", "app.7", snd.ID, now); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Register("dev", "app.one-more", snd.ID, now); err != nil {
		t.Errorf("after an unregistration: %v", err)
	}
}
