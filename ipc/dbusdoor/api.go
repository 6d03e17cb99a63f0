// SPDX-License-Identifier: Apache-2.0

package dbusdoor

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"math"
	"os"
	"slices"
	"strings"

	"tether/internal/busclient"

	"tether/ipc"
)

// The door's interfaces are tables: calls are dispatched from them and
// the introspection data is generated from them, so the two cannot differ.

const (
	propertiesInterface     = "org.freedesktop.DBus.Properties"
	introspectableInterface = "org.freedesktop.DBus.Introspectable"
	emitsChangedAnnotation  = "org.freedesktop.DBus.Property.EmitsChangedSignal"
)

type dbusArg struct{ name, typ string }

type dbusSignal struct {
	name string
	args []dbusArg
}

// dbusCall is what a method learns about its call besides the arguments.
type dbusCall struct {
	sender string
	path   busclient.ObjectPath
	// caller is the sender's Unix user and process, asked of the bus for
	// methods that need it.
	caller ipc.Caller
}

type dbusMethod struct {
	name    string
	in, out []dbusArg
	// needsCaller: ask the bus who the sender is before run.
	needsCaller bool
	// run gets arguments of the types in says.
	run func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error)
}

type dbusProperty struct {
	name, typ string
	// changes is the EmitsChangedSignal annotation: "" for a property
	// announced with PropertiesChanged, "false" for one read afresh on
	// every Get, "const" for one that never changes.
	changes string
	get     func(ipc.Status) any
}

type dbusInterface struct {
	name       string
	methods    []dbusMethod
	signals    []dbusSignal
	properties []dbusProperty
}

func signature(args []dbusArg) string {
	var b strings.Builder
	for _, a := range args {
		b.WriteString(a.typ)
	}
	return b.String()
}

func noResult(err error) ([]any, error) { return nil, err }

