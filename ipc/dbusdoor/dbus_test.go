// SPDX-License-Identifier: Apache-2.0

package dbusdoor_test

import (
	"bufio"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"reflect"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
	"github.com/godbus/dbus/v5/introspect"

	"tether/internal/dbustest"
	"tether/internal/testwait"
	"tether/ipc"
	"tether/ipc/dbusdoor"
	"tether/ipc/ipctest"
	"tether/ipc/socketdoor"
)

const app = "com.example.app"

const policyFile = "../../packaging/dbus/org.tether.Push.conf"

// daemonUser is the user the policy file lets own the name: the one
// tetherd runs as.
const daemonUser = "tether"

// nobody is the user the tests run other clients as.
const nobody = 65534

type dbusHarness struct {
	t    *testing.T
	addr string
	b    *ipctest.Backend
	srv  *dbusdoor.Server
}

// startDBus serves an ipctest backend on a permissive private bus.
func startDBus(t *testing.T) *dbusHarness {
	t.Helper()
	return serveDBus(t, dbustest.Start(t).Address, ipctest.New("push.example.test:443", "device-1"))
}

// startDBusPolicy serves an ipctest backend on a bus with the system bus's
// policy and the door's policy file, made out to the user the tests run as.
func startDBusPolicy(t *testing.T) *dbusHarness {
	t.Helper()
	return serveDBus(t, dbustest.StartSystemLike(t, policyFor(t, currentUser(t))).Address, ipctest.New("push.example.test:443", "device-1"))
}

