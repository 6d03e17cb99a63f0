// SPDX-License-Identifier: Apache-2.0

package power

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"
)

// fakeUevents is a UeventSource the test feeds. Each send returns once
// the watcher has taken the event.
type fakeUevents chan Uevent

func (f fakeUevents) Receive(ctx context.Context) (Uevent, error) {
	select {
	case ev := <-f:
		if ev.Action == "fail" {
			return Uevent{}, errors.New(ev.DevPath)
		}
		if ev.Action == "overflow" {
			return Uevent{}, ErrUeventsLost
		}
		return ev, nil
	case <-ctx.Done():
		return Uevent{}, ctx.Err()
	}
}

func (f fakeUevents) send(t *testing.T, ev Uevent) {
	t.Helper()
	select {
	case f <- ev:
	case <-time.After(10 * time.Second):
		t.Fatalf("watcher does not take uevent %+v", ev)
	}
}

var batteryUevent = Uevent{Action: "change", DevPath: "/devices/battery/power_supply/BAT0", Subsystem: "power_supply"}

// running is a Watcher's Run in progress.
type running struct {
	states chan State
	done   chan struct{} // closed when Run has returned
	err    error         // what it returned
}

// watch runs w until the test ends.
func watch(t *testing.T, w *Watcher) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{states: make(chan State, 16), done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = w.Run(ctx, func(s State) { r.states <- s })
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Error("Run does not return after its context ends")
		}
	})
	return r
}

func expect(t *testing.T, states <-chan State, want State) {
	t.Helper()
	select {
	case got := <-states:
		if got != want {
			t.Fatalf("reported %v %+v, want %+v", got, got, want)
		}
	case <-time.After(10 * time.Second):
		t.Fatalf("no report; want %+v", want)
	}
}

// Uevents make the watcher read sysfs again; it reports each change once.
func TestWatcherUevents(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{
		acDir + "type": "Mains", acDir + "online": "1",
		batDir + "type": "Battery", batDir + "status": "Charging", batDir + "capacity": "50",
	})
	events := make(fakeUevents)
	w, err := New(Config{SysfsRoot: root, LowBattery: 20, Uevents: events})
	if err != nil {
		t.Fatal(err)
	}
	states := watch(t, w).states
	expect(t, states, State{Capacity: 50, Source: SourceSysfs, Mode: ModeMains})

	steps := []struct {
		name  string
		files map[string]string
		ev    Uevent
		want  State
	}{
		{
			name:  "unplugged",
			files: map[string]string{acDir + "online": "0", batDir + "status": "Discharging"},
			ev:    Uevent{Action: "change", DevPath: "/devices/AC", Subsystem: "power_supply"},
			want:  State{OnBattery: true, Capacity: 50, Source: SourceSysfs, Mode: ModeBattery},
		},
		{
			name:  "drained",
			files: map[string]string{batDir + "capacity": "20"},
			ev:    batteryUevent,
			want:  State{OnBattery: true, Capacity: 20, Source: SourceSysfs, Mode: ModeLow},
		},
		{
			name:  "events lost",
			files: map[string]string{batDir + "capacity": "19"},
			ev:    Uevent{Action: "overflow"},
			want:  State{OnBattery: true, Capacity: 19, Source: SourceSysfs, Mode: ModeLow},
		},
		{
			name:  "plugged in",
			files: map[string]string{acDir + "online": "1", batDir + "status": "Charging"},
			ev:    Uevent{Action: "change", DevPath: "/devices/AC", Subsystem: "power_supply"},
			want:  State{Capacity: 19, Source: SourceSysfs, Mode: ModeMains},
		},
		{
			name:  "adapter removed",
			files: map[string]string{acDir + "type": "Unknown", acDir + "online": "0", batDir + "status": "Discharging"},
			ev:    Uevent{Action: "remove", DevPath: "/devices/AC", Subsystem: "power_supply"},
			want:  State{OnBattery: true, Capacity: 19, Source: SourceSysfs, Mode: ModeLow},
		},
	}
	for _, step := range steps {
		writeTree(t, root, step.files)
		events.send(t, step.ev)
		expect(t, states, step.want)
	}

	// An event that changes nothing is not reported: the next report is
	// the next change.
	events.send(t, batteryUevent)
	writeTree(t, root, map[string]string{batDir + "capacity": "18"})
	events.send(t, batteryUevent)
	expect(t, states, State{OnBattery: true, Capacity: 18, Source: SourceSysfs, Mode: ModeLow})
}