var pushInterface = dbusInterface{
	name: ipc.DBusInterface,
	methods: []dbusMethod{
		{
			name: "Register", in: []dbusArg{{"app", "s"}, {"sender", "s"}}, out: []dbusArg{{"token", "s"}}, needsCaller: true,
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				reg, err := s.backend.Register(ctx, c.caller, ipc.RegisterRequest{App: args[0].(string), Sender: args[1].(string)})
				return []any{reg.Token}, err
			},
		},
		{
			// RegisterWithOptions is Register with options, for the Web
			// Push sender's VAPID key, and its endpoint in the answer.
			name: "RegisterWithOptions", in: []dbusArg{{"app", "s"}, {"sender", "s"}, {"options", "a{sv}"}},
			out: []dbusArg{{"token", "s"}, {"endpoint", "s"}}, needsCaller: true,
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				req := ipc.RegisterRequest{App: args[0].(string), Sender: args[1].(string)}
				var err error
				if req.VAPID, err = registerOptions(variantMap(args[2])); err != nil {
					return nil, fmt.Errorf("register app %q: %w", req.App, err)
				}
				reg, err := s.backend.Register(ctx, c.caller, req)
				return []any{reg.Token, reg.Endpoint}, err
			},
		},
		{
			name: "Unregister", in: []dbusArg{{"app", "s"}, {"sender", "s"}}, needsCaller: true,
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				return noResult(s.backend.Unregister(ctx, c.caller, args[0].(string), args[1].(string)))
			},
		},
		{
			name: "Subscribe", in: []dbusArg{{"app", "s"}}, needsCaller: true,
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				return noResult(s.subscribe(ctx, c, args[0].(string)))
			},
		},
		{
			name: "Unsubscribe", in: []dbusArg{{"app", "s"}},
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				return noResult(s.unsubscribe(c.sender, args[0].(string)))
			},
		},
		{
			name: "Ack", in: []dbusArg{{"app", "s"}, {"message_ids", "as"}}, needsCaller: true,
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				return noResult(s.backend.Ack(ctx, c.caller, args[0].(string), stringList(args[1])))
			},
		},
		{
			name: "Send",
			in: []dbusArg{
				{"app", "s"}, {"to", "s"}, {"message_id", "s"}, {"data", "a{ss}"}, {"options", "a{sv}"},
			},
			out:         []dbusArg{{"message_id", "s"}},
			needsCaller: true,
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				req := ipc.SendRequest{App: args[0].(string), To: args[1].(string), ID: args[2].(string), Data: stringMap(args[3])}
				var err error
				if req.TTL, req.Priority, err = sendOptions(variantMap(args[4])); err != nil {
					return nil, fmt.Errorf("send for app %q: %w", req.App, err)
				}
				// The outcome goes to the app's subscriber as SendResult.
				id, _, err := s.backend.Send(ctx, c.caller, req)
				return []any{id}, err
			},
		},
		{
			name: "SubscribeTopic", in: []dbusArg{{"app", "s"}, {"sender", "s"}, {"topic", "s"}}, needsCaller: true,
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				return noResult(s.backend.SubscribeTopic(ctx, c.caller, args[0].(string), args[1].(string), args[2].(string)))
			},
		},
		{
			name: "UnsubscribeTopic", in: []dbusArg{{"app", "s"}, {"sender", "s"}, {"topic", "s"}}, needsCaller: true,
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				return noResult(s.backend.UnsubscribeTopic(ctx, c.caller, args[0].(string), args[1].(string), args[2].(string)))
			},
		},
	},
	signals: []dbusSignal{
		{"Message", []dbusArg{
			{"app", "s"}, {"message_id", "s"}, {"from", "s"},
			{"collapse_key", "s"}, {"data", "a{ss}"}, {"extras", "a{sv}"},
		}},
		{"SendResult", []dbusArg{{"app", "s"}, {"message_id", "s"}, {"error", "s"}}},
		{"TokenRefreshed", []dbusArg{{"app", "s"}, {"sender", "s"}, {"token", "s"}}},
		{"DeletedMessages", []dbusArg{{"app", "s"}, {"count", "u"}}},
		{"SubscriptionEnded", []dbusArg{{"app", "s"}, {"reason", "s"}}},
	},
	properties: []dbusProperty{
		{name: "Connected", typ: "b", get: func(st ipc.Status) any { return st.Connected }},
		{name: "DeviceID", typ: "s", get: func(st ipc.Status) any { return st.DeviceID }},
		{name: "PowerMode", typ: "s", get: func(st ipc.Status) any { return st.PowerMode }},
		// The node connected to or being dialled: the agent moves between
		// the nodes of a cluster.
		{name: "Server", typ: "s", get: func(st ipc.Status) any { return st.Server }},
		{name: "Apps", typ: "u", changes: "false", get: func(st ipc.Status) any { return clampUint32(int64(st.Apps)) }},
		{name: "QueuedDownstream", typ: "u", changes: "false", get: func(st ipc.Status) any { return clampUint32(int64(st.QueuedDownstream)) }},
		{name: "PendingUpstream", typ: "u", changes: "false", get: func(st ipc.Status) any { return clampUint32(int64(st.PendingUpstream)) }},
	},
}

var propertiesIface = dbusInterface{
	name: propertiesInterface,
	methods: []dbusMethod{
		{
			name: "Get", in: []dbusArg{{"interface_name", "s"}, {"property_name", "s"}}, out: []dbusArg{{"value", "v"}},
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				if err := checkPropertyInterface(args[0].(string)); err != nil {
					return nil, err
				}
				p, err := findProperty(args[1].(string))
				if err != nil {
					return nil, err
				}
				st, err := s.backend.Status(ctx)
				if err != nil {
					return nil, err
				}
				return []any{busclient.MakeVariant(p.get(st))}, nil
			},
		},
		{
			name: "GetAll", in: []dbusArg{{"interface_name", "s"}}, out: []dbusArg{{"properties", "a{sv}"}},
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				if err := checkPropertyInterface(args[0].(string)); err != nil {
					return nil, err
				}
				st, err := s.backend.Status(ctx)
				if err != nil {
					return nil, err
				}
				all := make(map[string]busclient.Variant, len(pushInterface.properties))
				for _, p := range pushInterface.properties {
					all[p.name] = busclient.MakeVariant(p.get(st))
				}
				return []any{all}, nil
			},
		},
		{
			name: "Set", in: []dbusArg{{"interface_name", "s"}, {"property_name", "s"}, {"value", "v"}},
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				if err := checkPropertyInterface(args[0].(string)); err != nil {
					return nil, err
				}
				if _, err := findProperty(args[1].(string)); err != nil {
					return nil, err
				}
				return nil, busError("org.freedesktop.DBus.Error.PropertyReadOnly", fmt.Sprintf("property %s is read-only", args[1]))
			},
		},
	},
	signals: []dbusSignal{
		{"PropertiesChanged", []dbusArg{
			{"interface_name", "s"}, {"changed_properties", "a{sv}"}, {"invalidated_properties", "as"},
		}},
	},
}