// policyFor writes a copy of the policy file that lets user own the name in
// place of the daemon's user, for a door run by the test itself.
func policyFor(t *testing.T, user string) string {
	t.Helper()
	data, err := os.ReadFile(policyFile)
	if err != nil {
		t.Fatal(err)
	}
	grant := fmt.Sprintf(`<policy user=%q>`, daemonUser)
	if n := strings.Count(string(data), grant); n != 1 {
		t.Fatalf("%s has %s %d times, want once", policyFile, grant, n)
	}
	path := filepath.Join(t.TempDir(), "org.tether.Push.conf")
	if err := os.WriteFile(path, []byte(strings.Replace(string(data), grant, fmt.Sprintf(`<policy user=%q>`, user), 1)), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func currentUser(t *testing.T) string {
	t.Helper()
	u, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	return u.Username
}

func absPath(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(rel)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// serveDBus runs a door for b on the bus at addr and checks, when the test
// ends, that Close makes Serve return without an error.
func serveDBus(t *testing.T, addr string, b ipc.Backend) *dbusHarness {
	t.Helper()
	srv, err := dbusdoor.New(dbusdoor.Config{Bus: addr, Backend: b, Logger: ipctest.Logger(t)})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	ipctest.Serve(t, srv)
	h := &dbusHarness{t: t, addr: addr, srv: srv}
	if ib, ok := b.(*ipctest.Backend); ok {
		h.b = ib
		ib.OnStatusChange(srv.StatusChanged)
	}
	return h
}

// dbusClient is an app's connection to the bus.
type dbusClient struct {
	t       *testing.T
	conn    *dbus.Conn
	obj     dbus.BusObject
	signals chan *dbus.Signal
}

func (h *dbusHarness) client() *dbusClient {
	h.t.Helper()
	return connectClient(h.t, h.addr)
}

func connectClient(t *testing.T, addr string) *dbusClient {
	t.Helper()
	conn, err := dbus.Connect(addr, dbus.WithSignalHandler(dbus.NewSequentialSignalHandler()))
	if err != nil {
		t.Fatalf("connect to %s: %v", addr, err)
	}
	t.Cleanup(func() { conn.Close() })
	signals := make(chan *dbus.Signal, 16)
	conn.Signal(signals)
	return &dbusClient{t: t, conn: conn, obj: conn.Object(ipc.DBusName, ipc.DBusPath), signals: signals}
}

func (c *dbusClient) call(method string, args ...any) *dbus.Call {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if !strings.Contains(method, ".") {
		method = ipc.DBusInterface + "." + method
	}
	return c.obj.CallWithContext(ctx, method, 0, args...)
}

// do calls a method and fails the test unless it succeeds.
func (c *dbusClient) do(method string, args ...any) []any {
	c.t.Helper()
	call := c.call(method, args...)
	if call.Err != nil {
		c.t.Fatalf("%s%v: %v", method, args, call.Err)
	}
	return call.Body
}

// fails calls a method and fails the test unless it fails with the named
// error and a message containing text.
func (c *dbusClient) fails(name, text, method string, args ...any) {
	c.t.Helper()
	wantDBusError(c.t, c.call(method, args...).Err, name, text)
}

func wantDBusError(t *testing.T, err error, name, text string) {
	t.Helper()
	gotName, gotText := dbusErrorOf(err)
	if gotName != name || !strings.Contains(gotText, text) {
		t.Fatalf("got error %v (%s: %q), want %s with %q", err, gotName, gotText, name, text)
	}
}

func dbusErrorOf(err error) (name, text string) {
	var e dbus.Error
	var pe *dbus.Error
	switch {
	case errors.As(err, &e):
	case errors.As(err, &pe):
		e = *pe
	default:
		return "", fmt.Sprint(err)
	}
	if len(e.Body) > 0 {
		text, _ = e.Body[0].(string)
	}
	return e.Name, text
}

// signal waits for the next signal from the door, skipping the bus's own.
func (c *dbusClient) signal() *dbus.Signal {
	c.t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case s, ok := <-c.signals:
			if !ok {
				c.t.Fatal("the connection closed while waiting for a signal")
			}
			if s.Sender == "org.freedesktop.DBus" {
				continue
			}
			return s
		case <-timeout:
			c.t.Fatal("no signal within 10s")
			return nil
		}
	}
}

// wantSignal waits for the next signal and checks its name and body.
func (c *dbusClient) wantSignal(member string, body ...any) {
	c.t.Helper()
	s := c.signal()
	if s.Name != ipc.DBusInterface+"."+member || s.Path != ipc.DBusPath || !reflect.DeepEqual(s.Body, body) {
		c.t.Fatalf("got signal %s %v, want %s %v", s.Name, s.Body, member, body)
	}
}

// noSignal checks that no signal from the door is waiting.
func (c *dbusClient) noSignal() {
	c.t.Helper()
	for {
		select {
		case s := <-c.signals:
			if s.Sender != "org.freedesktop.DBus" {
				c.t.Fatalf("unexpected signal %s %v", s.Name, s.Body)
			}
		default:
			return
		}
	}
}

func TestDBusEveryMethod(t *testing.T) {
	h := startDBus(t)
	c := h.client()
	var token string
	ttl := int64(60)
	steps := []struct {
		name string
		run  func(t *testing.T)
	}{
		{"Register", func(t *testing.T) {
			body := c.do("Register", app, "123")
			token, _ = body[0].(string)
			if len(body) != 1 || token == "" {
				t.Fatalf("Register returned %v, want a token", body)
			}
			want := ipc.Caller{UID: uint32(os.Getuid()), PID: int32(os.Getpid())}
			if got := h.b.LastCaller(); got != want {
				t.Fatalf("backend saw caller %+v, want %+v from the bus", got, want)
			}
		}},
		{"Register again gives the same token", func(t *testing.T) {
			if body := c.do("Register", app, "123"); body[0] != token {
				t.Fatalf("Register returned %v, want %q", body, token)
			}
		}},
		{"SubscribeTopic", func(t *testing.T) {
			c.do("SubscribeTopic", app, "123", "alerts")
			if got := h.b.Topics(app, "123"); !reflect.DeepEqual(got, []string{"alerts"}) {
				t.Fatalf("topics %q, want [alerts]", got)
			}
		}},
		{"UnsubscribeTopic", func(t *testing.T) {
			c.do("UnsubscribeTopic", app, "123", "alerts")
			if got := h.b.Topics(app, "123"); len(got) != 0 {
				t.Fatalf("still subscribed to %q", got)
			}
		}},
		{"Send with options", func(t *testing.T) {
			body := c.do("Send", app, "123", "up-1", map[string]string{"k": "v"},
				map[string]dbus.Variant{"ttl": dbus.MakeVariant(uint32(60)), "priority": dbus.MakeVariant("high")})
			want := ipc.SendRequest{App: app, To: "123", ID: "up-1", TTL: &ttl, Priority: "high", Data: map[string]string{"k": "v"}}
			if sends := h.b.Sends(app); len(sends) != 1 || !reflect.DeepEqual(sends[0], want) || !reflect.DeepEqual(body, []any{"up-1"}) {
				t.Fatalf("Send returned %v; backend got %+v, want %+v", body, sends, want)
			}
		}},
		{"Send without options or ID", func(t *testing.T) {
			body := c.do("Send", app, "123", "", map[string]string{}, map[string]dbus.Variant{})
			sends := h.b.Sends(app)
			if len(sends) != 2 || sends[1].ID == "" || body[0] != sends[1].ID || sends[1].TTL != nil || sends[1].Priority != "" {
				t.Fatalf("Send returned %v; backend got %+v, want a made-up ID and defaults", body, sends)
			}
		}},
		{"Send with a ttl of another integer type", func(t *testing.T) {
			c.do("Send", app, "123", "up-3", map[string]string{}, map[string]dbus.Variant{"ttl": dbus.MakeVariant(int32(60))})
			if sends := h.b.Sends(app); len(sends) != 3 || sends[2].TTL == nil || *sends[2].TTL != 60 {
				t.Fatalf("backend got %+v, want ttl 60", sends)
			}
		}},
		{"Subscribe", func(t *testing.T) {
			c.do("Subscribe", app)
			if !h.b.Listening(app) {
				t.Fatal("the backend has no listener after Subscribe")
			}
		}},
		{"Ack", func(t *testing.T) {
			c.do("Ack", app, []string{"m1", "m2"})
			if got := h.b.Acked(app); !reflect.DeepEqual(got, []string{"m1", "m2"}) {
				t.Fatalf("acked %q", got)
			}
		}},
		{"Unsubscribe", func(t *testing.T) {
			c.do("Unsubscribe", app)
			if h.b.Listening(app) {
				t.Fatal("the backend still has a listener after Unsubscribe")
			}
			c.do("Unsubscribe", app) // nothing left to end
		}},
		{"GetAll", func(t *testing.T) {
			body := c.do("org.freedesktop.DBus.Properties.GetAll", ipc.DBusInterface)
			want := map[string]dbus.Variant{
				"Connected": dbus.MakeVariant(true), "DeviceID": dbus.MakeVariant("device-1"), "PowerMode": dbus.MakeVariant("mains"),
				"Server": dbus.MakeVariant("push.example.test:443"), "Apps": dbus.MakeVariant(uint32(1)),
				"QueuedDownstream": dbus.MakeVariant(uint32(0)), "PendingUpstream": dbus.MakeVariant(uint32(3)),
			}
			if !reflect.DeepEqual(body, []any{want}) {
				t.Fatalf("GetAll = %v, want %v", body, want)
			}
		}},
		{"Unregister", func(t *testing.T) { c.do("Unregister", app, "123") }},
		{"Unregister again", func(t *testing.T) {
			c.fails(ipc.DBusErrorNotRegistered, `unregister app "com.example.app" from sender "123": not registered`, "Unregister", app, "123")
		}},
	}
	for _, step := range steps {
		t.Run(step.name, step.run)
	}
}

// failingBackend answers with the errors ipctest.Backend never gives.
type failingBackend struct {
	*ipctest.Backend
	err error
}

func (f failingBackend) Register(ctx context.Context, c ipc.Caller, req ipc.RegisterRequest) (ipc.Registration, error) {
	return ipc.Registration{}, f.err
}

func TestDBusErrors(t *testing.T) {
	h := startDBus(t)
	h.b.SetOwner("com.other", uint32(os.Getuid())+1)
	c := h.client()
	c.do("Register", app, "123")
	noOptions := map[string]dbus.Variant{}
	data := map[string]string{"k": "v"}
	tests := []struct {
		name, errName, text string
		method              string
		args                []any
	}{
		{"app of another user", ipc.DBusErrorPermissionDenied, `listen for app "com.other": it belongs to uid`, "Subscribe", []any{"com.other"}},
		{"register app of another user", ipc.DBusErrorPermissionDenied, "permission denied", "Register", []any{"com.other", "1"}},
		{"ack for another user's app", ipc.DBusErrorPermissionDenied, "permission denied", "Ack", []any{"com.other", []string{"x"}}},
		{"send for another user's app", ipc.DBusErrorPermissionDenied, "permission denied", "Send", []any{"com.other", "1", "", data, noOptions}},
		{"topic of another user's app", ipc.DBusErrorPermissionDenied, "permission denied", "SubscribeTopic", []any{"com.other", "1", "t"}},
		{"unknown app", ipc.DBusErrorNotRegistered, `ack for app "com.nobody": unknown app`, "Ack", []any{"com.nobody", []string{"x"}}},
		{"topic without registration", ipc.DBusErrorNotRegistered, "not registered", "UnsubscribeTopic", []any{app, "999", "t"}},
		{"no app", ipc.DBusErrorInvalidArgument, "no app ID", "Register", []any{"", "1"}},
		{"no app to unsubscribe", ipc.DBusErrorInvalidArgument, "no app ID", "Unsubscribe", []any{""}},
		{"no message IDs", ipc.DBusErrorInvalidArgument, "no message IDs", "Ack", []any{app, []string{}}},
		{"no recipient", ipc.DBusErrorInvalidArgument, "no recipient", "Send", []any{app, "", "", data, noOptions}},
		{"ttl of the wrong type", ipc.DBusErrorInvalidArgument, `option "ttl" must be an unsigned integer of seconds (type u), not type s`,
			"Send", []any{app, "123", "", data, map[string]dbus.Variant{"ttl": dbus.MakeVariant("1h")}}},
		{"negative ttl", ipc.DBusErrorInvalidArgument, `option "ttl" is -5; it must not be negative`,
			"Send", []any{app, "123", "", data, map[string]dbus.Variant{"ttl": dbus.MakeVariant(int64(-5))}}},
		{"priority of the wrong type", ipc.DBusErrorInvalidArgument, `option "priority" must be a string (type s), not type u`,
			"Send", []any{app, "123", "", data, map[string]dbus.Variant{"priority": dbus.MakeVariant(uint32(1))}}},
		{"bad priority", ipc.DBusErrorInvalidArgument, `priority "urgent" is neither normal nor high`,
			"Send", []any{app, "123", "", data, map[string]dbus.Variant{"priority": dbus.MakeVariant("urgent")}}},
		{"unknown option", ipc.DBusErrorInvalidArgument, `unknown option "wait"; the options are ttl and priority`,
			"Send", []any{app, "123", "", data, map[string]dbus.Variant{"wait": dbus.MakeVariant(true), "ttl": dbus.MakeVariant(uint32(1))}}},
		{"vapid of the wrong type", ipc.DBusErrorInvalidArgument, `option "vapid" must be a string (type s), not type u`,
			"RegisterWithOptions", []any{app, ipc.WebPushSender, map[string]dbus.Variant{"vapid": dbus.MakeVariant(uint32(1))}}},
		{"unknown register option", ipc.DBusErrorInvalidArgument, `unknown option "ttl"; the only option is vapid`,
			"RegisterWithOptions", []any{app, ipc.WebPushSender, map[string]dbus.Variant{"ttl": dbus.MakeVariant(uint32(1))}}},
		{"data too big", ipc.DBusErrorMessageTooBig, "4097 bytes, limit 4096",
			"Send", []any{app, "123", "", map[string]string{"k": strings.Repeat("v", 4096)}, noOptions}},
		{"wrong argument types", ipc.DBusErrorInvalidArgument, `Send takes (s app, s to, s message_id, a{ss} data, a{sv} options), signature "sssa{ss}a{sv}"; the call has signature "ss"`,
			"Send", []any{app, "123"}},
		{"no arguments", ipc.DBusErrorInvalidArgument, `Subscribe takes (s app), signature "s"; the call has signature ""`, "Subscribe", nil},
		{"unknown method", "org.freedesktop.DBus.Error.UnknownMethod", "Listen", "Listen", []any{app}},
		{"unknown property", "org.freedesktop.DBus.Error.UnknownProperty", `has no property "Battery"`,
			"org.freedesktop.DBus.Properties.Get", []any{ipc.DBusInterface, "Battery"}},
		{"properties of another interface", "org.freedesktop.DBus.Error.UnknownInterface", `no properties of interface "org.example"`,
			"org.freedesktop.DBus.Properties.GetAll", []any{"org.example"}},
		{"setting a property", "org.freedesktop.DBus.Error.PropertyReadOnly", "property Connected is read-only",
			"org.freedesktop.DBus.Properties.Set", []any{ipc.DBusInterface, "Connected", dbus.MakeVariant(false)}},
		{"Get with wrong types", "org.freedesktop.DBus.Error.InvalidArgs", `Get takes (s interface_name, s property_name)`,
			"org.freedesktop.DBus.Properties.Get", []any{uint32(1)}},
		{"unknown interface", "org.freedesktop.DBus.Error.UnknownInterface", "org.example.Nope", "org.example.Nope.Register", []any{app, "1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c.fails(tt.errName, tt.text, tt.method, tt.args...)
			// The door goes on working.
			c.do("org.freedesktop.DBus.Properties.Get", ipc.DBusInterface, "Connected")
		})
	}
	if sends := h.b.Sends(app); len(sends) != 0 {
		t.Errorf("refused sends reached the backend: %+v", sends)
	}

	t.Run("limits", func(t *testing.T) {
		h.b.SetConnected(false)
		c.fails(ipc.DBusErrorUnavailable, "ttl 0: not connected to the server",
			"Send", app, "123", "", data, map[string]dbus.Variant{"ttl": dbus.MakeVariant(uint32(0))})
		for range ipctest.MaxPending {
			c.do("Send", app, "123", "", data, noOptions)
		}
		c.fails(ipc.DBusErrorTooManyMessages, "too many pending messages", "Send", app, "123", "", data, noOptions)
	})

	t.Run("backend errors", func(t *testing.T) {
		for _, tt := range []struct {
			err  error
			name string
		}{
			{fmt.Errorf("register: %w: disk full", ipc.ErrStorage), ipc.DBusErrorUnavailable},
			{fmt.Errorf("register: %w: bad sender", ipc.ErrRefused), ipc.DBusErrorRefused},
			{fmt.Errorf("register: %w", ipc.ErrUnsupported), ipc.DBusErrorNotSupported},
			{fmt.Errorf("register: user 1000 has 20 registrations: %w", ipc.ErrTooManyRegistrations), ipc.DBusErrorTooManyRegistrations},
			{errors.New("register: something else"), "org.freedesktop.DBus.Error.Failed"},
		} {
			f := serveDBus(t, dbustest.Start(t).Address, failingBackend{ipctest.New("s", "d"), tt.err})
			f.client().fails(tt.name, tt.err.Error(), "Register", app, "1")
		}
	})
}

func TestDBusSignals(t *testing.T) {
	h := startDBus(t)
	c := h.client()
	c.do("Register", app, "123")
	sigs := introspectedSignals(t, c)
	sent := time.Date(2025, 3, 1, 12, 0, 0, 0, time.UTC)
	h.b.Push(ipc.Message{ID: "0:1%ab", App: app, From: "123", CollapseKey: "update", Data: map[string]string{"k": "v"},
		Priority: "high", SentTime: sent, TTL: 3600, Notification: map[string]string{"title": "Hi"}})
	h.b.Push(ipc.Message{ID: "0:2%ab", App: app, From: "123", Data: map[string]string{"bad": "a\xffb"}})

	c.do("Subscribe", app)
	check := func(member string, body ...any) {
		t.Helper()
		s := c.signal()
		if s.Name != ipc.DBusInterface+"."+member || !reflect.DeepEqual(s.Body, body) {
			t.Fatalf("got signal %s %#v, want %s %#v", s.Name, s.Body, member, body)
		}
		if got := dbus.SignatureOf(s.Body...).String(); got != sigs[member] {
			t.Errorf("signal %s has signature %q; the introspection data says %q", member, got, sigs[member])
		}
	}
	check("Message", app, "0:1%ab", "123", "update", map[string]string{"k": "v"}, map[string]dbus.Variant{
		"priority":     dbus.MakeVariant("high"),
		"sent_time":    dbus.MakeVariant(sent.UnixMilli()),
		"notification": dbus.MakeVariant(map[string]string{"title": "Hi"}),
		"ttl":          dbus.MakeVariant(uint32(3600)),
	})
	// D-Bus strings are UTF-8: a bad byte becomes U+FFFD, as in JSON.
	check("Message", app, "0:2%ab", "123", "", map[string]string{"bad": "a\uFFFDb"}, map[string]dbus.Variant{"ttl": dbus.MakeVariant(uint32(0))})

	noOptions := map[string]dbus.Variant{}
	c.do("Send", app, "123", "up-a", map[string]string{}, noOptions)
	c.do("Send", app, "123", "up-b", map[string]string{}, noOptions)
	if err := h.b.Complete(app, "up-a", ""); err != nil {
		t.Fatal(err)
	}
	if err := h.b.Complete(app, "up-b", "TtlExceeded"); err != nil {
		t.Fatal(err)
	}
	h.b.DeleteMessages(app, 7)
	h.b.RefreshToken(app, "123", "token-new")
	check("SendResult", app, "up-a", "")
	check("SendResult", app, "up-b", "TtlExceeded")
	check("DeletedMessages", app, uint32(7))
	check("TokenRefreshed", app, "123", "token-new")

	// Another subscriber takes over: this one is told.
	other := h.client()
	other.do("Subscribe", app)
	check("SubscriptionEnded", app, ipc.DBusEndReplaced)
}

// introspectedSignals returns the signature of each of the door's signals
// as its introspection data has it.
func introspectedSignals(t *testing.T, c *dbusClient) map[string]string {
	t.Helper()
	node := introspectNode(t, c, ipc.DBusPath)
	sigs := map[string]string{}
	for _, iface := range node.Interfaces {
		if iface.Name != ipc.DBusInterface {
			continue
		}
		for _, s := range iface.Signals {
			var sig strings.Builder
			for _, a := range s.Args {
				sig.WriteString(a.Type)
			}
			sigs[s.Name] = sig.String()
		}
	}
	return sigs
}

func introspectNode(t *testing.T, c *dbusClient, path dbus.ObjectPath) introspect.Node {
	t.Helper()
	var data string
	if err := c.conn.Object(ipc.DBusName, path).Call("org.freedesktop.DBus.Introspectable.Introspect", 0).Store(&data); err != nil {
		t.Fatalf("Introspect %s: %v", path, err)
	}
	var node introspect.Node
	if err := xml.Unmarshal([]byte(data), &node); err != nil {
		t.Fatalf("introspection data of %s: %v\n%s", path, err, data)
	}
	return node
}

func TestDBusIntrospection(t *testing.T) {
	h := startDBus(t)
	c := h.client()
	node := introspectNode(t, c, ipc.DBusPath)
	got := map[string]string{}
	for _, iface := range node.Interfaces {
		for _, m := range iface.Methods {
			var args []string
			for _, a := range m.Args {
				args = append(args, a.Direction+" "+a.Type+" "+a.Name)
			}
			got[iface.Name+"."+m.Name] = "method(" + strings.Join(args, ", ") + ")"
		}
		for _, s := range iface.Signals {
			var args []string
			for _, a := range s.Args {
				args = append(args, a.Type+" "+a.Name)
			}
			got[iface.Name+"."+s.Name] = "signal(" + strings.Join(args, ", ") + ")"
		}
		for _, p := range iface.Properties {
			desc := "property " + p.Access + " " + p.Type
			for _, a := range p.Annotations {
				desc += " " + a.Name + "=" + a.Value
			}
			got[iface.Name+"."+p.Name] = desc
		}
	}
	const p = "org.tether.Push1."
	const emits = " org.freedesktop.DBus.Property.EmitsChangedSignal="
	want := map[string]string{
		p + "Register":            "method(in s app, in s sender, out s token)",
		p + "RegisterWithOptions": "method(in s app, in s sender, in a{sv} options, out s token, out s endpoint)",
		p + "Unregister":          "method(in s app, in s sender)",
		p + "Subscribe":           "method(in s app)",
		p + "Unsubscribe":         "method(in s app)",
		p + "Ack":                 "method(in s app, in as message_ids)",
		p + "Send":                "method(in s app, in s to, in s message_id, in a{ss} data, in a{sv} options, out s message_id)",
		p + "SubscribeTopic":      "method(in s app, in s sender, in s topic)",
		p + "UnsubscribeTopic":    "method(in s app, in s sender, in s topic)",
		p + "Message":             "signal(s app, s message_id, s from, s collapse_key, a{ss} data, a{sv} extras)",
		p + "SendResult":          "signal(s app, s message_id, s error)",
		p + "TokenRefreshed":      "signal(s app, s sender, s token)",
		p + "DeletedMessages":     "signal(s app, u count)",
		p + "SubscriptionEnded":   "signal(s app, s reason)",
		p + "Connected":           "property read b",
		p + "DeviceID":            "property read s",
		p + "PowerMode":           "property read s",
		p + "Server":              "property read s",
		p + "Apps":                "property read u" + emits + "false",
		p + "QueuedDownstream":    "property read u" + emits + "false",
		p + "PendingUpstream":     "property read u" + emits + "false",

		"org.freedesktop.DBus.Properties.Get":               "method(in s interface_name, in s property_name, out v value)",
		"org.freedesktop.DBus.Properties.GetAll":            "method(in s interface_name, out a{sv} properties)",
		"org.freedesktop.DBus.Properties.Set":               "method(in s interface_name, in s property_name, in v value)",
		"org.freedesktop.DBus.Properties.PropertiesChanged": "signal(s interface_name, a{sv} changed_properties, as invalidated_properties)",
		"org.freedesktop.DBus.Introspectable.Introspect":    "method(out s xml_data)",
		"org.freedesktop.DBus.Peer.Ping":                    "method()",
		"org.freedesktop.DBus.Peer.GetMachineId":            "method(out s machine_uuid)",
	}
	if !reflect.DeepEqual(got, want) {
		for k, v := range want {
			if got[k] != v {
				t.Errorf("%s: got %q, want %q", k, got[k], v)
			}
		}
		for k, v := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("unexpected %s: %q", k, v)
			}
		}
	}

	// Tools walk down to the object from the root.
	for path, child := range map[dbus.ObjectPath]string{"/": "org", "/org": "tether", "/org/tether": "Push"} {
		n := introspectNode(t, c, path)
		if len(n.Children) != 1 || n.Children[0].Name != child {
			t.Errorf("%s has children %+v, want %s", path, n.Children, child)
		}
	}
	if err := c.conn.Object(ipc.DBusName, "/org/other").Call("org.freedesktop.DBus.Introspectable.Introspect", 0).Err; err == nil {
		t.Error("introspecting a path that is not the door's succeeded")
	}
}

