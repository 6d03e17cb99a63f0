// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestCExample builds examples/c/tether-listen.c with its Makefile, as an
// app developer would, and runs it against the agent on a private bus: it
// registers the app, receives the messages the app server sent and acks
// each, so that none is left queued; and it exits 1 when the agent leaves
// the bus.
func TestCExample(t *testing.T) {
	out := t.TempDir()
	// -Werror: the example compiles without a warning.
	build, err := exec.Command("make", "--no-print-directory", "-C", "../examples/c", "OUT="+out, "CFLAGS=-O2 -Wall -Wextra -Werror").CombinedOutput()
	if err != nil {
		t.Fatalf("make -C examples/c: %v\n%s", err, build)
	}
	listen := filepath.Join(out, "tether-listen")
	if _, err := os.Stat(listen); err != nil {
		t.Skipf("the C example was not built: %s", build)
	}
	f, bus := startBusAgent(t)

	cmd := exec.Command(listen, "--bus", bus, "--app", app, "--sender", f.sender, "--count", "2")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr := &strings.Builder{}
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// A tether-listen that never gets what it waits for is stopped.
	stop := time.AfterFunc(time.Minute, func() { cmd.Process.Kill() })
	defer stop.Stop()
	lines := bufio.NewScanner(stdout)
	if !lines.Scan() || !strings.HasPrefix(lines.Text(), "token ") {
		cmd.Wait()
		t.Fatalf("tether-listen printed %q, want its token first\n%s", lines.Text(), stderr)
	}
	f.token = strings.TrimPrefix(lines.Text(), "token ")

	ids := []string{
		f.srv.mustSend(f.key, map[string]any{"to": f.token, "data": map[string]string{"alert": "frost"}}),
		f.srv.mustSend(f.key, map[string]any{"to": f.token, "data": map[string]string{"alert": "thaw"}}),
	}
	var printed []string
	for lines.Scan() {
		printed = append(printed, lines.Text())
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("tether-listen: %v\n%s", err, stderr)
	}
	all := strings.Join(printed, "\n")
	for i, want := range []string{"alert=frost", "alert=thaw"} {
		if !strings.Contains(all, "message "+ids[i]+" from "+f.sender+" collapse_key=- data: "+want) {
			t.Errorf("tether-listen printed:\n%s\nwant message %s with %s", all, ids[i], want)
		}
	}
	// It acked both: nothing is left for the app.
	if out, err := f.agent.ctl("--json", "status"); err != nil || !strings.Contains(out, `"queued_downstream":0`) {
		t.Fatalf("status after tether-listen: %v: %s", err, out)
	}

	// Listening with no count, it ends when the agent goes.
	cmd = exec.Command(listen, "--bus", bus, "--app", app, "--sender", f.sender)
	if stdout, err = cmd.StdoutPipe(); err != nil {
		t.Fatal(err)
	}
	stderr.Reset()
	cmd.Stderr = stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stop.Reset(time.Minute)
	lines = bufio.NewScanner(stdout)
	for lines.Scan() && !strings.HasPrefix(lines.Text(), "listening for ") {
	}
	if lines.Err() != nil || !strings.HasPrefix(lines.Text(), "listening for ") {
		cmd.Wait()
		t.Fatalf("the second tether-listen did not subscribe\n%s", stderr)
	}
	f.agent.p.stop()
	for lines.Scan() {
	}
	err = cmd.Wait()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 || !strings.Contains(stderr.String(), "the agent left the bus") {
		t.Fatalf("tether-listen after the agent stopped: %v\n%s", err, stderr)
	}
}