// introspectableIface is set up by init: its method reads the tables,
// itself among them.
var introspectableIface dbusInterface

func init() {
	introspectableIface = dbusInterface{
		name: introspectableInterface,
		methods: []dbusMethod{
			{
				name: "Introspect", out: []dbusArg{{"xml_data", "s"}},
				run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
					return []any{introspectXML(c.path)}, nil
				},
			},
		},
	}
}

// checkPropertyInterface accepts the door's interface, or "" for all of
// the object's properties (which are the door's).
func checkPropertyInterface(name string) error {
	if name != "" && name != ipc.DBusInterface {
		return busError("org.freedesktop.DBus.Error.UnknownInterface", fmt.Sprintf("%s has no properties of interface %q; its properties are on %s", ipc.DBusPath, name, ipc.DBusInterface))
	}
	return nil
}

func findProperty(name string) (dbusProperty, error) {
	i := slices.IndexFunc(pushInterface.properties, func(p dbusProperty) bool { return p.name == name })
	if i < 0 {
		return dbusProperty{}, busError("org.freedesktop.DBus.Error.UnknownProperty", fmt.Sprintf("%s has no property %q", ipc.DBusInterface, name))
	}
	return pushInterface.properties[i], nil
}

// propertiesChanged builds the PropertiesChanged signal for the door's
// properties whose values differ between old and cur, or returns nil.
func propertiesChanged(old, cur ipc.Status) *signalMsg {
	changed := map[string]busclient.Variant{}
	for _, p := range pushInterface.properties {
		if p.changes == "" && p.get(old) != p.get(cur) {
			changed[p.name] = busclient.MakeVariant(p.get(cur))
		}
	}
	if len(changed) == 0 {
		return nil
	}
	return &signalMsg{iface: propertiesInterface, member: "PropertiesChanged", body: []any{ipc.DBusInterface, changed, []string{}}}
}

func (s *Server) announceStatus() {
	st, err := s.backend.Status(s.ctx)
	if err != nil {
		s.log.Warn("read the status for the bus properties", "err", err)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if msg := propertiesChanged(s.announced, st); msg != nil {
		s.enqueueLocked(outSignal{msg: msg})
	}
	s.announced = st
}

// interfacesAt lists the interfaces of the object at path: the door's
// object has all three, the nodes above it only introspection, so that
// tools can walk down to it.
func interfacesAt(path busclient.ObjectPath) []*dbusInterface {
	if path == ipc.DBusPath {
		return []*dbusInterface{&pushInterface, &propertiesIface, &introspectableIface}
	}
	if childOf(path) != "" {
		return []*dbusInterface{&introspectableIface}
	}
	return nil
}

// childOf names the next element towards the door's object from path, an
// ancestor of it, or returns "" when path is not one.
func childOf(path busclient.ObjectPath) string {
	prefix := string(path)
	if prefix != "/" {
		prefix += "/"
	}
	rest, ok := strings.CutPrefix(ipc.DBusPath, prefix)
	if !ok || rest == "" {
		return ""
	}
	child, _, _ := strings.Cut(rest, "/")
	return child
}

// peerInterface is what the connection answers on every path, as every
// D-Bus peer does.
var peerInterface = dbusInterface{
	name: "org.freedesktop.DBus.Peer",
	methods: []dbusMethod{
		{
			name: "Ping",
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				return nil, nil
			},
		},
		{
			name: "GetMachineId", out: []dbusArg{{"machine_uuid", "s"}},
			run: func(s *Server, ctx context.Context, c dbusCall, args []any) ([]any, error) {
				id, err := machineID()
				return []any{id}, err
			},
		},
	},
}