func TestDBusRedelivery(t *testing.T) {
	h := startDBus(t)
	first := h.client()
	first.do("Register", app, "123")
	first.do("Subscribe", app)
	h.b.Push(ipc.Message{ID: "m1", App: app, From: "123", Data: map[string]string{}})
	h.b.Push(ipc.Message{ID: "m2", App: app, From: "123", Data: map[string]string{}})
	for _, id := range []string{"m1", "m2"} {
		if s := first.signal(); s.Name != ipc.DBusInterface+".Message" || s.Body[1] != id {
			t.Fatalf("got %s %v, want message %s", s.Name, s.Body, id)
		}
	}
	first.do("Ack", app, []string{"m1"})

	// The subscriber leaves the bus: the door ends its subscription and
	// the backend keeps what was not acked.
	first.conn.Close()
	testwait.Until(t, "the subscription of the closed connection ends", 10*time.Second, func() bool { return !h.b.Listening(app) })

	second := h.client()
	second.do("Subscribe", app)
	if s := second.signal(); s.Name != ipc.DBusInterface+".Message" || s.Body[1] != "m2" {
		t.Fatalf("got %s %v, want m2 again", s.Name, s.Body)
	}
	second.do("Ack", app, []string{"m2"})

	// Subscribing again on the same connection starts over without being
	// told it was replaced; what is acked never comes again.
	h.b.Push(ipc.Message{ID: "m3", App: app, From: "123", Data: map[string]string{}})
	if s := second.signal(); s.Body[1] != "m3" {
		t.Fatalf("got %s %v, want m3", s.Name, s.Body)
	}
	second.do("Subscribe", app)
	if s := second.signal(); s.Name != ipc.DBusInterface+".Message" || s.Body[1] != "m3" {
		t.Fatalf("got %s %v, want m3 again and no SubscriptionEnded", s.Name, s.Body)
	}
	second.do("Ack", app, []string{"m3"})
	second.do("Unsubscribe", app)
	second.do("Subscribe", app)
	h.b.Push(ipc.Message{ID: "m4", App: app, From: "123", Data: map[string]string{}})
	if s := second.signal(); s.Body[1] != "m4" {
		t.Fatalf("got %s %v, want m4 and nothing acked before it", s.Name, s.Body)
	}
	if got := h.b.Acked(app); !reflect.DeepEqual(got, []string{"m1", "m2", "m3"}) {
		t.Errorf("acked %q", got)
	}
}

