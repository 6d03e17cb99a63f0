// SPDX-License-Identifier: Apache-2.0

package sleep

import (
	"context"
	"errors"
	"io"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/prop"
	"golang.org/x/sys/unix"

	"tether/internal/busclient/busclienttest"
	"tether/internal/dbustest"
)

// lockRequest is one Inhibit call the fake logind answered.
type lockRequest struct {
	args []string // what, who, why, mode
	// held reads the lock's pipe: EOF once every copy of the descriptor
	// handed out is closed.
	held *os.File
	// given is the fake's own copy, which must stay open until the reply
	// carrying it is sent: the test closes it once the watcher has
	// shown it holds the lock.
	given *os.File
}

// fakeLogind is logind's Manager on its own bus connection: Inhibit hands
// out one end of a pipe, and the test emits PrepareForSleep.
type fakeLogind struct {
	conn  *dbus.Conn
	locks chan lockRequest
	// events gets "inhibit" when Inhibit is called, before it answers.
	events *events
}

func startLogind(t *testing.T, bus *dbustest.Bus, delayUSec uint64) *fakeLogind {
	t.Helper()
	l := &fakeLogind{conn: bus.Conn(t), locks: make(chan lockRequest, 4), events: &events{}}
	err := l.conn.ExportMethodTable(map[string]any{
		"Inhibit": func(what, who, why, mode string) (dbus.UnixFD, *dbus.Error) {
			r, w, err := os.Pipe()
			if err != nil {
				return -1, dbus.MakeFailedError(err)
			}
			t.Cleanup(func() { r.Close(); w.Close() })
			fd := dbus.UnixFD(w.Fd())
			l.events.add("inhibit")
			l.locks <- lockRequest{args: []string{what, who, why, mode}, held: r, given: w}
			return fd, nil
		},
	}, dbus.ObjectPath(logindPath), managerIface)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := prop.Export(l.conn, dbus.ObjectPath(logindPath), prop.Map{
		managerIface: {"InhibitDelayMaxUSec": {Value: delayUSec, Emit: prop.EmitConst}},
	}); err != nil {
		t.Fatal(err)
	}
	if reply, err := l.conn.RequestName(logindName, dbus.NameFlagDoNotQueue); err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("own %s: %v, %v", logindName, reply, err)
	}
	return l
}

func (l *fakeLogind) prepareForSleep(t *testing.T, start bool) {
	t.Helper()
	if err := l.conn.Emit(dbus.ObjectPath(logindPath), managerIface+".PrepareForSleep", start); err != nil {
		t.Fatal(err)
	}
}

func (l *fakeLogind) nextLock(t *testing.T) lockRequest {
	t.Helper()
	select {
	case r := <-l.locks:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("no Inhibit call")
		panic("unreachable")
	}
}

// closed waits until every copy of the lock's descriptor is closed.
func (r lockRequest) closed(t *testing.T) {
	t.Helper()
	r.held.SetReadDeadline(time.Now().Add(10 * time.Second))
	if n, err := r.held.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("lock still held: read %d, %v", n, err)
	}
}

// open tells, without waiting, whether someone still holds the lock.
func (r lockRequest) open(t *testing.T) bool {
	t.Helper()
	fds := []unix.PollFd{{Fd: int32(r.held.Fd()), Events: unix.POLLIN}}
	n, err := unix.Poll(fds, 0)
	if err != nil {
		t.Fatal(err)
	}
	return n == 0
}

// events records what happened, in order, from any goroutine.
type events struct {
	mu   sync.Mutex
	list []string
}

func (e *events) add(s string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.list = append(e.list, s)
}

func (e *events) get() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.list)
}