// machineIDFiles hold the machine's D-Bus ID, systemd's file first.
var machineIDFiles = []string{"/etc/machine-id", "/var/lib/dbus/machine-id"}

func machineID() (string, error) {
	var err error
	for _, name := range machineIDFiles {
		var b []byte
		if b, err = os.ReadFile(name); err == nil {
			return strings.TrimSpace(string(b)), nil
		}
	}
	return "", fmt.Errorf("read the machine ID: %w", err)
}

// introspectDeclaration opens every introspection document.
const introspectDeclaration = `<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
`

// introspectXML is the introspection data of the object at path. The
// names in the tables are D-Bus names and signatures, which hold nothing
// XML would need escaped.
func introspectXML(path busclient.ObjectPath) string {
	var b strings.Builder
	b.WriteString(introspectDeclaration + "<node>\n")
	for _, i := range append(interfacesAt(path), &peerInterface) {
		i.writeXML(&b)
	}
	if child := childOf(path); child != "" {
		fmt.Fprintf(&b, "  <node name=%q></node>\n", child)
	}
	b.WriteString("</node>\n")
	return b.String()
}

func (i *dbusInterface) writeXML(b *strings.Builder) {
	fmt.Fprintf(b, "  <interface name=%q>\n", i.name)
	writeArgs := func(args []dbusArg, direction string) {
		for _, a := range args {
			fmt.Fprintf(b, "      <arg name=%q type=%q%s></arg>\n", a.name, a.typ, direction)
		}
	}
	for _, m := range i.methods {
		fmt.Fprintf(b, "    <method name=%q>\n", m.name)
		writeArgs(m.in, ` direction="in"`)
		writeArgs(m.out, ` direction="out"`)
		b.WriteString("    </method>\n")
	}
	for _, s := range i.signals {
		fmt.Fprintf(b, "    <signal name=%q>\n", s.name)
		writeArgs(s.args, "")
		b.WriteString("    </signal>\n")
	}
	for _, p := range i.properties {
		fmt.Fprintf(b, "    <property name=%q type=%q access=\"read\">", p.name, p.typ)
		if p.changes != "" {
			fmt.Fprintf(b, "\n      <annotation name=%q value=%q></annotation>\n    ", emitsChangedAnnotation, p.changes)
		}
		b.WriteString("</property>\n")
	}
	b.WriteString("  </interface>\n")
}

// busError is a D-Bus error reply of the given name.
func busError(name, text string) error {
	return &busclient.Error{Name: name, Body: []any{text}}
}

// dispatch takes the connection's method calls until it closes, and
// serves each in its own goroutine: a call may wait on the backend.
func (s *Server) dispatch() {
	for {
		call, err := s.conn.NextCall(s.ctx)
		if err != nil {
			return // the door is closing, or the bus went
		}
		if !s.enterCall() {
			s.conn.ReplyError(call, ipc.DBusErrorUnavailable, "the agent is stopping")
			continue
		}
		go func() {
			defer s.calls.Done()
			s.serveCall(call)
		}()
	}
}

// serveCall answers one method call from the tables.
func (s *Server) serveCall(call *busclient.MethodCall) {
	out, err := s.runCall(call)
	if err == nil {
		err = s.conn.Reply(call, out...)
	} else {
		var be *busclient.Error
		if !errors.As(err, &be) {
			be = &busclient.Error{Name: dbusErrorFailed, Body: []any{err.Error()}}
		}
		text, _ := be.Body[0].(string)
		err = s.conn.ReplyError(call, be.Name, text)
	}
	if err != nil {
		s.log.Debug("answer a call", "method", call.Member, "connection", call.Sender, "err", err)
	}
}