// Both doors share one subscriber per app.
func TestDBusReplacementAcrossDoors(t *testing.T) {
	bus := dbustest.Start(t)
	h := serveDBus(t, bus.Address, ipctest.New("push.example.test:443", "device-1"))
	path := filepath.Join(t.TempDir(), "tetherd.sock")
	sock, err := socketdoor.New(socketdoor.Config{Path: path, Backend: h.b, Logger: ipctest.Logger(t)})
	if err != nil {
		t.Fatalf("socketdoor.New: %v", err)
	}
	ipctest.Serve(t, sock)
	c := h.client()
	c.do("Register", app, "123")
	c.do("Subscribe", app)

	// A socket listener replaces the D-Bus subscriber, which is told.
	nc, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	lines := bufio.NewScanner(nc)
	// next reads the socket's next line into v; false means the door
	// closed the connection.
	next := func(v any) bool {
		t.Helper()
		nc.SetReadDeadline(time.Now().Add(10 * time.Second))
		if !lines.Scan() {
			if err := lines.Err(); err != nil {
				t.Fatalf("read from the socket: %v", err)
			}
			return false
		}
		if err := json.Unmarshal(lines.Bytes(), v); err != nil {
			t.Fatalf("decode %s: %v", lines.Bytes(), err)
		}
		return true
	}
	fmt.Fprintf(nc, "{\"op\":\"listen\",\"app\":%q}\n", app)
	var resp ipc.Response
	if !next(&resp) || !resp.OK {
		t.Fatalf("listen answered %+v", resp)
	}
	c.wantSignal("SubscriptionEnded", app, ipc.DBusEndReplaced)
	h.b.Push(ipc.Message{ID: "m1", App: app, From: "123"})
	var ev ipc.Event
	if !next(&ev) || ev.Message == nil || ev.Message.ID != "m1" {
		t.Fatalf("socket listener got %+v, want m1", ev)
	}
	c.noSignal()

	// A D-Bus subscriber replaces the socket listener.
	other := h.client()
	other.do("Subscribe", app)
	ev = ipc.Event{}
	if !next(&ev) || ev != (ipc.Event{Event: ipc.EventReplaced, App: app}) {
		t.Fatalf("socket listener got %+v, want replaced", ev)
	}
	if next(&ev) {
		t.Fatalf("socket listener got %+v after replaced, want the door to close the connection", ev)
	}
	if s := other.signal(); s.Name != ipc.DBusInterface+".Message" || s.Body[1] != "m1" {
		t.Fatalf("got %s %v, want m1 again", s.Name, s.Body)
	}
	c.noSignal()
}