func TestWatcher(t *testing.T) {
	bus := dbustest.Start(t)
	logind := startLogind(t, bus, 2_000_000)
	conn := busclienttest.Dial(t, bus.Address)
	// A broad rule on the watcher's connection brings a stranger's
	// PrepareForSleep to the watcher too.
	if err := conn.AddMatch(t.Context(), "type='signal',interface='"+managerIface+"'"); err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{Bus: conn, Who: "tether-test", Why: "testing"})
	if err != nil {
		t.Fatal(err)
	}

	got := logind.events
	prepared := make(chan struct{}, 1)
	resumed := make(chan struct{}, 1)
	firstLock := make(chan lockRequest, 1)
	hooks := Hooks{
		Prepare: func(ctx context.Context) {
			got.add("prepare")
			deadline, ok := ctx.Deadline()
			if !ok || time.Until(deadline) > 2*time.Second {
				t.Errorf("prepare's deadline %v is not within logind's delay of 2s", deadline)
			}
			// The fake's copy goes; the watcher's must stay until
			// preparation is over.
			first := <-firstLock
			first.given.Close()
			if !first.open(t) {
				t.Error("lock released before preparation finished")
			}
			prepared <- struct{}{}
		},
		Resume: func(ctx context.Context) {
			got.add("resume")
			resumed <- struct{}{}
		},
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx, hooks) }()

	first := logind.nextLock(t)
	firstLock <- first
	if want := []string{"sleep", "tether-test", "testing", "delay"}; !slices.Equal(first.args, want) {
		t.Errorf("Inhibit%q, want Inhibit%q", first.args, want)
	}

	// A stranger cannot make the agent drop its connection. Its signal is
	// through the bus before the GetId call returns, ahead of logind's.
	stranger := bus.Conn(t)
	if err := stranger.Emit(dbus.ObjectPath(logindPath), managerIface+".PrepareForSleep", true); err != nil {
		t.Fatal(err)
	}
	if err := stranger.BusObject().Call("org.freedesktop.DBus.GetId", 0).Err; err != nil {
		t.Fatal(err)
	}

	logind.prepareForSleep(t, true)
	<-prepared
	first.closed(t)
	got.add("released")

	logind.prepareForSleep(t, false)
	second := logind.nextLock(t)
	<-resumed
	second.given.Close()

	if want := []string{"inhibit", "prepare", "released", "inhibit", "resume"}; !slices.Equal(got.get(), want) {
		t.Errorf("events %q, want %q", got.get(), want)
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Run does not return after its context ends")
	}
	second.closed(t)
}

func TestWatcherWithoutLogind(t *testing.T) {
	bus := dbustest.Start(t)
	w, err := New(Config{Bus: busclienttest.Dial(t, bus.Address)})
	if err != nil {
		t.Fatal(err)
	}
	err = w.Run(t.Context(), Hooks{})
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Run = %v, want ErrUnavailable", err)
	}
}

func TestNewWithoutBus(t *testing.T) {
	if _, err := New(Config{}); err == nil {
		t.Fatal("New accepted no bus")
	}
}

// After logind restarts, the new logind's signals are the ones followed.
func TestWatcherLogindRestarts(t *testing.T) {
	bus := dbustest.Start(t)
	old := startLogind(t, bus, 1_000_000)
	w, err := New(Config{Bus: busclienttest.Dial(t, bus.Address)})
	if err != nil {
		t.Fatal(err)
	}
	prepared := make(chan struct{}, 1)
	resumed := make(chan struct{}, 1)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go w.Run(ctx, Hooks{
		Prepare: func(context.Context) { prepared <- struct{}{} },
		Resume:  func(context.Context) { resumed <- struct{}{} },
	})
	lock := old.nextLock(t)
	// A resume (with the lock still held) shows the watcher is waiting
	// for signals, and has the lock: the fake's copy can go.
	old.prepareForSleep(t, false)
	select {
	case <-resumed:
	case <-time.After(10 * time.Second):
		t.Fatal("no resume")
	}
	lock.given.Close()

	old.conn.Close()
	restarted := startLogind(t, bus, 1_000_000)
	restarted.prepareForSleep(t, true)
	select {
	case <-prepared:
	case <-time.After(10 * time.Second):
		t.Fatal("the restarted logind's PrepareForSleep was not followed")
	}
	lock.closed(t)
}
