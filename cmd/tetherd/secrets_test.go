// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"tether/internal/testpki"
)

// writeFile writes a file of mode mode (whatever the umask) in dir.
func writeFile(t *testing.T, dir, name, content string, mode os.FileMode) string {
	t.Helper()
	path := filepath.Join(dir, name)
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil {
		t.Fatal(err)
	}
	return path
}

// A file of secrets (the enrollment key, the client certificate's key)
// that its group or others may read is refused, by config check and by
// run alike, with the file, its mode and the fix; the files are read as
// they are named, and a broken one is named.
func TestSecretFilesAndClientCertificate(t *testing.T) {
	dir := t.TempDir()
	cert, key, err := testpki.WriteClient(dir, "device")
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, err := testpki.WriteClient(t.TempDir(), "other")
	if err != nil {
		t.Fatal(err)
	}
	enroll := writeFile(t, dir, "enroll-key", "fleet-key\n", 0o600)
	readable := writeFile(t, dir, "enroll-key-644", "fleet-key\n", 0o644)
	groupReadable := writeFile(t, dir, "enroll-key-640", "fleet-key\n", 0o640)
	keyReadable := writeFile(t, dir, "device-644.key", readFile(t, key), 0o644)
	garbage := writeFile(t, dir, "garbage.pem", "not a certificate", 0o644)
	missing := filepath.Join(dir, "missing.pem")

	tests := []struct {
		name string
		args []string
		want string // empty: valid
	}{
		{"private enrollment key", []string{"--server", "ws://h", "--enroll-key-file", enroll}, ""},
		{"enrollment key others read", []string{"--server", "ws://h", "--enroll-key-file", readable},
			"enrollment key file " + readable + " has mode 0644, which gives its group or others access: make it the owner's alone with chmod 600 " + readable},
		{"enrollment key its group reads", []string{"--server", "ws://h", "--enroll-key-file", groupReadable}, "has mode 0640"},
		{"client certificate", []string{"--server", "wss://h", "--cert", cert, "--key", key}, ""},
		{"client key others read", []string{"--server", "wss://h", "--cert", cert, "--key", keyReadable},
			"client key file " + keyReadable + " has mode 0644, which gives its group or others access: make it the owner's alone with chmod 600 " + keyReadable},
		{"certificate without key", []string{"--server", "wss://h", "--cert", cert}, "a client certificate needs both cert and key (--cert and --key)"},
		{"key without certificate", []string{"--server", "wss://h", "--key", key}, "a client certificate needs both cert and key"},
		{"certificate over ws://", []string{"--server", "ws://h", "--cert", cert, "--key", key}, "a client certificate needs wss:// or https:// servers, not ws://h"},
		{"missing certificate", []string{"--server", "wss://h", "--cert", missing, "--key", key}, "read client certificate " + missing + " and key " + key + ": open " + missing},
		{"certificate that is not one", []string{"--server", "wss://h", "--cert", garbage, "--key", key}, "read client certificate " + garbage},
		{"another certificate's key", []string{"--server", "wss://h", "--cert", cert, "--key", otherKey}, "private key does not match public key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--config=", "--data", t.TempDir(), "--socket", filepath.Join(t.TempDir(), "s")}, tt.args...)
			cmds := [][]string{{"config", "check"}}
			if tt.want != "" {
				cmds = append(cmds, []string{"run"}) // refused before it starts anything
			}
			for _, cmd := range cmds {
				var stdout, stderr bytes.Buffer
				code := run(context.Background(), append(cmd, args...), environ{stdout: &stdout, stderr: &stderr, getenv: noEnv})
				switch {
				case tt.want == "" && code != 0:
					t.Errorf("%s: exit %d: %s", cmd[0], code, stderr.String())
				case tt.want != "" && (code != 2 || !strings.Contains(stderr.String(), tt.want)):
					t.Errorf("%s: exit %d, %q; want 2 and %q", cmd[0], code, stderr.String(), tt.want)
				}
			}
		})
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The client certificate is read at each handshake, so that one renewed
// on disk is presented from the next connection on.
func TestClientCertificateRenewed(t *testing.T) {
	presented := make(chan string, 4)
	ln, files, _ := tlsServer(t, tls.RequireAnyClientCert, func(c *tls.Conn) {
		if c.Handshake() == nil {
			presented <- c.ConnectionState().PeerCertificates[0].Subject.CommonName
		}
	})

	dir := t.TempDir()
	certFile, keyFile, err := testpki.WriteClient(dir, "device")
	if err != nil {
		t.Fatal(err)
	}
	cfg := clientConfig(t, "--ca-file", files.CA, "--cert", certFile, "--key", keyFile)
	dial := func() string {
		t.Helper()
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		// TLS 1.3 sends the client certificate after the client's
		// handshake ends: a write makes sure the server has it.
		c.Write([]byte("x"))
		return <-presented
	}
	if cn := dial(); cn != "device" {
		t.Fatalf("presented %q", cn)
	}
	renewed, renewedKey, err := testpki.WriteClient(t.TempDir(), "device-renewed")
	if err != nil {
		t.Fatal(err)
	}
	for from, to := range map[string]string{renewed: certFile, renewedKey: keyFile} {
		if err := os.Rename(from, to); err != nil {
			t.Fatal(err)
		}
	}
	if cn := dial(); cn != "device-renewed" {
		t.Fatalf("after renewal presented %q", cn)
	}
}