func TestDBusPropertiesChanged(t *testing.T) {
	h := startDBus(t)
	c := h.client()
	if err := c.conn.AddMatchSignal(dbus.WithMatchObjectPath(ipc.DBusPath), dbus.WithMatchInterface("org.freedesktop.DBus.Properties")); err != nil {
		t.Fatal(err)
	}
	changed := func(props map[string]dbus.Variant) {
		t.Helper()
		s := c.signal()
		want := []any{ipc.DBusInterface, props, []string{}}
		if s.Name != "org.freedesktop.DBus.Properties.PropertiesChanged" || s.Path != ipc.DBusPath || !reflect.DeepEqual(s.Body, want) {
			t.Fatalf("got %s %v, want PropertiesChanged %v", s.Name, s.Body, want)
		}
	}
	h.b.SetConnected(false)
	changed(map[string]dbus.Variant{"Connected": dbus.MakeVariant(false)})
	h.b.SetPowerMode("battery")
	changed(map[string]dbus.Variant{"PowerMode": dbus.MakeVariant("battery")})
	// The agent moves to another node of the cluster.
	h.b.SetServer("push-2.example.test:443")
	changed(map[string]dbus.Variant{"Server": dbus.MakeVariant("push-2.example.test:443")})
	var mode string
	if err := c.obj.StoreProperty(ipc.DBusInterface+".PowerMode", &mode); err != nil || mode != "battery" {
		t.Fatalf("PowerMode = %q, %v; want battery", mode, err)
	}
	// A change that changes nothing announces nothing.
	h.b.SetPowerMode("battery")
	h.b.SetConnected(true)
	changed(map[string]dbus.Variant{"Connected": dbus.MakeVariant(true)})
}

// dbusAs runs a command as another Unix user and group and returns its
// output.
func dbusAs(t *testing.T, uid, gid uint32, name string, args ...string) (string, error) {
	t.Helper()
	if os.Getuid() != 0 {
		t.Skip("running a client as another user needs root")
	}
	path, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed: %v", name, err)
	}
	cmd := exec.Command(path, args...)
	cmd.Env = []string{"HOME=/", "PATH=/usr/bin:/bin"}
	cmd.Dir = "/"
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: gid}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// gdbusCall calls a method of the door with gdbus as another user.
func gdbusCall(t *testing.T, uid uint32, addr, method string, args ...string) (string, error) {
	t.Helper()
	return dbusAs(t, uid, uid, "gdbus", append([]string{"call", "--address", addr, "--dest", ipc.DBusName,
		"--object-path", ipc.DBusPath, "--method", ipc.DBusInterface + "." + method}, args...)...)
}

func TestDBusOtherUser(t *testing.T) {
	h := startDBusPolicy(t)
	c := h.client()
	c.do("Register", app, "123")
	c.do("Subscribe", app)
	h.b.Push(ipc.Message{ID: "m1", App: app, From: "123", Data: map[string]string{}})
	c.wantSignal("Message", app, "m1", "123", "", map[string]string{}, map[string]dbus.Variant{"ttl": dbus.MakeVariant(uint32(0))})

	// Another user reaches the agent (the policy lets anyone call) but
	// may not act for the app: the door says so.
	for _, call := range [][]string{
		{"Subscribe", "'" + app + "'"},
		{"Ack", "'" + app + "'", "['m1']"},
		{"Send", "'" + app + "'", "'123'", "''", "{'k': 'v'}", "@a{sv} {}"},
		{"Register", "'" + app + "'", "'123'"},
		{"Unregister", "'" + app + "'", "'123'"},
	} {
		out, err := gdbusCall(t, nobody, h.addr, call[0], call[1:]...)
		if err == nil || !strings.Contains(out, ipc.DBusErrorPermissionDenied) || !strings.Contains(out, fmt.Sprintf("belongs to uid %d, not %d", os.Getuid(), nobody)) {
			t.Errorf("%s as uid %d: %v\n%s\nwant %s", call[0], nobody, err, out, ipc.DBusErrorPermissionDenied)
		}
	}
	if !h.b.Listening(app) || len(h.b.Acked(app)) != 0 || len(h.b.Sends(app)) != 0 {
		t.Error("another user's calls changed the app's state")
	}
	if got := h.b.LastCaller(); got.UID != nobody {
		t.Errorf("the backend saw uid %d, want %d", got.UID, nobody)
	}

	// What is theirs, they may do.
	out, err := gdbusCall(t, nobody, h.addr, "Register", "'com.example.nobody'", "'1'")
	if err != nil || !strings.Contains(out, "token-") {
		t.Errorf("Register of its own app as uid %d: %v\n%s", nobody, err, out)
	}
	c.noSignal()
}

