package e2e

import (
	"bufio"
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
// each, so that none is left queued.
func TestCExample(t *testing.T) {
	out := t.TempDir()
	build, err := exec.Command("make", "--no-print-directory", "-C", "../examples/c", "OUT="+out).CombinedOutput()
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
}
