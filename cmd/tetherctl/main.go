// SPDX-License-Identifier: Apache-2.0

// Command tetherctl is the command line for the Tether agent (tetherd) on a
// device: it registers apps, listens for their messages (printing them or
// running a program for each), sends upstream messages and shows the
// agent's state, through the agent's Unix socket or, with --dbus, its
// D-Bus service (docs/ipc.md). It is a small program around the client
// package and holds no state of its own.
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
	"time"

	"tether/client"
	"tether/ipc"
)

// version is set at build time (make build stamps it from git).
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// cli is one invocation: where to print and the global flags.
type cli struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	socket         string
	// bus is the --dbus setting; empty means the socket.
	bus     string
	json    bool
	timeout time.Duration
	// name is the command's, for messages on stderr.
	name string
	// agent is made from the global flags once they are all parsed.
	agent *client.Client
}

type command struct {
	name string
	// synopsis is the command's flags and arguments, summary a line of
	// what it does, more what --help adds to that line.
	synopsis, summary, more string
	run                     func(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error
}

var commands = []command{
	{
		name: "register", synopsis: "--app APP --sender SENDER [--vapid KEY]", summary: "print the app's registration token with the sender",
		more: "Registering again prints the same token until the token changes. The first\nregistration of an app binds it to your Unix user. With the sender webpush,\nthe endpoint URL for app servers follows on a second line; --vapid is then\nthe app server's VAPID public key, which pushes must be signed with.",
		run:  runRegister,
	},
	{name: "unregister", synopsis: "--app APP --sender SENDER", summary: "drop the app's registration with the sender", run: runUnregister},
	{name: "subscribe", synopsis: "--app APP --sender SENDER --topic TOPIC", summary: "subscribe the app's registration to a topic of the sender", run: runTopic(true)},
	{name: "unsubscribe", synopsis: "--app APP --sender SENDER --topic TOPIC", summary: "end the app's subscription to a topic", run: runTopic(false)},
	{
		name: "listen", synopsis: "--app APP [--count N] [--once] [--exec PROGRAM [-- ARGS...]]",
		summary: "print the app's messages, or run a program for each, acking each once handled",
		more:    listenHelp,
		run:     runListen,
	},
	{
		name: "send", synopsis: "--app APP --to SENDER [--id ID] [--ttl SECONDS] [--priority normal|high] [--wait] KEY=VALUE...",
		summary: "send an upstream message and print its ID",
		more:    "With --wait, wait until the server has it and print \"sent ID\" (on D-Bus,\n--wait subscribes for the app meanwhile, taking over from its listener).",
		run:     runSend,
	},
	{name: "status", summary: "show the agent's state", run: runStatus},
	{
		name: "up-distributor", synopsis: "[--bus ADDRESS] [--state FILE]",
		summary: "serve your apps as their UnifiedPush distributor on the session bus",
		more:    upDistributorHelp,
		run:     runUpDistributor,
	},
}

const globalHelp = `Global flags, before or after the command:
  --socket PATH        the agent's socket (default $TETHER_SOCKET, else ` + client.DefaultSocket + `)
  --dbus BUS           talk to the agent on D-Bus instead: system, session, or a
                       bus address such as unix:path=/run/dbus/system_bus_socket
  --json               print JSON, one object per line
  --timeout DURATION   give up when the agent has not answered within DURATION
                       (such as 10s; default: wait as long as it takes)
`

// usage is tetherctl's help.
var usage = func() string {
	var b strings.Builder
	b.WriteString("Usage: tetherctl [GLOBAL FLAGS] COMMAND [FLAGS]\n\nTalks to the Tether agent (tetherd) on this device.\n\nCommands:\n")
	for _, cmd := range commands {
		fmt.Fprintf(&b, "  %-12s %s\n", cmd.name, cmd.summary)
	}
	fmt.Fprintf(&b, "  %-12s %s\n  %-12s %s\n\n", "version", "print tetherctl's version", "help", "show this help")
	b.WriteString("Run tetherctl COMMAND --help for a command's flags.\n\n" + globalHelp)
	return b.String()
}()

// commandHelp is a command's --help: what it does and its flags, which
// it reads from fs once the command has defined them.
func commandHelp(cmd command, fs *flag.FlagSet) string {
	var b strings.Builder
	fmt.Fprintf(&b, "Usage: tetherctl %s %s\n\n", cmd.name, cmd.synopsis)
	summary := strings.ToUpper(cmd.summary[:1]) + cmd.summary[1:] + "."
	fmt.Fprintf(&b, "%s\n", summary)
	if cmd.more != "" {
		fmt.Fprintf(&b, "%s\n", cmd.more)
	}
	var flags strings.Builder
	fs.VisitAll(func(f *flag.Flag) {
		if slices.Contains(globalFlags, f.Name) {
			return
		}
		name, text := flag.UnquoteUsage(f)
		if _, isBool := f.Value.(interface{ IsBoolFlag() bool }); isBool {
			name = ""
		}
		fmt.Fprintf(&flags, "  %-20s %s\n", strings.TrimSpace("--"+f.Name+" "+name), text)
	})
	if flags.Len() > 0 {
		b.WriteString("\nFlags:\n" + flags.String())
	}
	b.WriteString("\n" + globalHelp)
	return b.String()
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
	c := &cli{stdout: stdout, stderr: stderr, getenv: getenv}
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
	c.name = name
	fs := newFlagSet(name, c)
	err := commands[i].run(ctx, c, fs, rest)
	var ue usageError
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		fmt.Fprint(stdout, commandHelp(commands[i], fs))
		return 0
	case errors.As(err, &ue):
		fmt.Fprintf(stderr, "tetherctl: %s: %v (see tetherctl %s --help)\n", name, err, name)
		return 2
	default:
		c.warnf("%v", err)
		return 1
	}
}