// TestDBusUnicast checks that an app's signals reach its subscriber and no
// one else. On the permissive bus, a connection that asks to eavesdrop sees
// them, which shows the check can fail; on a bus with the system's policy,
// it does not.
func TestDBusUnicast(t *testing.T) {
	tests := []struct {
		name      string
		policy    bool
		eavesdrop bool
		wantSeen  bool
	}{
		{name: "plain match rule", policy: true},
		{name: "eavesdropping", policy: true, eavesdrop: true},
		{name: "plain match rule, permissive bus"},
		{name: "eavesdropping, permissive bus", eavesdrop: true, wantSeen: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var h *dbusHarness
			if tt.policy {
				h = startDBusPolicy(t)
			} else {
				h = startDBus(t)
			}
			sub := h.client()
			sub.do("Register", app, "123")
			sub.do("Subscribe", app)

			spy := h.client()
			rule := []dbus.MatchOption{dbus.WithMatchInterface(ipc.DBusInterface)}
			if tt.eavesdrop {
				rule = append(rule, dbus.WithMatchEavesdrop(true))
			}
			if err := spy.conn.AddMatchSignal(rule...); err != nil {
				t.Fatalf("AddMatch: %v", err)
			}
			if err := spy.conn.AddMatchSignal(dbus.WithMatchInterface("org.freedesktop.DBus.Properties")); err != nil {
				t.Fatalf("AddMatch: %v", err)
			}
			// godbus drops messages addressed to other connections; the
			// raw stream shows what the bus delivered.
			raw := make(chan *dbus.Message, 100)
			spy.conn.Eavesdrop(raw)

			h.b.Push(ipc.Message{ID: "secret", App: app, From: "123", Data: map[string]string{"pin": "1234"}})
			sub.wantSignal("Message", app, "secret", "123", "", map[string]string{"pin": "1234"}, map[string]dbus.Variant{"ttl": dbus.MakeVariant(uint32(0))})
			// A broadcast after it: once the spy has it, the bus has
			// handed the spy everything the door sent before.
			h.b.SetPowerMode("low")
			seen := false
			timeout := time.After(10 * time.Second)
			for done := false; !done; {
				select {
				case m := <-raw:
					member, _ := m.Headers[dbus.FieldMember].Value().(string)
					switch member {
					case "Message":
						seen = true
					case "PropertiesChanged":
						done = true
					}
				case <-timeout:
					t.Fatal("the spy never got the broadcast PropertiesChanged")
				}
			}
			if seen != tt.wantSeen {
				t.Errorf("the other connection saw the app's message: %v, want %v", seen, tt.wantSeen)
			}
		})
	}
}

// Another user's dbus-monitor, which tries the Monitoring interface and
// then eavesdropping, sees broadcasts but not an app's messages.
func TestDBusMonitorAsOtherUser(t *testing.T) {
	h := startDBusPolicy(t)
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	monitor, err := exec.LookPath("dbus-monitor")
	if err != nil {
		t.Skip("dbus-monitor is not installed")
	}
	c := h.client()
	c.do("Register", app, "123")
	c.do("Subscribe", app)

	cmd := exec.Command(monitor, "--address", h.addr)
	cmd.Env = []string{"HOME=/"}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Kill()
		cmd.Wait()
	}()
	lines := make(chan string, 1000)
	go func() {
		defer close(lines)
		buf := make([]byte, 64<<10)
		var rest string
		for {
			n, err := out.Read(buf)
			rest += string(buf[:n])
			for {
				line, more, ok := strings.Cut(rest, "\n")
				if !ok {
					break
				}
				lines <- line
				rest = more
			}
			if err != nil {
				return
			}
		}
	}()
	// dbus-monitor prints the NameAcquired the bus sends it once its match
	// rules are in place.
	readUntil(t, lines, "member=NameAcquired")

	h.b.Push(ipc.Message{ID: "secret", App: app, From: "123", Data: map[string]string{"pin": "1234"}})
	c.wantSignal("Message", app, "secret", "123", "", map[string]string{"pin": "1234"}, map[string]dbus.Variant{"ttl": dbus.MakeVariant(uint32(0))})
	h.b.SetPowerMode("low")
	before := readUntil(t, lines, "member=PropertiesChanged")
	if strings.Contains(before, "member=Message") || strings.Contains(before, "1234") {
		t.Errorf("uid %d's dbus-monitor saw the app's message:\n%s", nobody, before)
	}
}

// readUntil reads lines until one contains want and returns what it read.
func readUntil(t *testing.T, lines <-chan string, want string) string {
	t.Helper()
	var b strings.Builder
	timeout := time.After(10 * time.Second)
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("output ended before %q:\n%s", want, b.String())
			}
			b.WriteString(line + "\n")
			if strings.Contains(line, want) {
				return b.String()
			}
		case <-timeout:
			t.Fatalf("no %q within 10s:\n%s", want, b.String())
		}
	}
}

func TestDBusPolicy(t *testing.T) {
	t.Run("only the daemon's user may own the name", func(t *testing.T) {
		bus := dbustest.StartSystemLike(t, absPath(t, policyFile))
		requestName := func(uid, gid uint32) (string, error) {
			return dbusAs(t, uid, gid, "dbus-send", "--bus="+bus.Address, "--print-reply", "--dest=org.freedesktop.DBus",
				"/org/freedesktop/DBus", "org.freedesktop.DBus.RequestName", "string:"+ipc.DBusName, "uint32:4")
		}
		if out, err := requestName(nobody, nobody); err == nil || !strings.Contains(out, "AccessDenied") {
			t.Errorf("uid %d took the name: %v\n%s", nobody, err, out)
		}
		// Not even root: it is not the daemon's user.
		if srv, err := dbusdoor.New(dbusdoor.Config{Bus: bus.Address, Backend: ipctest.New("s", "d"), Logger: ipctest.Logger(t)}); err == nil {
			srv.Close()
			t.Error("root took the name")
		} else if !strings.Contains(err.Error(), "not allowed to own") {
			t.Errorf("root's New = %v, want the policy's refusal", err)
		}
		u, err := user.Lookup(daemonUser)
		if err != nil {
			t.Skipf("no user %s here to take the name: %v", daemonUser, err)
		}
		uid, _ := strconv.ParseUint(u.Uid, 10, 32)
		gid, _ := strconv.ParseUint(u.Gid, 10, 32)
		if out, err := requestName(uint32(uid), uint32(gid)); err != nil || !strings.Contains(out, "uint32 1") {
			t.Errorf("%s could not take the name: %v\n%s", daemonUser, err, out)
		}
	})
	t.Run("without the policy file", func(t *testing.T) {
		bus := dbustest.StartSystemLike(t)
		srv, err := dbusdoor.New(dbusdoor.Config{Bus: bus.Address, Backend: ipctest.New("s", "d"), Logger: ipctest.Logger(t)})
		if err == nil {
			srv.Close()
			t.Fatal("New took the name without the policy file")
		}
		if want := "is org.tether.Push.conf installed"; !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "AccessDenied") && !strings.Contains(err.Error(), "not allowed to own") {
			t.Errorf("error %q, want one with %q and the bus's refusal", err, want)
		}
	})
	t.Run("name taken", func(t *testing.T) {
		bus := dbustest.Start(t)
		serveDBus(t, bus.Address, ipctest.New("s", "d"))
		srv, err := dbusdoor.New(dbusdoor.Config{Bus: bus.Address, Backend: ipctest.New("s", "d"), Logger: ipctest.Logger(t)})
		if err == nil {
			srv.Close()
			t.Fatal("a second door took the name")
		}
		if want := "owned by another connection on the bus; is another tetherd running?"; !strings.Contains(err.Error(), want) {
			t.Errorf("error %q, want %q", err, want)
		}
	})
}

func TestDBusActivationFile(t *testing.T) {
	data, err := os.ReadFile("../../packaging/dbus/org.tether.Push.service")
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	section := ""
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#"):
		case strings.HasPrefix(line, "["):
			section = line
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section != "[D-BUS Service]" {
				t.Fatalf("line %q is not a key in [D-BUS Service]", line)
			}
			got[k] = v
		}
	}
	want := map[string]string{"Name": ipc.DBusName, "Exec": "/bin/false", "User": daemonUser, "SystemdService": "tetherd.service"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("activation file has %v, want %v", got, want)
	}
}

