// SPDX-License-Identifier: Apache-2.0

package busclient

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"tether/internal/dbustest"
)

func TestEncodeDecode(t *testing.T) {
	tests := []struct {
		name string
		args []any
		sig  string
		want []any
	}{
		{"strings", []any{"a", "", "é"}, "sss", []any{"a", "", "é"}},
		{"numbers after a byte-long string", []any{"x", uint32(7), int64(-3), true}, "suxb", []any{"x", uint32(7), int64(-3), true}},
		{"path", []any{ObjectPath("/org/tether/Push")}, "o", []any{ObjectPath("/org/tether/Push")}},
		{"string array", []any{[]string{"a", "bc"}, []string{}}, "asas", []any{[]any{"a", "bc"}, []any{}}},
		{"dicts", []any{"p", map[string]string{"k": "v"}, map[string]Variant{"ttl": {"u", uint32(60)}, "n": {"x", int64(-1)}}},
			"sa{ss}a{sv}", []any{"p", map[string]any{"k": "v"}, map[string]any{"ttl": Variant{"u", uint32(60)}, "n": Variant{"x", int64(-1)}}}},
		{"variant", []any{Variant{"s", "high"}}, "v", []any{Variant{"s", "high"}}},
		{"bytes", []any{"x", []byte{0, 1, 255}, []byte{}, map[string]Variant{"m": {"ay", []byte("hi")}}},
			"sayaya{sv}", []any{"x", []byte{0, 1, 255}, []byte{}, map[string]any{"m": Variant{"ay", []byte("hi")}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var sig strings.Builder
			e := &encoder{}
			for _, a := range tt.args {
				s, err := signatureOf(a)
				if err != nil {
					t.Fatal(err)
				}
				sig.WriteString(s)
				e.value(a)
			}
			if sig.String() != tt.sig {
				t.Errorf("signature %q, want %q", sig.String(), tt.sig)
			}
			d := &decoder{b: e.b, order: binary.LittleEndian}
			got, err := d.values(tt.sig, 0)
			if err != nil || !reflect.DeepEqual(got, tt.want) || d.i != len(e.b) {
				t.Errorf("decoded %#v, %v (%d of %d bytes); want %#v", got, err, d.i, len(e.b), tt.want)
			}
		})
	}
}

func TestParseAddress(t *testing.T) {
	tests := []struct {
		addr, target string
		wantErr      bool
	}{
		{addr: "unix:path=/run/dbus/system_bus_socket", target: "/run/dbus/system_bus_socket"},
		{addr: "unix:path=/tmp/a%20b,guid=123", target: "/tmp/a b"},
		{addr: "unix:abstract=/tmp/dbus-x,guid=1", target: "@/tmp/dbus-x"},
		{addr: "tcp:host=h,port=1;unix:path=/s", target: "/s"},
		{addr: "tcp:host=h,port=1", wantErr: true},
		{addr: "unix:path=/a%2", wantErr: true},
		{addr: "unix:path=/a%zz", wantErr: true},
	}
	for _, tt := range tests {
		target, err := parseAddress(tt.addr)
		if (err != nil) != tt.wantErr || target != tt.target {
			t.Errorf("parseAddress(%q) = %q, %v", tt.addr, target, err)
		}
	}
}

// TestBus talks to a real dbus-daemon: calls, errors, signals, close.
func TestBus(t *testing.T) {
	bus := dbustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if !strings.HasPrefix(c.UniqueName(), ":") {
		t.Errorf("unique name %q", c.UniqueName())
	}
	body, err := c.Call(ctx, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner", "org.freedesktop.DBus")
	if err != nil || len(body) != 1 || body[0] != "org.freedesktop.DBus" {
		t.Errorf("GetNameOwner: %v, %v", body, err)
	}
	_, err = c.Call(ctx, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "NoSuchMethod")
	var be *Error
	if !errors.As(err, &be) || be.Name != "org.freedesktop.DBus.Error.UnknownMethod" {
		t.Errorf("an unknown method: %v", err)
	}

	if err := c.AddMatch(ctx, "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged'"); err != nil {
		t.Fatal(err)
	}
	other, err := Dial(ctx, bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	other.Close()
	var seen []string
	for len(seen) < 2 {
		s, err := c.NextSignal(ctx)
		if err != nil {
			t.Fatalf("NextSignal: %v (saw %q)", err, seen)
		}
		if s.Name != "org.freedesktop.DBus.NameOwnerChanged" || s.Sig != "sss" || s.Body[0] != other.UniqueName() {
			continue
		}
		seen = append(seen, s.Body[1].(string)+"→"+s.Body[2].(string))
	}
	if want := []string{"→" + other.UniqueName(), other.UniqueName() + "→"}; !reflect.DeepEqual(seen, want) {
		t.Errorf("NameOwnerChanged of the other connection: %q, want %q", seen, want)
	}

	c.Close()
	if _, err := c.NextSignal(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("NextSignal after Close: %v", err)
	}
	if _, err := c.Call(ctx, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetId"); err == nil {
		t.Error("a call after Close succeeded")
	}
}

// startBus starts a dbus-daemon for the test, and returns a context that
// bounds the test's calls and a function that connects to the bus.
func startBus(t *testing.T) (context.Context, func() *Conn) {
	bus := dbustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx, func() *Conn {
		c, err := Dial(ctx, bus.Address)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
}

// TestServe owns a name on a real dbus-daemon and answers calls to it:
// replies, errors, calls that want no reply, and a name already taken.
func TestServe(t *testing.T) {
	ctx, dial := startBus(t)
	server, caller := dial(), dial()
	const name, path, iface = "org.example.Served", ObjectPath("/org/example/Served"), "org.example.Served"
	if err := server.RequestName(ctx, name); err != nil {
		t.Fatal(err)
	}
	if err := server.RequestName(ctx, name); err != nil {
		t.Errorf("requesting a name owned already: %v", err)
	}
	if err := caller.RequestName(ctx, name); !errors.Is(err, ErrNameTaken) {
		t.Errorf("requesting another's name: %v, want ErrNameTaken", err)
	}

	served := make(chan error, 1)
	go func() {
		served <- func() error {
			for range 3 {
				call, err := server.NextCall(ctx)
				if err != nil {
					return err
				}
				switch call.Member {
				case "Echo":
					m := call.Body[0].(map[string]any)
					err = server.Reply(call, map[string]Variant{"token": m["token"].(Variant)}, call.Body[1])
				case "Note":
					// Notify wants no reply: Reply sends none.
					err = server.Reply(call, "unwanted")
				default:
					err = server.ReplyError(call, ErrorUnknownMethod, "no method "+call.Member)
				}
				if err != nil {
					return err
				}
			}
			return nil
		}()
	}()

	args := map[string]Variant{"token": {"s", "t1"}, "message": {"ay", []byte{0, 0xff}}}
	body, err := caller.Call(ctx, name, path, iface, "Echo", args, []byte("raw"))
	want := []any{map[string]any{"token": Variant{"s", "t1"}}, []byte("raw")}
	if err != nil || !reflect.DeepEqual(body, want) {
		t.Errorf("Echo = %#v, %v; want %#v", body, err, want)
	}
	if err := caller.Notify(name, path, iface, "Note", "x"); err != nil {
		t.Fatal(err)
	}
	_, err = caller.Call(ctx, name, path, iface, "Nope")
	var be *Error
	if !errors.As(err, &be) || be.Name != ErrorUnknownMethod || be.Error() != ErrorUnknownMethod+": no method Nope" {
		t.Errorf("an unknown method: %v", err)
	}
	if err := <-served; err != nil {
		t.Fatal(err)
	}
	server.Close()
	if _, err := server.NextCall(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("NextCall after Close: %v", err)
	}
}

// FuzzReadMessage feeds arbitrary bytes to the message reader: it must not
// panic, and what it reads must be whole.
func FuzzReadMessage(f *testing.F) {
	e := &encoder{b: []byte{'l', typeSignal, 0, 1}}
	body := &encoder{}
	body.value("app")
	body.value(map[string]Variant{"ttl": {"u", uint32(1)}})
	e.uint32(uint32(len(body.b)))
	e.uint32(1)
	e.array(true, func() {
		e.align(8)
		e.b = append(e.b, fieldMember)
		e.value(Variant{"s", "Message"})
		e.align(8)
		e.b = append(e.b, fieldSignature)
		e.signature("g")
		e.signature("sa{sv}")
	})
	e.align(8)
	f.Add(append(e.b, body.b...))
	f.Add([]byte("l\x02\x00\x01\x00\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00"))
	// A reply carrying a descriptor, as logind's Inhibit does.
	fd := &encoder{b: []byte{'l', typeMethodReturn, 0, 1}}
	fd.uint32(4)
	fd.uint32(2)
	fd.array(true, func() {
		for _, h := range []struct {
			code byte
			v    Variant
		}{{fieldReplySerial, Variant{"u", uint32(1)}}, {fieldUnixFDs, Variant{"u", uint32(1)}}} {
			fd.align(8)
			fd.b = append(fd.b, h.code)
			fd.value(h.v)
		}
		fd.align(8)
		fd.b = append(fd.b, fieldSignature)
		fd.signature("g")
		fd.signature("h")
	})
	fd.align(8)
	f.Add(append(fd.b, 0, 0, 0, 0))
	f.Add([]byte("B\x04\x00\x01\x00\x00\x00\x04\x00\x00\x00\x01\x00\x00\x00\x08\x08\x01g\x00\x04a(v)\x00\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := readMessage(bytes.NewReader(data), func(n int) []*os.File {
			// One descriptor is there for an h value to name.
			return []*os.File{os.Stdin}[:min(n, 1)]
		})
		if err != nil {
			return
		}
		if m.bodyErr == nil && m.sig == "h" && m.body[0] != os.Stdin {
			t.Fatalf("descriptor 0 decoded as %#v", m.body[0])
		}
		if m.bodyErr == nil && m.sig == "" && len(m.body) != 0 {
			t.Fatalf("a body of %d values without a signature", len(m.body))
		}
	})
}

// BenchmarkMessageCall is the distributor's hop to a connector: a call
// with a 4096-byte message in an a{sv}, through a real dbus-daemon, to a
// connection that answers it with the message's ID, as Connector2.Message
// does.
func BenchmarkMessageCall(b *testing.B) {
	bus := dbustest.Start(b)
	ctx := context.Background()
	server, err := Dial(ctx, bus.Address)
	if err != nil {
		b.Fatal(err)
	}
	defer server.Close()
	caller, err := Dial(ctx, bus.Address)
	if err != nil {
		b.Fatal(err)
	}
	defer caller.Close()
	go func() {
		for {
			call, err := server.NextCall(ctx)
			if err != nil {
				return
			}
			id := call.Body[0].(map[string]any)["id"].(Variant)
			server.Reply(call, map[string]Variant{"id": id})
		}
	}()
	args := map[string]Variant{"token": {"s", "t"}, "message": {"ay", make([]byte, 4096)}, "id": {"s", "0:1%1"}}
	b.SetBytes(4096)
	for b.Loop() {
		if _, err := caller.Call(ctx, server.UniqueName(), "/org/unifiedpush/Connector", "org.unifiedpush.Connector2", "Message", args); err != nil {
			b.Fatal(err)
		}
	}
}

// descriptorPeer is a godbus service whose Pipe method returns the write
// end of a pipe, as logind's Inhibit returns its lock.
type descriptorPeer struct{ pipes chan [2]*os.File }

func (p *descriptorPeer) Pipe() (dbus.UnixFD, *dbus.Error) {
	r, w, err := os.Pipe()
	if err != nil {
		return -1, dbus.MakeFailedError(err)
	}
	fd := dbus.UnixFD(w.Fd())
	p.pipes <- [2]*os.File{r, w} // the write end stays open until the reply is sent
	return fd, nil
}

// TestDescriptor receives a descriptor (type h) in a reply through a real
// dbus-daemon: it is an *os.File of the caller's, open to the same pipe.
func TestDescriptor(t *testing.T) {
	bus := dbustest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	peer := &descriptorPeer{pipes: make(chan [2]*os.File, 1)}
	server := bus.Conn(t)
	if err := server.Export(peer, "/test", "org.example.Pipes"); err != nil {
		t.Fatal(err)
	}
	c, err := DialWithFDs(ctx, bus.Address)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body, err := c.Call(ctx, server.Names()[0], "/test", "org.example.Pipes", "Pipe")
	if err != nil {
		t.Fatalf("Pipe: %v", err)
	}
	f, ok := body[0].(*os.File)
	if len(body) != 1 || !ok {
		t.Fatalf("Pipe returned %#v, want one *os.File", body)
	}
	pipe := <-peer.pipes
	defer pipe[0].Close()
	pipe[1].Close() // the caller's copy is the one left
	if _, err := f.WriteString("held"); err != nil {
		t.Fatalf("write to the received descriptor: %v", err)
	}
	f.Close()
	got, err := io.ReadAll(pipe[0])
	if err != nil || string(got) != "held" {
		t.Errorf("the pipe read %q, %v; want \"held\" and its end once the descriptor closed", got, err)
	}
}

// TestEmit sends signals through a real dbus-daemon, to every connection
// with a matching rule and to one connection, and sees Done close.
func TestEmit(t *testing.T) {
	ctx, dial := startBus(t)
	from, to := dial(), dial()
	if err := to.AddMatch(ctx, "type='signal',interface='org.example.Signals'"); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		dest string
		args []any
		sig  string
	}{
		{"broadcast", "", []any{"org.example", map[string]Variant{"n": MakeVariant(uint32(7))}, []string{}}, "sa{sv}as"},
		{"to one connection", to.UniqueName(), []any{[]byte{1, 2}, MakeVariant(int64(-1))}, "ayv"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := from.Emit(tt.dest, "/org/example", "org.example.Signals", "Changed", tt.args...); err != nil {
				t.Fatal(err)
			}
			var s *Signal
			for s == nil || s.Name == "org.freedesktop.DBus.NameAcquired" { // the bus tells every connection its name
				var err error
				if s, err = to.NextSignal(ctx); err != nil {
					t.Fatal(err)
				}
			}
			if s.Sender != from.UniqueName() || s.Path != "/org/example" || s.Name != "org.example.Signals.Changed" || s.Sig != tt.sig {
				t.Errorf("got %+v, want %s from %s with signature %s", s, "org.example.Signals.Changed", from.UniqueName(), tt.sig)
			}
		})
	}
	if err := from.Emit("", "/org/example", "org.example.Signals", "Bad", Variant{Value: 1.5}); err == nil {
		t.Error("a variant of a type busclient cannot encode was sent")
	}

	from.Close()
	select {
	case <-from.Done():
	default:
		t.Error("Done is open after Close")
	}
	if err := from.Close(); err != nil {
		t.Errorf("closing a closed connection: %v", err)
	}
}