// globalFlags are the flags every flag set knows.
var globalFlags = []string{"socket", "dbus", "json", "timeout"}

// newFlagSet returns a flag set that knows the global flags, so that they
// may come before or after the command.
func newFlagSet(name string, c *cli) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // run reports errors itself.
	fs.StringVar(&c.socket, "socket", c.socket, "the agent's socket")
	fs.StringVar(&c.bus, "dbus", c.bus, "the bus: system, session or an address")
	fs.BoolVar(&c.json, "json", c.json, "print JSON")
	fs.DurationVar(&c.timeout, "timeout", c.timeout, "how long to wait for the agent's answer")
	return fs
}

// warnf writes a line to stderr, after the command's name.
func (c *cli) warnf(format string, args ...any) {
	fmt.Fprintf(c.stderr, "tetherctl: %s: %s\n", c.name, fmt.Sprintf(format, args...))
}

// parse parses flags and positional arguments in any order and returns the
// positional ones; everything after "--" is positional. Once every flag is
// parsed it makes the client.
func (c *cli) parse(fs *flag.FlagSet, args []string) ([]string, error) {
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
			positional = append(positional, rest...)
			break
		}
		if len(rest) == 0 {
			break
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
	if c.timeout < 0 {
		return nil, usagef("--timeout must not be negative")
	}
	agent, err := client.New(client.Config{Socket: c.socket, Bus: c.bus, Getenv: c.getenv})
	if err != nil {
		return nil, usagef("--dbus: %v", err)
	}
	c.agent = agent
	return positional, nil
}

// parseNoArgs parses flags and rejects positional arguments.
func (c *cli) parseNoArgs(fs *flag.FlagSet, args []string) error {
	rest, err := c.parse(fs, args)
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

// withTimeout bounds a wait for the agent by --timeout.
func (c *cli) withTimeout(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.timeout == 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, c.timeout)
}

// errNoAnswer: the agent did not answer within --timeout.
var errNoAnswer = errors.New("the agent did not answer")

// explain rewords the end of a wait: ctx is the command's, ended by an
// interrupt, and err came from a wait bounded by withTimeout.
func (c *cli) explain(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case ctx.Err() != nil:
		return errors.New("interrupted")
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w within %s", errNoAnswer, c.timeout)
	}
	return err
}