// An app that does not take its signals, or a bus that does not take the
// door's, does not hold up the backend: past the door's queue the
// subscription ends, and the app is told when the bus moves again.
func TestDBusOverflow(t *testing.T) {
	bus := dbustest.StartWith(t, dbustest.Options{})
	h := serveDBus(t, bus.Address, ipctest.New("s", "d"))
	c := h.client()
	c.do("Register", app, "123")
	c.do("Subscribe", app)

	if err := bus.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	continued := false
	resume := func() {
		if !continued {
			continued = true
			bus.Process.Signal(syscall.SIGCONT)
		}
	}
	defer resume()
	const events = 50000
	pushed := make(chan struct{})
	go func() {
		defer close(pushed)
		for range events {
			h.b.DeleteMessages(app, 1)
		}
	}()
	select {
	case <-pushed:
	case <-time.After(time.Minute):
		t.Fatal("a Listener call blocked on a stalled bus")
	}
	testwait.Until(t, "the overflowing subscription is cancelled", 10*time.Second, func() bool { return !h.b.Listening(app) })
	resume()

	n := 0
	for {
		s := c.signal()
		if s.Name == ipc.DBusInterface+".SubscriptionEnded" {
			if !reflect.DeepEqual(s.Body, []any{app, ipc.DBusEndOverflow}) {
				t.Fatalf("got %v, want overflow", s.Body)
			}
			break
		}
		if s.Name != ipc.DBusInterface+".DeletedMessages" {
			t.Fatalf("got %s, want DeletedMessages", s.Name)
		}
		n++
	}
	if n >= events {
		t.Fatalf("the app got all %d signals; its subscription should have ended", n)
	}
	// The door goes on: the app subscribes again.
	c.do("Subscribe", app)
	if !h.b.Listening(app) {
		t.Fatal("subscribing again after an overflow failed")
	}
}

func TestDBusCloseStopsEverything(t *testing.T) {
	bus := dbustest.Start(t)
	watcher := connectClient(t, bus.Address)
	before := runtime.NumGoroutine()
	b := ipctest.New("s", "d")
	srv, err := dbusdoor.New(dbusdoor.Config{Bus: bus.Address, Backend: b, Logger: ipctest.Logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	closeAndWait := ipctest.Serve(t, srv)
	c := connectClient(t, bus.Address)
	c.do("Register", app, "123")
	c.do("Subscribe", app)
	b.Push(ipc.Message{ID: "m1", App: app, From: "123"})
	c.signal()
	srv.StatusChanged()

	closeAndWait()
	if b.Listening(app) {
		t.Error("the subscription outlived the server")
	}
	var has bool
	if err := watcher.conn.BusObject().Call("org.freedesktop.DBus.NameHasOwner", 0, ipc.DBusName).Store(&has); err != nil || has {
		t.Errorf("NameHasOwner(%s) = %v, %v after Close; want false", ipc.DBusName, has, err)
	}
	if err := srv.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	c.conn.Close()
	testwait.Until(t, "the server's goroutines are gone", 10*time.Second, func() bool { return runtime.NumGoroutine() <= before })
}

func TestDBusServeEnds(t *testing.T) {
	t.Run("with its context", func(t *testing.T) {
		bus := dbustest.Start(t)
		srv, err := dbusdoor.New(dbusdoor.Config{Bus: bus.Address, Backend: ipctest.New("s", "d"), Logger: ipctest.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ctx) }()
		connectClient(t, bus.Address).do("org.freedesktop.DBus.Properties.Get", ipc.DBusInterface, "Connected")
		cancel()
		select {
		case err := <-served:
			if err != nil {
				t.Fatalf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return after its context ended")
		}
	})
	t.Run("when the bus goes away", func(t *testing.T) {
		bus := dbustest.StartWith(t, dbustest.Options{})
		srv, err := dbusdoor.New(dbusdoor.Config{Bus: bus.Address, Backend: ipctest.New("s", "d"), Logger: ipctest.Logger(t)})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Close()
		served := make(chan error, 1)
		go func() { served <- srv.Serve(context.Background()) }()
		if err := bus.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-served:
			if err == nil || !strings.Contains(err.Error(), "lost the connection to the bus") {
				t.Fatalf("Serve = %v, want the bus lost", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("Serve did not return after the bus went away")
		}
	})
}

func TestNewDBusServer(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "bus")
	for _, tt := range []struct {
		cfg  dbusdoor.Config
		want string
	}{
		{dbusdoor.Config{Bus: "unix:path=" + missing}, "no backend"},
		{dbusdoor.Config{Bus: "unix:path=" + missing, Backend: ipctest.New("s", "d")}, "connect to the bus at unix:path=" + missing},
		{dbusdoor.Config{Bus: "off", Backend: ipctest.New("s", "d")}, `the bus is "off"`},
		{dbusdoor.Config{Bus: "sytem", Backend: ipctest.New("s", "d")}, `bus "sytem" is not system, session or a D-Bus address`},
	} {
		srv, err := dbusdoor.New(tt.cfg)
		if err == nil {
			srv.Close()
			t.Errorf("New(%+v) succeeded, want an error with %q", tt.cfg, tt.want)
		} else if !strings.Contains(err.Error(), tt.want) {
			t.Errorf("New(%+v) = %v, want an error with %q", tt.cfg, err, tt.want)
		}
	}
}

func TestDBusAddress(t *testing.T) {
	env := func(vars ...string) func(string) string {
		return func(key string) string {
			for i := 0; i < len(vars); i += 2 {
				if vars[i] == key {
					return vars[i+1]
				}
			}
			return ""
		}
	}
	tests := []struct {
		bus     string
		getenv  func(string) string
		want    string
		wantErr string
	}{
		{bus: "", getenv: env(), want: ipc.DefaultSystemBusAddress},
		{bus: "system", getenv: env(), want: ipc.DefaultSystemBusAddress},
		{bus: "system", getenv: env("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/x"), want: "unix:path=/x"},
		{bus: "session", getenv: env("DBUS_SESSION_BUS_ADDRESS", "unix:path=/s", "XDG_RUNTIME_DIR", "/run/user/1"), want: "unix:path=/s"},
		{bus: "session", getenv: env("XDG_RUNTIME_DIR", "/run/user/1"), want: "unix:path=/run/user/1/bus"},
		{bus: "session", getenv: env(), wantErr: "no session bus"},
		{bus: "unix:abstract=/tmp/x", getenv: env(), want: "unix:abstract=/tmp/x"},
		{bus: "off", getenv: env(), wantErr: `the bus is "off"`},
		{bus: "/run/dbus/system_bus_socket", getenv: env(), wantErr: "is not system, session or a D-Bus address"},
	}
	for _, tt := range tests {
		got, err := ipc.DBusAddress(tt.bus, tt.getenv)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("DBusAddress(%q) = %q, %v; want an error with %q", tt.bus, got, err, tt.wantErr)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("DBusAddress(%q) = %q, %v; want %q", tt.bus, got, err, tt.want)
		}
	}
}

// A table of malformed calls of every kind, sent raw: the door answers each
// with an error (or, when no reply is wanted, nothing) and goes on.
func TestDBusBadCalls(t *testing.T) {
	h := startDBus(t)
	c := h.client()
	c.do("Register", app, "123")
	values := []any{"", "x", uint32(1), int64(-1), true, 1.5, []string{}, map[string]string{"k": "v"},
		map[string]dbus.Variant{"ttl": dbus.MakeVariant("x")}, dbus.MakeVariant(uint32(1)), []byte{0}, dbus.ObjectPath("/")}
	methods := []string{"Register", "Unregister", "Subscribe", "Unsubscribe", "Ack", "Send", "SubscribeTopic", "UnsubscribeTopic",
		"Nope", "org.freedesktop.DBus.Properties.Get", "org.freedesktop.DBus.Properties.GetAll", "org.freedesktop.DBus.Properties.Set",
		"org.freedesktop.DBus.Introspectable.Introspect"}
	n := 0
	for _, method := range methods {
		for i := range values {
			for j := range values {
				args := []any{values[i], values[j]}
				if (i+j)%3 == 0 {
					args = args[:1]
				}
				flags := dbus.Flags(0)
				if (i*len(values)+j)%7 == 0 {
					flags = dbus.FlagNoReplyExpected
				}
				full := method
				if !strings.Contains(full, ".") {
					full = ipc.DBusInterface + "." + full
				}
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				call := c.obj.CallWithContext(ctx, full, flags, args...)
				cancel()
				if flags == 0 && errors.Is(call.Err, context.DeadlineExceeded) {
					t.Errorf("%s%v: no answer", method, args)
				}
				n++
			}
		}
	}
	if h.b.Listening(app) || len(h.b.Sends(app)) != 0 {
		t.Errorf("malformed calls subscribed or sent for the app")
	}
	c.do("Register", app, "123")
	t.Logf("%d malformed calls answered", n)
}

// The Python example subscribes, prints and acks a message, and sends one
// upstream and prints its outcome.
func TestPythonExample(t *testing.T) {
	const python = "/usr/bin/python3" // Debian's, which has python3-dbus and python3-gi
	if err := exec.Command(python, "-c", "import dbus, gi.repository.GLib").Run(); err != nil {
		t.Skipf("%s lacks dbus-python or PyGObject: %v", python, err)
	}
	// The bus named by --bus, or by DBUS_SYSTEM_BUS_ADDRESS for the
	// default, the system bus.
	for _, how := range []string{"--bus", "DBUS_SYSTEM_BUS_ADDRESS"} {
		t.Run(how, func(t *testing.T) { testPythonExample(t, python, how) })
	}
}

func testPythonExample(t *testing.T, python, how string) {
	h := startDBus(t)
	h.client().do("Register", app, "123")

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	args := []string{"../../examples/python/listen.py", "--app", app, "--count", "1", "--send-to", "123", "temp=21"}
	env := os.Environ()
	if how == "--bus" {
		args = append(args, "--bus", h.addr)
	} else {
		env = append(env, "DBUS_SYSTEM_BUS_ADDRESS="+h.addr)
	}
	cmd := exec.CommandContext(ctx, python, args...)
	cmd.Env = env
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	testwait.Until(t, "the example subscribes and sends", 10*time.Second, func() bool { return h.b.Listening(app) && len(h.b.Sends(app)) == 1 })
	up := h.b.Sends(app)[0]
	if want := map[string]string{"temp": "21"}; up.To != "123" || !reflect.DeepEqual(up.Data, want) || up.TTL == nil || *up.TTL != 3600 {
		t.Errorf("the example sent %+v, want data %v to 123 with ttl 3600", up, want)
	}
	h.b.Push(ipc.Message{ID: "0:1%ab", App: app, From: "123", CollapseKey: "news", Data: map[string]string{"b": "2", "a": "1"}})
	testwait.Until(t, "the example acks the message", 10*time.Second, func() bool { return len(h.b.Acked(app)) == 1 })
	if err := h.b.Complete(app, up.ID, ""); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("listen.py: %v\n%s", err, out.String())
	}
	want := "queued " + up.ID + "\nmessage 0:1%ab from 123 collapse_key=news data: a=1 b=2\nsent " + up.ID + "\n"
	if out.String() != want {
		t.Errorf("listen.py printed\n%s\nwant\n%s", out.String(), want)
	}
}

func TestShellExample(t *testing.T) {
	if _, err := exec.LookPath("busctl"); err != nil {
		t.Skip("busctl is not installed")
	}
	h := startDBus(t)
	h.b.SetPowerMode("battery")
	cmd := exec.Command("../../examples/shell/tether-dbus.sh", app, "123", "temp=21", "note=a b=c")
	cmd.Env = append(os.Environ(), "TETHER_DBUS="+h.addr)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("tether-dbus.sh: %v\n%s", err, out)
	}
	sends := h.b.Sends(app)
	if len(sends) != 1 {
		t.Fatalf("the backend got %+v, want one message\n%s", sends, out)
	}
	reg, err := h.b.Register(context.Background(), ipc.Caller{UID: uint32(os.Getuid())}, ipc.RegisterRequest{App: app, Sender: "123"})
	token := reg.Token
	if err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("token %s\nb true\ns \"device-1\"\ns \"battery\"\nqueued %s\n", token, sends[0].ID)
	if string(out) != want {
		t.Errorf("tether-dbus.sh printed\n%s\nwant\n%s", out, want)
	}
	if wantData := map[string]string{"temp": "21", "note": "a b=c"}; !reflect.DeepEqual(sends[0].Data, wantData) || sends[0].To != "123" || *sends[0].TTL != 3600 {
		t.Errorf("the backend got %+v, want data %v", sends[0], wantData)
	}
}

