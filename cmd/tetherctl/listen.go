// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"time"

	"tether/client"
	"tether/ipc"
)

const listenHelp = `Each message is acked once handled: printed or, with --exec, once PROGRAM
exited 0. What was not acked comes again, so a message may come twice
(after the agent restarted, say), never not at all.

When the agent goes away, listen waits for it and listens again, with a
backoff of up to 5s; --once exits instead.

With --exec, PROGRAM runs once per message, with ARGS: the message as JSON
on its stdin, and in its environment TETHER_MESSAGE_ID, TETHER_FROM,
TETHER_COLLAPSE_KEY and TETHER_DATA_KEY for each data key, KEY upper-cased
with every character other than A-Z and 0-9 made _ (when keys meet on
one name, the first key in byte order has it). When PROGRAM fails, it
runs again, with a backoff of up to 1m, until it succeeds or the message's
time to live runs out; messages wait their turn meanwhile.`

// Backoffs: the first wait, and the most one may grow to.
const (
	reconnectFirst, reconnectMost = 100 * time.Millisecond, 5 * time.Second
	execFirst, execMost           = time.Second, time.Minute
)

// listenCmd is one run of listen: its flags and what it has done.
type listenCmd struct {
	*cli
	app   string
	count int
	once  bool
	// program and args are --exec's; program is empty without it.
	program string
	args    []string
	// handled counts the messages acked.
	handled int
}

func runListen(ctx context.Context, c *cli, fs *flag.FlagSet, args []string) error {
	l := &listenCmd{cli: c}
	fs.StringVar(&l.app, "app", "", "the `APP` ID")
	fs.IntVar(&l.count, "count", 0, "exit after `N` messages (default: never)")
	fs.BoolVar(&l.once, "once", false, "exit when the agent goes away, instead of waiting for it")
	fs.StringVar(&l.program, "exec", "", "run `PROGRAM` for each message (ARGS after --)")
	rest, err := c.parse(fs, args)
	if err != nil {
		return err
	}
	if err := require([2]string{"app", l.app}); err != nil {
		return err
	}
	if l.count < 0 {
		return usagef("--count must not be negative")
	}
	switch {
	case l.program == "" && len(rest) > 0:
		return usagef("unexpected argument %q (arguments are for --exec's program)", rest[0])
	case l.program != "":
		if _, err := exec.LookPath(l.program); err != nil {
			return usagef("--exec: %v", err)
		}
		l.args = rest
	}

	wait := backoff{first: reconnectFirst, most: reconnectMost}
	for listened := false; ; listened = true {
		err := l.session(ctx, listened, &wait)
		switch {
		case err == nil || ctx.Err() != nil:
			return nil // done, or interrupted: what was not acked comes again
		case l.once || !agentAway(err):
			return err
		}
		d := wait.next()
		l.warnf("%v; listening again in %s", err, d.Round(time.Millisecond))
		if !sleep(ctx, d) {
			return nil
		}
	}
}

// agentAway reports whether err means that the agent is gone, restarting
// or stuck, so that listening again later may work.
func agentAway(err error) bool {
	return errors.Is(err, client.ErrUnreachable) || errors.Is(err, client.ErrDisconnected) ||
		errors.Is(err, errNoAnswer) || isAgentError(err, ipc.CodeStorageUnavailable)
}

// session listens once, until the count is reached or the listener ends.
// A nil error means the count was reached.
func (l *listenCmd) session(ctx context.Context, again bool, wait *backoff) error {
	var lis *client.Listener
	if err := l.do(ctx, func(ctx context.Context) (err error) {
		lis, err = l.agent.Listen(ctx, l.app)
		return err
	}); err != nil {
		return err
	}
	defer lis.Close()
	wait.reset()
	if again {
		l.warnf("listening again for app %q", l.app)
	}
	for l.count == 0 || l.handled < l.count {
		ev, err := lis.Next(ctx)
		if err != nil {
			return err
		}
		if ev.Event != ipc.EventMessage {
			if err := l.printEvent(ev); err != nil {
				return err
			}
			continue
		}
		handled, err := l.handle(ctx, *ev.Message)
		if err != nil {
			return err
		}
		if !handled {
			continue // given up: the agent drops it
		}
		if err := l.do(ctx, func(ctx context.Context) error { return lis.Ack(ctx, ev.Message.ID) }); err != nil {
			return err
		}
		l.handled++
	}
	return nil
}

