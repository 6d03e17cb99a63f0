// SPDX-License-Identifier: Apache-2.0

package cross

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"tether/internal/conftoml"
	"tether/internal/netnstest"
)

// serverNetns is a network namespace of its own with loopback up, so that
// the server can listen on the fixed ports its packaged config and image
// name (8080, 9464) whatever else runs on this machine.
func serverNetns(t *testing.T) *netnstest.Namespace {
	t.Helper()
	ns := netnstest.New(t)
	ns.IP(t, "link", "set", "lo", "up")
	return ns
}

// startInNetns runs argv (a tether-server serve command line, wrapped in
// chroot or setpriv) in ns, waits for its "listening" log line and
// returns the address logged. The server is stopped with SIGTERM when the
// test ends, and must then exit cleanly.
func startInNetns(t *testing.T, ns *netnstest.Namespace, argv ...string) string {
	t.Helper()
	cmd := exec.Command("ip", append([]string{"netns", "exec", ns.Name}, argv...)...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := bufio.NewScanner(stderr)
	var addr, logged string
	for addr == "" && lines.Scan() {
		logged += lines.Text() + "\n"
		if m := regexp.MustCompile(`msg=listening addr=(\S+)`).FindStringSubmatch(lines.Text()); m != nil {
			addr = m[1]
		}
	}
	if addr == "" {
		cmd.Wait()
		t.Fatalf("%q logged no listening line:\n%s", argv, logged)
	}
	go io.Copy(io.Discard, stderr)
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan error, 1)
		go func() { done <- cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("server exited with %v after SIGTERM", err)
			}
		case <-time.After(2 * time.Minute):
			cmd.Process.Kill()
			t.Errorf("server did not stop on SIGTERM")
		}
	})
	return addr
}

// serveArgs returns the serve command line args as the unit or image
// gives it, for a binary whose `serve -h` printed help. A binary that has
// no --config yet gets the flags the config file's keys stand for instead
// (key_name = v as --key-name v), those of them it knows; file is where
// this test finds the config file that --config names.
func serveArgs(t *testing.T, help string, args []string, file string) []string {
	t.Helper()
	i := slices.Index(args, "--config")
	if i < 0 || i+1 >= len(args) || strings.Contains(help, "\n  -config ") {
		return args
	}
	text, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := conftoml.Parse(text)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	out := slices.Clone(args[:i])
	keys := make([]string, 0, len(doc.Root))
	for k := range doc.Root {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		name := strings.ReplaceAll(k, "_", "-")
		if !strings.Contains(help, "\n  -"+name+" ") && !strings.Contains(help, "\n  -"+name+"\n") {
			t.Logf("serve has no --config nor --%s yet: %s's %s left out", name, file, k)
			continue
		}
		values, ok := doc.Root[k].([]any)
		if !ok {
			values = []any{doc.Root[k]}
		}
		for _, v := range values {
			switch v := v.(type) {
			case bool:
				out = append(out, "--"+name+"="+strconv.FormatBool(v))
			default:
				out = append(out, "--"+name, fmt.Sprint(v))
			}
		}
	}
	t.Logf("serve has no --config yet: %s given as flags", file)
	return append(out, args[i+2:]...)
}

// serveHelp is what argv (a tether-server command, wrapped or not) prints
// for serve -h.
func serveHelp(t *testing.T, argv ...string) string {
	t.Helper()
	out, err := exec.Command(argv[0], append(argv[1:], "serve", "-h")...).CombinedOutput()
	if err != nil {
		t.Fatalf("%q serve -h: %v\n%s", argv, err, out)
	}
	return string(out)
}