// Only power_supply uevents count; an overflow counts as one.
func TestReceiveUevents(t *testing.T) {
	w, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	events := make(fakeUevents)
	changed := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.receiveUevents(ctx, events, changed) }()

	tests := []struct {
		ev      Uevent
		changed bool
	}{
		{Uevent{Action: "add", DevPath: "/devices/virtual/net/wlan0", Subsystem: "net"}, false},
		{Uevent{Action: "change", DevPath: "/devices/virtual/block/loop0", Subsystem: "block"}, false},
		{batteryUevent, true},
		{Uevent{Action: "overflow"}, true},
	}
	sync := Uevent{Action: "change", Subsystem: "misc"}
	for _, tt := range tests {
		events.send(t, tt.ev)
		events.send(t, sync) // taken once tt.ev has been handled
		select {
		case <-changed:
			if !tt.changed {
				t.Errorf("uevent %+v signals a change", tt.ev)
			}
		default:
			if tt.changed {
				t.Errorf("uevent %+v signals no change", tt.ev)
			}
		}
	}
	events.send(t, Uevent{Action: "fail", DevPath: "socket gone"})
	if err := <-done; err == nil || err.Error() != "socket gone" {
		t.Errorf("receiveUevents returned %v, want the source's error", err)
	}
	cancel()
}

// On battery from sysfs, capacity is read again without an event.
func TestWatcherRechecksCapacity(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{batDir + "type": "Battery", batDir + "status": "Discharging", batDir + "capacity": "50"})
	w, err := New(Config{SysfsRoot: root, CapacityInterval: 5 * time.Millisecond, Uevents: make(fakeUevents)})
	if err != nil {
		t.Fatal(err)
	}
	states := watch(t, w).states
	expect(t, states, State{OnBattery: true, Capacity: 50, Source: SourceSysfs, Mode: ModeBattery})
	writeTree(t, root, map[string]string{batDir + "capacity": "49"})
	expect(t, states, State{OnBattery: true, Capacity: 49, Source: SourceSysfs, Mode: ModeBattery})
}

// No timer runs on mains, from UPower, or when disabled.
func TestRecheckAfter(t *testing.T) {
	tests := []struct {
		interval time.Duration
		state    State
		want     time.Duration
	}{
		{0, State{OnBattery: true, Source: SourceSysfs}, DefaultCapacityInterval},
		{time.Minute, State{OnBattery: true, Source: SourceSysfs}, time.Minute},
		{time.Minute, State{OnBattery: false, Source: SourceSysfs}, 0},
		{time.Minute, State{OnBattery: false, Source: SourceNone}, 0},
		{time.Minute, State{OnBattery: true, Source: SourceUPower}, 0},
		{-1, State{OnBattery: true, Source: SourceSysfs}, 0},
	}
	for _, tt := range tests {
		w, err := New(Config{CapacityInterval: tt.interval})
		if err != nil {
			t.Fatal(err)
		}
		if got := w.recheckAfter(tt.state); got != tt.want {
			t.Errorf("interval %v, %+v: recheck after %v, want %v", tt.interval, tt.state, got, tt.want)
		}
	}
}

// A failing source ends Run with its error.
func TestWatcherSourceFails(t *testing.T) {
	events := make(fakeUevents)
	w, err := New(Config{SysfsRoot: t.TempDir(), Uevents: events})
	if err != nil {
		t.Fatal(err)
	}
	r := watch(t, w)
	expect(t, r.states, State{Capacity: UnknownCapacity, Source: SourceNone, Mode: ModeMains})
	events.send(t, Uevent{Action: "fail", DevPath: "socket gone"})
	select {
	case <-r.done:
		if r.err == nil || r.err.Error() != "power: watch uevents: socket gone" {
			t.Fatalf("Run returned %v", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run goes on after its source failed")
	}
}

// Run leaves no goroutine behind.
func TestWatcherStops(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{batDir + "type": "Battery", batDir + "status": "Discharging", batDir + "capacity": "50"})
	before := runtime.NumGoroutine()
	w, err := New(Config{SysfsRoot: root, Uevents: make(fakeUevents)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	reported := make(chan struct{})
	done := make(chan error)
	go func() { done <- w.Run(ctx, func(State) { close(reported) }) }()
	<-reported
	if n := runtime.NumGoroutine(); n < before+2 {
		t.Fatalf("%d goroutines while running, %d before: the count does not see Run's", n, before)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("Run: %v", err)
	}
	// The test's own goroutine exits just after handing over Run's
	// result; Run's must all be gone.
	for deadline := time.Now().Add(10 * time.Second); runtime.NumGoroutine() > before; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after Run returned, %d before", runtime.NumGoroutine(), before)
		}
	}
}

// With no source given, the watcher listens on the kernel's socket, and
// stops listening when its context ends.
func TestWatcherKernelUevents(t *testing.T) {
	root := t.TempDir()
	writeTree(t, root, map[string]string{acDir + "type": "Mains", acDir + "online": "1"})
	w, err := New(Config{SysfsRoot: root})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	states := make(chan State, 1)
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, func(s State) { states <- s }) }()
	expect(t, states, State{Capacity: UnknownCapacity, Source: SourceSysfs, Mode: ModeMains})
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run does not return after its context ends")
	}
}