// handle prints the message, or runs the program for it until it
// succeeds. It reports whether the message was handled, and may be acked.
func (l *listenCmd) handle(ctx context.Context, m client.Message) (bool, error) {
	if l.program == "" {
		return true, l.printMessage(m)
	}
	stdin, err := json.Marshal(m)
	if err != nil {
		return false, fmt.Errorf("encode message %s: %w", m.ID, err)
	}
	// The agent counts the time to live from when it stored the message,
	// a little before it came here; it drops the message when that runs
	// out.
	expires := time.Now().Add(time.Duration(m.TTL) * time.Second)
	env := execEnv(os.Environ(), m)
	wait := backoff{first: execFirst, most: execMost}
	for try := 1; ; try++ {
		err := l.runProgram(ctx, stdin, env)
		if err == nil {
			return true, nil
		}
		if ctx.Err() != nil {
			return false, ctx.Err()
		}
		d := wait.next()
		if time.Now().Add(d).After(expires) {
			l.warnf("%s for message %s: %v; gave up after try %d: its time to live runs out", l.program, m.ID, err, try)
			return false, nil
		}
		l.warnf("%s for message %s: %v; trying again in %s", l.program, m.ID, err, d.Round(time.Millisecond))
		if !sleep(ctx, d) {
			return false, ctx.Err()
		}
	}
}

// runProgram runs --exec's program once. An interrupt of tetherctl ends
// it with SIGTERM.
func (l *listenCmd) runProgram(ctx context.Context, stdin []byte, env []string) error {
	cmd := exec.CommandContext(ctx, l.program, l.args...)
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGTERM) }
	cmd.WaitDelay = 10 * time.Second
	cmd.Stdin = bytes.NewReader(stdin)
	cmd.Stdout, cmd.Stderr = l.stdout, l.stderr
	cmd.Env = env
	return cmd.Run()
}

// Names of the environment variables --exec's program gets.
const (
	envMessageID   = "TETHER_MESSAGE_ID"
	envFrom        = "TETHER_FROM"
	envCollapseKey = "TETHER_COLLAPSE_KEY"
	envDataPrefix  = "TETHER_DATA_"
)

// execEnv is the environment of --exec's program for message m: base
// without the variables of another message, with m's. Keys that map to
// one name give it the value of the first of them in byte order; a value
// with a NUL byte, which no environment can hold, is left out (the JSON
// on stdin has every key and value).
func execEnv(base []string, m client.Message) []string {
	env := slices.DeleteFunc(slices.Clone(base), func(kv string) bool {
		name, _, _ := strings.Cut(kv, "=")
		return name == envMessageID || name == envFrom || name == envCollapseKey || strings.HasPrefix(name, envDataPrefix)
	})
	env = append(env, envMessageID+"="+m.ID, envFrom+"="+m.From, envCollapseKey+"="+m.CollapseKey)
	taken := make(map[string]bool, len(m.Data))
	for _, key := range slices.Sorted(maps.Keys(m.Data)) {
		name := envDataPrefix + envName(key)
		if !taken[name] {
			taken[name] = true
			env = append(env, name+"="+m.Data[key])
		}
	}
	return slices.DeleteFunc(env, func(kv string) bool { return strings.ContainsRune(kv, 0) })
}

// envName maps a data key to the end of its variable's name: upper-cased,
// every character other than A-Z and 0-9 made _.
func envName(key string) string {
	var b strings.Builder
	for _, r := range key {
		switch {
		case r >= 'a' && r <= 'z':
			b.WriteRune(r - 'a' + 'A')
		case r >= 'A' && r <= 'Z', r >= '0' && r <= '9':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	return b.String()
}

// backoff is a capped, jittered exponential backoff: each wait is half
// the current step plus a random part of the other half, so that
// listeners that lost the same agent do not come back at the same moment.
type backoff struct {
	first, most time.Duration
	step        time.Duration
}

func (b *backoff) next() time.Duration {
	b.step = min(max(2*b.step, b.first), b.most)
	half := b.step / 2
	return half + rand.N(half+1)
}

func (b *backoff) reset() { b.step = 0 }

// sleep waits d, or less when ctx ends; it reports whether it waited d.
func sleep(ctx context.Context, d time.Duration) bool {
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
	return ctx.Err() == nil
}