// TestDBusPaths calls the door on its object, on the nodes above it and on
// a path with no object: org.freedesktop.DBus.Peer answers everywhere, the
// rest only where an object is.
func TestDBusPaths(t *testing.T) {
	h := startDBus(t)
	c := h.client()
	tests := []struct {
		name, path, method string
		errName, text      string // "" for success
	}{
		{name: "ping the object", path: ipc.DBusPath, method: "org.freedesktop.DBus.Peer.Ping"},
		{name: "ping a path with no object", path: "/nowhere", method: "org.freedesktop.DBus.Peer.Ping"},
		{name: "introspect a node above", path: "/org/tether", method: "org.freedesktop.DBus.Introspectable.Introspect"},
		{name: "properties of a node above", path: "/org/tether", method: "org.freedesktop.DBus.Properties.GetAll",
			errName: "org.freedesktop.DBus.Error.UnknownInterface", text: "org.freedesktop.DBus.Properties"},
		{name: "introspect a path with no object", path: "/nowhere", method: "org.freedesktop.DBus.Introspectable.Introspect",
			errName: "org.freedesktop.DBus.Error.UnknownObject", text: "/nowhere"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			call := c.conn.Object(ipc.DBusName, dbus.ObjectPath(tt.path)).CallWithContext(ctx, tt.method, 0)
			if tt.errName == "" {
				if call.Err != nil {
					t.Fatalf("%s on %s: %v", tt.method, tt.path, call.Err)
				}
				return
			}
			wantDBusError(t, call.Err, tt.errName, tt.text)
		})
	}
}

// TestDBusMachineID asks the door for the machine's ID, which a machine
// without /etc/machine-id or /var/lib/dbus/machine-id does not have.
func TestDBusMachineID(t *testing.T) {
	c := startDBus(t).client()
	call := c.call("org.freedesktop.DBus.Peer.GetMachineId")
	if call.Err != nil {
		wantDBusError(t, call.Err, "org.freedesktop.DBus.Error.Failed", "read the machine ID")
		return
	}
	if id, _ := call.Body[0].(string); len(call.Body) != 1 || id == "" {
		t.Errorf("GetMachineId answered %v, want one string", call.Body)
	}
}
