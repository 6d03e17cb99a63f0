// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"

	"tether/client"
	"tether/internal/busclient"
	"tether/internal/updist"
	"tether/ipc"
)

const upDistributorHelp = `Owns ` + updist.BusName + ` on your session bus and serves
the UnifiedPush D-Bus interfaces (org.unifiedpush.Distributor2 and 1) to your
apps: each app's registration becomes a Web Push registration in the agent,
whose endpoint the app is handed, and the messages pushed to it go to the
app's org.unifiedpush.Connector, which the bus starts when it is not running.
Registrations are kept in $XDG_STATE_HOME/tether/unifiedpush.json (else
~/.local/state/tether/unifiedpush.json); see docs/unifiedpush.md. It runs
until stopped, usually as the systemd user unit tether-up-distributor.`

func runUpDistributor(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
	var bus, state string
	fs.StringVar(&bus, "bus", "", "the bus `ADDRESS` (default: the bus that started it, else $DBUS_SESSION_BUS_ADDRESS)")
	fs.StringVar(&state, "state", "", "the registrations' `FILE`")
	if err := c.parseNoArgs(fs, args); err != nil {
		return err
	}
	// Started by D-Bus activation, it serves the bus that started it.
	for _, env := range []string{"DBUS_STARTER_ADDRESS", "DBUS_SESSION_BUS_ADDRESS"} {
		if bus == "" {
			bus = c.getenv(env)
		}
	}
	if bus == "" {
		return usagef("no session bus: DBUS_SESSION_BUS_ADDRESS is not set; give --bus")
	}
	if state == "" {
		var err error
		if state, err = updist.DefaultStateFile(c.getenv); err != nil {
			return usagef("--state: %v", err)
		}
	}
	conn, err := busclient.Dial(ctx, bus)
	if err != nil {
		return fmt.Errorf("connect to the session bus: %w", err)
	}
	defer conn.Close()
	d, err := updist.New(updist.Config{
		Bus:       conn,
		Agent:     upAgent{c.agent},
		StateFile: state,
		Logger:    &lineLogger{w: c.stderr},
	})
	if err != nil {
		return err
	}
	return d.Run(ctx)
}

// upAgent is the agent as the distributor uses it: registrations with the
// built-in Web Push sender.
type upAgent struct{ c *client.Client }

func (a upAgent) Register(ctx context.Context, app, vapid string) (string, error) {
	reg, err := a.c.RegisterWith(ctx, app, ipc.WebPushSender, client.RegisterOptions{VAPID: vapid})
	switch {
	case err != nil && (agentAway(err) || isAgentError(err, ipc.CodeOffline)):
		return "", fmt.Errorf("%w: %w", updist.ErrAgentUnavailable, err)
	case err == nil && reg.Endpoint == "":
		err = fmt.Errorf("the agent gave app %q no endpoint", app)
	}
	return reg.Endpoint, err
}

// isAgentError reports whether err is the agent's refusal with code.
func isAgentError(err error, code string) bool {
	var refused *client.AgentError
	return errors.As(err, &refused) && refused.Code == code
}

func (a upAgent) Unregister(ctx context.Context, app string) error {
	return a.c.Unregister(ctx, app, ipc.WebPushSender)
}

func (a upAgent) Listen(ctx context.Context, app string) (updist.Listener, error) {
	l, err := a.c.Listen(ctx, app)
	if isAgentError(err, ipc.CodeUnknownApp) || isAgentError(err, ipc.CodeNotRegistered) {
		return nil, fmt.Errorf("%w: %w", updist.ErrRegistrationGone, err)
	}
	if err != nil {
		return nil, err
	}
	return upListener{l}, nil
}

// upListener passes on the app's messages and its Web Push token's
// changes, and nothing else of its events.
type upListener struct{ l *client.Listener }

func (u upListener) Next(ctx context.Context) (updist.Message, error) {
	for {
		ev, err := u.l.Next(ctx)
		switch {
		case err != nil:
			return updist.Message{}, err
		case ev.Event == ipc.EventMessage:
			return updist.Message{ID: ev.Message.ID, Body: ev.Message.Raw}, nil
		case ev.Event == ipc.EventTokenRefreshed && ev.Sender == ipc.WebPushSender:
			return updist.Message{}, updist.ErrEndpointChanged
		}
	}
}

func (u upListener) Ack(ctx context.Context, id string) error { return u.l.Ack(ctx, id) }
func (u upListener) Close() error                             { return u.l.Close() }

// lineLogger writes a line per record to stderr (the journal, under
// systemd) as key=value pairs, as slog's text handler does, without the
// weight of log/slog in tetherctl. The distributor logs from several
// goroutines: mu keeps their lines whole.
type lineLogger struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineLogger) Info(msg string, args ...any)  { l.log("INFO", msg, args) }
func (l *lineLogger) Warn(msg string, args ...any)  { l.log("WARN", msg, args) }
func (l *lineLogger) Error(msg string, args ...any) { l.log("ERROR", msg, args) }

func (l *lineLogger) log(level, msg string, args []any) {
	var b strings.Builder
	b.WriteString("level=" + level + " msg=" + strconv.Quote(msg))
	for i := 0; i+1 < len(args); i += 2 {
		v := fmt.Sprint(args[i+1])
		if strings.ContainsAny(v, " \"=") || v == "" {
			v = strconv.Quote(v)
		}
		fmt.Fprintf(&b, " %v=%s", args[i], v)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintln(l.w, b.String())
}
