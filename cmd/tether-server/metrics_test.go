// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bufio"
	"io"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// TestServeMetricsListen runs tether-server serve with --metrics-listen:
// its metrics parse as Prometheus text on that address, and the public
// listener has none. An address it cannot listen on stops it with an
// error that names the metrics.
func TestServeMetricsListen(t *testing.T) {
	for _, tc := range []struct {
		name    string
		metrics string
		refused string // in the error of a serve that does not start
	}{
		{"loopback", "127.0.0.1:0", ""},
		{"bad address", "127.0.0.1:not-a-port", "listen for metrics"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, stderr := startCommand(t, "serve", "--listen", "127.0.0.1:0", "--data", filepath.Join(t.TempDir(), "data"),
				"--open-enrollment", "--metrics-listen", tc.metrics, "--shutdown-spread", "0")
			if tc.refused != "" {
				out, _ := io.ReadAll(stderr)
				if err := srv.Wait(); err == nil || !strings.Contains(string(out), tc.refused) {
					t.Fatalf("serve with --metrics-listen %s: %v, stderr %s", tc.metrics, err, out)
				}
				return
			}
			lines := bufio.NewScanner(stderr)
			addrs := map[string]string{}
			for len(addrs) < 2 && lines.Scan() {
				if m := regexp.MustCompile(`msg="?(listening|serving metrics)"? addr=(\S+)`).FindStringSubmatch(lines.Text()); m != nil {
					addrs[m[1]] = m[2]
				}
			}
			if len(addrs) < 2 {
				t.Fatalf("listening lines: %v", addrs)
			}
			go io.Copy(io.Discard, stderr)

			resp, err := http.Get("http://" + addrs["serving metrics"] + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			parser := expfmt.NewTextParser(model.UTF8Validation)
			families, err := parser.TextToMetricFamilies(resp.Body)
			resp.Body.Close()
			if err != nil {
				t.Fatalf("metrics do not parse: %v", err)
			}
			for _, name := range []string{"tether_sessions", "tether_sends_total", "tether_store_size_bytes", "go_goroutines", "process_resident_memory_bytes"} {
				if families[name] == nil {
					t.Errorf("no %s in the metrics", name)
				}
			}
			resp, err = http.Get("http://" + addrs["listening"] + "/metrics")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusNotFound {
				t.Errorf("public listener on /metrics: %s, want 404", resp.Status)
			}

			srv.Process.Signal(syscall.SIGTERM)
			if err := srv.Wait(); err != nil {
				t.Errorf("serve exited with %v", err)
			}
		})
	}
}