// lookup finds the method a call names: a call that names no interface
// looks for it in each of the object's interfaces in turn.
func lookup(call *busclient.MethodCall) (*dbusInterface, *dbusMethod, error) {
	ifaces := interfacesAt(call.Path)
	if ifaces == nil && call.Iface != peerInterface.name {
		return nil, nil, busError("org.freedesktop.DBus.Error.UnknownObject", fmt.Sprintf("no object at %s", call.Path))
	}
	ifaces = append(ifaces, &peerInterface)
	found := false
	for _, i := range ifaces {
		if call.Iface != "" && i.name != call.Iface {
			continue
		}
		found = true
		for j := range i.methods {
			if i.methods[j].name == call.Member {
				return i, &i.methods[j], nil
			}
		}
	}
	if !found {
		return nil, nil, busError("org.freedesktop.DBus.Error.UnknownInterface", fmt.Sprintf("%s has no interface %s", call.Path, call.Iface))
	}
	return nil, nil, busError(busclient.ErrorUnknownMethod, fmt.Sprintf("%s has no method %q", call.Path, call.Member))
}

// runCall checks a call's arguments against its method's table entry,
// asks the bus who calls when the method needs it, and runs it.
func (s *Server) runCall(call *busclient.MethodCall) ([]any, error) {
	iface, m, err := lookup(call)
	if err != nil {
		return nil, err
	}
	if want := signature(m.in); call.Sig != want {
		name := busclient.ErrorInvalidArgs
		if iface.name == ipc.DBusInterface {
			name = ipc.DBusErrorInvalidArgument
		}
		return nil, busError(name, fmt.Sprintf("%s takes %s, signature %q; the call has signature %q",
			m.name, describeArgs(m.in), want, call.Sig))
	}
	c := dbusCall{sender: call.Sender, path: call.Path}
	ctx := s.ctx
	if m.needsCaller {
		c.caller, err = s.callerOf(ctx, call.Sender)
		if err != nil {
			level := slog.LevelWarn
			if e := (*busclient.Error)(nil); errors.As(err, &e) && e.Name == "org.freedesktop.DBus.Error.NameHasNoOwner" {
				level = slog.LevelDebug // the caller left before its answer
			}
			s.log.Log(ctx, level, "cannot tell who calls", "method", m.name, "connection", call.Sender, "err", err)
			return nil, busError(dbusErrorFailed, err.Error())
		}
	}
	out, err := m.run(s, ctx, c, call.Body)
	if err != nil {
		return nil, s.callError(iface, m, call.Body, err)
	}
	return out, nil
}

func describeArgs(args []dbusArg) string {
	if len(args) == 0 {
		return "no arguments"
	}
	parts := make([]string, len(args))
	for i, a := range args {
		parts[i] = a.typ + " " + a.name
	}
	return "(" + strings.Join(parts, ", ") + ")"
}

// enterCall counts a method call in progress, unless the server is closed.
func (s *Server) enterCall() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.calls.Add(1)
	return true
}

// callerOf asks the bus which Unix user and process the connection named
// sender belongs to.
func (s *Server) callerOf(ctx context.Context, sender string) (ipc.Caller, error) {
	if sender == "" {
		return ipc.Caller{}, errors.New("the call has no sender")
	}
	// Both questions are asked at once: the answer is on the path of
	// every call.
	pidc := make(chan uint32, 1)
	go func() {
		var pid uint32
		// Not every platform tells; the user is what decides.
		if body, err := s.busCall(ctx, "GetConnectionUnixProcessID", sender); err == nil {
			pid, _ = body[0].(uint32)
		}
		pidc <- pid
	}()
	body, err := s.busCall(ctx, "GetConnectionUnixUser", sender)
	pid := <-pidc
	if err != nil {
		return ipc.Caller{}, fmt.Errorf("ask the bus for the Unix user of %s: %w", sender, err)
	}
	uid, ok := body[0].(uint32)
	if !ok {
		return ipc.Caller{}, fmt.Errorf("ask the bus for the Unix user of %s: the answer %v is no uint32", sender, body)
	}
	return ipc.Caller{UID: uid, PID: int32(min(pid, math.MaxInt32))}, nil
}

