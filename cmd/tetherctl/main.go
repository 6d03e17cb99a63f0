// Command tetherctl is the command line for the Tether agent (tetherd) on a
// device: it registers apps, listens for their messages, sends upstream
// messages and shows the agent's state, through the agent's Unix socket
// or, with --dbus, its D-Bus service (docs/ipc.md). It is a small client of
// those and holds no state of its own.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"tether/ipc"
)

const defaultSocket = "/run/tether/tetherd.sock"

// version is set at build time (make build stamps it from git).
var version = "dev"

const usage = `Usage: tetherctl [--socket PATH | --dbus BUS] [--json] COMMAND [FLAGS]

Talks to the Tether agent (tetherd) on this device.

Commands:
  register    --app APP --sender SENDER   print the app's registration token
  unregister  --app APP --sender SENDER   drop the registration
  subscribe   --app APP --sender SENDER --topic TOPIC
                                          subscribe the app's registration
                                          to a topic of the sender
  unsubscribe --app APP --sender SENDER --topic TOPIC
                                          end that subscription
  listen      --app APP [--count N]       print the app's messages, acking each
                                          one once printed; with --count, exit
                                          after N messages
  send        --app APP --to SENDER [--id ID] [--ttl SECONDS]
              [--priority normal|high] [--wait] KEY=VALUE...
                                          send an upstream message and print
                                          its ID; with --wait, wait until the
                                          server has it (on D-Bus, --wait
                                          subscribes for the app meanwhile,
                                          taking over from its listener)
  status                                  show the agent's state
  version                                 print tetherctl's version
  help                                    show this help

Global flags, before or after the command:
  --socket PATH   the agent's socket (default $TETHER_SOCKET, else ` + defaultSocket + `)
  --dbus BUS      talk to the agent on D-Bus instead: system, session, or a
                  bus address such as unix:path=/run/dbus/system_bus_socket
  --json          print JSON, one object per line
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// cli is one invocation: where to print and the global flags.
type cli struct {
	stdout io.Writer
	getenv func(string) string
	socket string
	// bus is the --dbus setting; empty means the socket.
	bus  string
	json bool
}

type command struct {
	name string
	run  func(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error
}

var commands = []command{
	{"register", runRegister},
	{"unregister", runUnregister},
	{"subscribe", runTopic("subscribe_topic")},
	{"unsubscribe", runTopic("unsubscribe_topic")},
	{"listen", runListen},
	{"send", runSend},
	{"status", runStatus},
}

// usageError is a mistake in the command line; it exits with status 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error {
	return usageError{fmt.Sprintf(format, args...)}
}

// run is tetherctl without the process around it: it returns the exit
// status.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	c := &cli{stdout: stdout, getenv: getenv, socket: defaultSocket}
	if s := getenv("TETHER_SOCKET"); s != "" {
		c.socket = s
	}
	global := newFlagSet("tetherctl", c)
	switch err := global.Parse(args); {
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		return 0
	case err != nil:
		fmt.Fprintf(stderr, "tetherctl: %v\n\n%s", err, usage)
		return 2
	}
	if global.NArg() == 0 {
		fmt.Fprintf(stderr, "tetherctl: no command\n\n%s", usage)
		return 2
	}
	name, rest := global.Arg(0), global.Args()[1:]
	switch name {
	case "help":
		fmt.Fprint(stdout, usage)
		return 0
	case "version":
		fmt.Fprintln(stdout, "tetherctl", version)
		return 0
	}
	i := slices.IndexFunc(commands, func(cmd command) bool { return cmd.name == name })
	if i < 0 {
		fmt.Fprintf(stderr, "tetherctl: unknown command %q\n\n%s", name, usage)
		return 2
	}
	err := commands[i].run(ctx, c, newFlagSet(name, c), rest)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, usage)
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "tetherctl: %s: %v (see tetherctl help)\n", name, err)
		return 2
	default:
		fmt.Fprintf(stderr, "tetherctl: %s: %v\n", name, err)
		return 1
	}
}

// newFlagSet returns a flag set that knows the global flags, so that they
// may come before or after the command.
func newFlagSet(name string, c *cli) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // run reports errors itself.
	fs.StringVar(&c.socket, "socket", c.socket, "the agent's socket")
	fs.StringVar(&c.bus, "dbus", c.bus, "the bus: system, session or an address")
	fs.BoolVar(&c.json, "json", c.json, "print JSON")
	return fs
}

// parse parses flags and positional arguments in any order and returns the
// positional ones; everything after "--" is positional.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		rest := fs.Args()
		if n := len(args) - len(rest); n > 0 && args[n-1] == "--" {
			return append(positional, rest...), nil
		}
		if len(rest) == 0 {
			return positional, nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// parseNoArgs parses flags and rejects positional arguments.
func parseNoArgs(fs *flag.FlagSet, args []string) error {
	rest, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q", rest[0])
	}
	return nil
}

func require(flags ...[2]string) error {
	for _, f := range flags {
		if f[1] == "" {
			return usagef("--%s is required", f[0])
		}
	}
	return nil
}

// printJSON writes v as one line of JSON.
func (c *cli) printJSON(v any) error {
	line, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encode output: %w", err)
	}
	_, err = fmt.Fprintf(c.stdout, "%s\n", line)
	return err
}

// parseAppSender parses the --app and --sender flags that register and
// unregister both require.
func parseAppSender(fs *flag.FlagSet, args []string) (app, sender string, err error) {
	appFlag := fs.String("app", "", "the app ID")
	senderFlag := fs.String("sender", "", "the sender ID")
	if err := parseNoArgs(fs, args); err != nil {
		return "", "", err
	}
	if err := require([2]string{"app", *appFlag}, [2]string{"sender", *senderFlag}); err != nil {
		return "", "", err
	}
	return *appFlag, *senderFlag, nil
}

func runRegister(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
	app, sender, err := parseAppSender(fs, args)
	if err != nil {
		return err
	}
	resp, err := c.call(ctx, ipc.Request{Op: "register", App: app, Sender: sender})
	if err != nil {
		return err
	}
	if c.json {
		return c.printJSON(struct {
			Token string `json:"token"`
		}{resp.Token})
	}
	_, err = fmt.Fprintln(c.stdout, resp.Token)
	return err
}

func runUnregister(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
	app, sender, err := parseAppSender(fs, args)
	if err != nil {
		return err
	}
	_, err = c.call(ctx, ipc.Request{Op: "unregister", App: app, Sender: sender})
	return err
}

// parseTopic parses the flags of subscribe and unsubscribe.
func parseTopic(fs *flag.FlagSet, args []string) (ipc.Request, error) {
	var req ipc.Request
	fs.StringVar(&req.App, "app", "", "the app ID")
	fs.StringVar(&req.Sender, "sender", "", "the sender ID")
	fs.StringVar(&req.Topic, "topic", "", "the topic")
	if err := parseNoArgs(fs, args); err != nil {
		return req, err
	}
	return req, require([2]string{"app", req.App}, [2]string{"sender", req.Sender}, [2]string{"topic", req.Topic})
}

// runTopic returns the command that makes the request op (subscribe_topic
// or unsubscribe_topic) from the flags of subscribe and unsubscribe.
func runTopic(op string) func(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
	return func(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
		req, err := parseTopic(fs, args)
		if err != nil {
			return err
		}
		req.Op = op
		_, err = c.call(ctx, req)
		return err
	}
}

func runSend(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
	req := ipc.Request{Op: "send"}
	fs.StringVar(&req.App, "app", "", "the app ID")
	fs.StringVar(&req.To, "to", "", "the sender ID to send to")
	fs.StringVar(&req.MessageID, "id", "", "the message ID (default: the agent makes one)")
	fs.Func("ttl", "time to live in seconds", func(s string) error {
		ttl, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a whole number of seconds", s)
		}
		req.TTL = &ttl
		return nil
	})
	fs.StringVar(&req.Priority, "priority", "", "normal or high")
	fs.BoolVar(&req.Wait, "wait", false, "wait for the outcome")
	pairs, err := parse(fs, args)
	if err != nil {
		return err
	}
	if err := require([2]string{"app", req.App}, [2]string{"to", req.To}); err != nil {
		return err
	}
	if req.Priority != "" && req.Priority != "normal" && req.Priority != "high" {
		return usagef("--priority must be normal or high, not %q", req.Priority)
	}
	req.Data = make(map[string]string, len(pairs))
	for _, pair := range pairs {
		key, value, ok := strings.Cut(pair, "=")
		if !ok || key == "" {
			return usagef("data must be KEY=VALUE, not %q", pair)
		}
		if _, dup := req.Data[key]; dup {
			return usagef("data key %q given twice", key)
		}
		req.Data[key] = value
	}

	resp, err := c.call(ctx, req)
	if err != nil {
		if resp.MessageID != "" {
			return fmt.Errorf("message %s: %w", resp.MessageID, err)
		}
		return err
	}
	switch {
	case c.json:
		return c.printJSON(struct {
			MessageID string `json:"message_id"`
			Sent      bool   `json:"sent,omitempty"`
		}{resp.MessageID, resp.Sent})
	case resp.Sent:
		_, err = fmt.Fprintf(c.stdout, "sent %s\n", resp.MessageID)
	default:
		_, err = fmt.Fprintln(c.stdout, resp.MessageID)
	}
	return err
}

func runStatus(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	resp, err := c.call(ctx, ipc.Request{Op: "status"})
	if err != nil {
		return err
	}
	if resp.Status == nil {
		return errors.New("the agent sent no status")
	}
	st := *resp.Status
	if c.json {
		return c.printJSON(st)
	}
	connected := "no"
	if st.Connected {
		connected = "yes"
	}
	learned := "-"
	if st.HeartbeatHeld > 0 {
		learned = fmt.Sprintf("%ds held", st.HeartbeatHeld)
		if st.HeartbeatFailed > 0 {
			learned += fmt.Sprintf(", %ds failed", st.HeartbeatFailed)
		}
	}
	heartbeat := "-"
	if st.Heartbeat > 0 {
		heartbeat = fmt.Sprintf("%ds", st.Heartbeat)
	}
	rows := [][2]string{
		{"connected", connected},
		{"server", orDash(st.Server)},
		{"device id", orDash(st.DeviceID)},
		{"apps", strconv.Itoa(st.Apps)},
		{"queued downstream", strconv.Itoa(st.QueuedDownstream)},
		{"pending upstream", strconv.Itoa(st.PendingUpstream)},
		{"power mode", orDash(st.PowerMode)},
		{"heartbeat", heartbeat},
		{"network", orDash(st.Network)},
		{"learned", learned},
		{"last connect", orDash(st.LastConnect)},
		{"last disconnect", orDash(st.LastDisconnect)},
		{"reconnects", strconv.FormatUint(st.Reconnects, 10)},
		{"heartbeats sent", strconv.FormatUint(st.Heartbeats, 10)},
	}
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "%-18s %s\n", r[0]+":", r[1])
	}
	_, err = io.WriteString(c.stdout, b.String())
	return err
}

func runListen(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
	app := fs.String("app", "", "the app ID")
	count := fs.Int("count", 0, "exit after this many messages (0: never)")
	if err := parseNoArgs(fs, args); err != nil {
		return err
	}
	if err := require([2]string{"app", *app}); err != nil {
		return err
	}
	if *count < 0 {
		return usagef("--count must not be negative")
	}
	l, err := c.listen(ctx, *app)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	defer l.close()

	received := 0
	for *count == 0 || received < *count || l.pendingAcks() > 0 {
		ev, err := l.next()
		if err != nil {
			if ctx.Err() != nil {
				return nil // interrupted: what was not acked comes again
			}
			return err
		}
		if ev == nil {
			continue // an ack was answered
		}
		switch ev.Event {
		case ipc.EventMessage:
			if ev.Message == nil {
				return errors.New("the agent sent a message event without a message")
			}
			if *count > 0 && received == *count {
				continue // not acked, so it comes again to the next listener
			}
			if err := c.printMessage(*ev.Message); err != nil {
				return err
			}
			received++
			if err := l.ack(ev.Message.ID); err != nil {
				return err
			}
		case ipc.EventReplaced:
			return fmt.Errorf("another listener for app %q took over", *app)
		default:
			if err := c.printEvent(*ev); err != nil {
				return err
			}
		}
	}
	return nil
}

func (c *cli) printMessage(m ipc.Message) error {
	if c.json {
		return c.printJSON(struct {
			Event string `json:"event"`
			ipc.Message
		}{ipc.EventMessage, m})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "message %s from %s collapse_key=%s data:", m.ID, m.From, orDash(m.CollapseKey))
	if len(m.Data) == 0 {
		b.WriteString(" -")
	}
	for _, k := range slices.Sorted(maps.Keys(m.Data)) {
		fmt.Fprintf(&b, " %s=%s", quoteIfNeeded(k), quoteIfNeeded(m.Data[k]))
	}
	_, err := fmt.Fprintln(c.stdout, b.String())
	return err
}

func (c *cli) printEvent(ev ipc.Event) error {
	if c.json {
		return c.printJSON(ev)
	}
	var err error
	switch ev.Event {
	case ipc.EventSent:
		_, err = fmt.Fprintf(c.stdout, "sent %s\n", ev.MessageID)
	case ipc.EventSendError:
		_, err = fmt.Fprintf(c.stdout, "send_error %s: %s\n", ev.MessageID, ev.Error)
	case ipc.EventDeletedMessages:
		_, err = fmt.Fprintf(c.stdout, "deleted_messages %d\n", ev.Count)
	case ipc.EventTokenRefreshed:
		_, err = fmt.Fprintf(c.stdout, "token_refreshed %s %s\n", ev.Sender, ev.Token)
	default:
		_, err = fmt.Fprintf(c.stdout, "%s\n", ev.Event)
	}
	return err
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// quoteIfNeeded keeps data readable on one line: values with spaces, '=',
// quotes or control characters are printed Go-quoted.
func quoteIfNeeded(s string) string {
	if s == "" || strings.ContainsFunc(s, func(r rune) bool {
		return r <= ' ' || r == '=' || r == '"' || r == '\\' || r == 0x7f || !strconv.IsPrint(r)
	}) {
		return strconv.Quote(s)
	}
	return s
}