// do runs one request of the command, bounded by --timeout.
func (c *cli) do(ctx context.Context, request func(ctx context.Context) error) error {
	tctx, cancel := c.withTimeout(ctx)
	defer cancel()
	return c.explain(ctx, request(tctx))
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
func (c *cli) parseAppSender(fs *flag.FlagSet, args []string) (app, sender string, err error) {
	fs.StringVar(&app, "app", "", "the `APP` ID")
	fs.StringVar(&sender, "sender", "", "the `SENDER` ID (the app server's)")
	if err := c.parseNoArgs(fs, args); err != nil {
		return "", "", err
	}
	return app, sender, require([2]string{"app", app}, [2]string{"sender", sender})
}

func runRegister(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
	var opt client.RegisterOptions
	fs.StringVar(&opt.VAPID, "vapid", "", "with the sender webpush, the app server's VAPID public `KEY` (base64url)")
	app, sender, err := c.parseAppSender(fs, args)
	if err != nil {
		return err
	}
	var reg client.Registration
	if err := c.do(ctx, func(ctx context.Context) (err error) {
		reg, err = c.agent.RegisterWith(ctx, app, sender, opt)
		return err
	}); err != nil {
		return err
	}
	if c.json {
		return c.printJSON(reg)
	}
	if _, err = fmt.Fprintln(c.stdout, reg.Token); err != nil || reg.Endpoint == "" {
		return err
	}
	_, err = fmt.Fprintln(c.stdout, reg.Endpoint)
	return err
}

func runUnregister(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
	app, sender, err := c.parseAppSender(fs, args)
	if err != nil {
		return err
	}
	return c.do(ctx, func(ctx context.Context) error { return c.agent.Unregister(ctx, app, sender) })
}

// runTopic returns subscribe, or unsubscribe when subscribe is false.
func runTopic(subscribe bool) func(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
	return func(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
		topic := fs.String("topic", "", "the `TOPIC`, without /topics/")
		app, sender, err := c.parseAppSender(fs, args)
		if err != nil {
			return err
		}
		if err := require([2]string{"topic", *topic}); err != nil {
			return err
		}
		return c.do(ctx, func(ctx context.Context) error {
			if subscribe {
				return c.agent.SubscribeTopic(ctx, app, sender, *topic)
			}
			return c.agent.UnsubscribeTopic(ctx, app, sender, *topic)
		})
	}
}

func runSend(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
	var m client.SendRequest
	fs.StringVar(&m.App, "app", "", "the sending `APP`'s ID")
	fs.StringVar(&m.To, "to", "", "the `SENDER` ID to send to")
	fs.StringVar(&m.ID, "id", "", "the message `ID` (default: the agent makes one)")
	fs.Func("ttl", "time to live in `SECONDS` (default 4 weeks; 0: now or never)", func(s string) error {
		ttl, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return fmt.Errorf("%q is not a whole number of seconds", s)
		}
		m.TTL = &ttl
		return nil
	})
	fs.StringVar(&m.Priority, "priority", "", "`normal` or high")
	wait := fs.Bool("wait", false, "wait until the server has the message")
	pairs, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := require([2]string{"app", m.App}, [2]string{"to", m.To}); err != nil {
		return err
	}
	if m.Priority != "" && m.Priority != "normal" && m.Priority != "high" {
		return usagef("--priority must be normal or high, not %q", m.Priority)
	}
	m.Data = make(map[string]string, len(pairs))
	for _, pair := range pairs {
		key, value, ok := strings.Cut(pair, "=")
		if !ok || key == "" {
			return usagef("data must be KEY=VALUE, not %q", pair)
		}
		if _, dup := m.Data[key]; dup {
			return usagef("data key %q given twice", key)
		}
		m.Data[key] = value
	}

	var id string
	err = c.do(ctx, func(ctx context.Context) (err error) {
		if *wait {
			id, err = c.agent.SendWait(ctx, m)
		} else {
			id, err = c.agent.Send(ctx, m)
		}
		return err
	})
	switch {
	case err != nil && id != "":
		return fmt.Errorf("message %s: %w", id, err)
	case err != nil:
		return err
	case c.json:
		return c.printJSON(struct {
			MessageID string `json:"message_id"`
			Sent      bool   `json:"sent,omitempty"`
		}{id, *wait})
	case *wait:
		_, err = fmt.Fprintf(c.stdout, "sent %s\n", id)
	default:
		_, err = fmt.Fprintln(c.stdout, id)
	}
	return err
}

func runStatus(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	var st client.Status
	if err := c.do(ctx, func(ctx context.Context) (err error) {
		st, err = c.agent.Status(ctx)
		return err
	}); err != nil {
		return err
	}
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
	_, err := io.WriteString(c.stdout, b.String())
	return err
}

func (c *cli) printMessage(m client.Message) error {
	if c.json {
		return c.printJSON(struct {
			Event string `json:"event"`
			client.Message
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
	if len(m.Raw) > 0 {
		// Bytes, often encrypted: --json has them, in base64.
		fmt.Fprintf(&b, " raw=%d bytes", len(m.Raw))
	}
	_, err := fmt.Fprintln(c.stdout, b.String())
	return err
}

func (c *cli) printEvent(ev client.Event) error {
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