var dbusErrorNames = []struct {
	err  error
	name string
}{
	{ipc.ErrPermission, ipc.DBusErrorPermissionDenied},
	{ipc.ErrUnknownApp, ipc.DBusErrorNotRegistered},
	{ipc.ErrNotRegistered, ipc.DBusErrorNotRegistered},
	{ipc.ErrTooManyMessages, ipc.DBusErrorTooManyMessages},
	{ipc.ErrTooManyRegistrations, ipc.DBusErrorTooManyRegistrations},
	{ipc.ErrInvalidArgument, ipc.DBusErrorInvalidArgument},
	{ipc.ErrOffline, ipc.DBusErrorUnavailable},
	{ipc.ErrRefused, ipc.DBusErrorRefused},
	{ipc.ErrStorage, ipc.DBusErrorUnavailable},
	{ipc.ErrMessageTooBig, ipc.DBusErrorMessageTooBig},
	{ipc.ErrUnsupported, ipc.DBusErrorNotSupported},
}

// busCall calls a method of the bus daemon and returns its one value.
func (s *Server) busCall(ctx context.Context, method string, args ...any) ([]any, error) {
	body, err := s.conn.Call(ctx, "org.freedesktop.DBus", "/org/freedesktop/DBus", "org.freedesktop.DBus", method, args...)
	if err == nil && len(body) != 1 {
		err = fmt.Errorf("the bus answered %s with %d values", method, len(body))
	}
	return body, err
}

// callError turns a method's error into the D-Bus error the caller gets.
func (s *Server) callError(iface *dbusInterface, m *dbusMethod, args []any, err error) error {
	var busErr *busclient.Error
	if errors.As(err, &busErr) {
		return busErr
	}
	var app string
	if iface.name == ipc.DBusInterface && len(args) > 0 {
		app, _ = args[0].(string)
	}
	for _, e := range dbusErrorNames {
		if errors.Is(err, e.err) {
			s.log.Debug("call refused", "method", m.name, "app", app, "error", e.name, "err", err)
			return busError(e.name, err.Error())
		}
	}
	s.log.Warn("call failed", "method", m.name, "app", app, "err", err)
	return busError(dbusErrorFailed, err.Error())
}

// sendOptions reads Send's options: "ttl", an integer number of seconds
// (u, though any integer type is taken), and "priority", a string.
func sendOptions(opts map[string]busclient.Variant) (ttl *int64, priority string, err error) {
	// Sorted, so that of several bad options the same one is named every
	// time.
	for _, key := range slices.Sorted(maps.Keys(opts)) {
		v := opts[key]
		switch key {
		case "ttl":
			n, ok := integer(v.Value)
			if !ok {
				return nil, "", fmt.Errorf("option \"ttl\" must be an unsigned integer of seconds (type u), not type %s: %w", v.Sig, ipc.ErrInvalidArgument)
			}
			if n < 0 {
				return nil, "", fmt.Errorf("option \"ttl\" is %d; it must not be negative: %w", n, ipc.ErrInvalidArgument)
			}
			ttl = &n
		case "priority":
			p, ok := v.Value.(string)
			if !ok {
				return nil, "", fmt.Errorf("option \"priority\" must be a string (type s), not type %s: %w", v.Sig, ipc.ErrInvalidArgument)
			}
			priority = p
		default:
			return nil, "", fmt.Errorf("unknown option %q; the options are ttl and priority: %w", key, ipc.ErrInvalidArgument)
		}
	}
	return ttl, priority, nil
}

// registerOptions reads the options of RegisterWithOptions.
func registerOptions(opts map[string]busclient.Variant) (vapid string, err error) {
	for _, key := range slices.Sorted(maps.Keys(opts)) {
		v := opts[key]
		switch key {
		case "vapid":
			k, ok := v.Value.(string)
			if !ok {
				return "", fmt.Errorf("option \"vapid\" must be a string (type s), not type %s: %w", v.Sig, ipc.ErrInvalidArgument)
			}
			vapid = k
		default:
			return "", fmt.Errorf("unknown option %q; the only option is vapid: %w", key, ipc.ErrInvalidArgument)
		}
	}
	return vapid, nil
}

// integer returns the value of any D-Bus integer type; one beyond int64
// becomes the largest int64, which no TTL check lets through.
func integer(v any) (int64, bool) {
	switch n := v.(type) {
	case uint8:
		return int64(n), true
	case int16:
		return int64(n), true
	case uint16:
		return int64(n), true
	case int32:
		return int64(n), true
	case uint32:
		return int64(n), true
	case int64:
		return n, true
	case uint64:
		return int64(min(n, math.MaxInt64)), true
	}
	return 0, false
}

// subscribe makes the calling connection the app's subscriber.
func (s *Server) subscribe(ctx context.Context, c dbusCall, app string) error {
	u := &dbusSub{s: s, dest: c.sender, app: app}
	s.mu.Lock()
	prev := s.current[app]
	s.current[app] = u
	s.subs[u] = struct{}{}
	s.mu.Unlock()

	cancel, err := s.backend.Listen(ctx, c.caller, app, u)

	s.mu.Lock()
	if err != nil {
		// Whatever the backend sent before failing is not written.
		u.ended, u.discard = true, true
		delete(s.subs, u)
		if s.current[app] == u {
			delete(s.current, app)
			if prev != nil && !prev.ended {
				s.current[app] = prev
			}
		}
		s.mu.Unlock()
		return err
	}
	u.cancel = cancel
	if s.closed && !u.ended {
		s.endLocked(u, true, "")
	}
	// Ended while the backend was subscribing it (the caller left, or it
	// overflowed): cancel now that there is something to cancel.
	ended := u.ended
	var late func()
	if ended {
		late = u.takeCancelLocked()
	}
	s.mu.Unlock()
	if ended {
		if late != nil {
			late()
		}
		return nil
	}
	s.log.Debug("subscribed", "app", app, "connection", c.sender, "uid", c.caller.UID, "pid", c.caller.PID)

	// A connection that left before its subscription was recorded was
	// missed by NameOwnerChanged; the bus answers in order, so asking now
	// catches it.
	body, err := s.busCall(ctx, "NameHasOwner", c.sender)
	if err == nil && body[0] == false {
		s.dropConnection(c.sender)
	}
	return nil
}

// unsubscribe ends the calling connection's subscription for app, if it
// has one.
func (s *Server) unsubscribe(sender, app string) error {
	if app == "" {
		return fmt.Errorf("unsubscribe: no app ID: %w", ipc.ErrInvalidArgument)
	}
	var cancels []func()
	s.mu.Lock()
	for u := range s.subs {
		if u.dest == sender && u.app == app {
			s.endLocked(u, true, "")
			if c := u.takeCancelLocked(); c != nil {
				cancels = append(cancels, c)
			}
		}
	}
	s.mu.Unlock()
	for _, c := range cancels {
		c()
	}
	return nil
}

// The converters below take arguments whose types the call's signature
// has been checked against, decoded as busclient decodes containers.

// stringList is an as.
func stringList(v any) []string {
	list := v.([]any)
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = s.(string)
	}
	return out
}

// stringMap is an a{ss}.
func stringMap(v any) map[string]string {
	m := v.(map[string]any)
	out := make(map[string]string, len(m))
	for k, s := range m {
		out[k] = s.(string)
	}
	return out
}

// variantMap is an a{sv}.
func variantMap(v any) map[string]busclient.Variant {
	m := v.(map[string]any)
	out := make(map[string]busclient.Variant, len(m))
	for k, x := range m {
		out[k] = x.(busclient.Variant)
	}
	return out
}
