// SPDX-License-Identifier: Apache-2.0

package main

import (
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"tether/internal/conftoml"
	"tether/internal/testpki"
)

// writeConfig writes doc as a config file and returns its path.
func writeConfig(t testing.TB, doc string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "server.toml")
	if err := os.WriteFile(path, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// TestConfigFile reads serve's settings from a config file and flags:
// every flag is a key, flags win, and what is wrong is named with its
// key and line.
func TestConfigFile(t *testing.T) {
	for _, tt := range []struct {
		name  string
		doc   string
		args  []string
		mode  os.FileMode // of the file, 0600 unless set
		check func(t *testing.T, st settings)
		err   string // a part of the error, when one is wanted
	}{
		{
			name: "every kind of value",
			doc: `# a comment
data = "/var/lib/tether-server"
listen = "0.0.0.0:8443"
open_enrollment = true
device_rate_limit = 100
battery_max_delay = "5m"
trusted_proxy = ["10.0.0.0/8", "192.0.2.7"]
log_level = "debug"
log_format = "json"
`,
			check: func(t *testing.T, st settings) {
				c := st.cfg
				if c.DataDir != "/var/lib/tether-server" || c.Listen != "0.0.0.0:8443" || !c.OpenEnrollment || c.DeviceRateLimit != 100 ||
					c.BatteryMaxDelay != 5*time.Minute || st.logFormat != "json" || st.level.String() != "DEBUG" {
					t.Errorf("settings %+v", st)
				}
				want := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("192.0.2.7/32")}
				if !slices.Equal(c.TrustedProxies, want) {
					t.Errorf("trusted proxies %v, want %v", c.TrustedProxies, want)
				}
			},
		},
		{
			name: "flags win",
			doc:  "data = \"/from/file\"\ndevice_rate_limit = 100\ntrusted_proxy = \"10.0.0.0/8\"\nopen_enrollment = true\n",
			args: []string{"--data", "/from/flag", "--trusted-proxy", "172.16.0.0/12", "--open-enrollment=false"},
			check: func(t *testing.T, st settings) {
				c := st.cfg
				if c.DataDir != "/from/flag" || c.DeviceRateLimit != 100 || c.OpenEnrollment ||
					!slices.Equal(c.TrustedProxies, []netip.Prefix{netip.MustParsePrefix("172.16.0.0/12")}) {
					t.Errorf("config %+v", c)
				}
			},
		},
		{name: "unknown key", doc: "data = \"/d\"\n\nbogus = 1\n", err: "server.toml:3: bogus: unknown key"},
		{name: "config is no key", doc: "data = \"/d\"\nconfig = \"/etc/x\"\n", err: ":2: config: unknown key"},
		{name: "dashes are not keys", doc: "data = \"/d\"\nlog-level = \"info\"\n", err: ":2: log-level: unknown key"},
		{name: "tables are not used", doc: "data = \"/d\"\n[nats]\nurls = \"nats://a\"\n", err: ":2: nats: want a string, got a table"},
		{name: "integer as string", doc: "data = \"/d\"\ndevice_rate_limit = \"100\"\n", err: `:2: device_rate_limit: want an integer, got the string "100"`},
		{name: "duration as integer", doc: "data = \"/d\"\nstore_retry_after = 30\n", err: ":2: store_retry_after: want a duration"},
		{name: "bad duration", doc: "data = \"/d\"\nstore_retry_after = \"soon\"\n", err: `:2: store_retry_after: "soon"`},
		{name: "secret not shown", doc: "data = \"/d\"\nenroll_key = 1234567890123456789\n", err: ":2: enroll_key: want a string, got another type"},
		{name: "secret others may read", doc: "data = \"/d\"\nenroll_key = \"enrol-key-of-the-config-file-test\"\n", mode: 0o640,
			err: ":2: enroll_key: the file has mode 0640, which lets others read the secret"},
		{name: "secret kept private", doc: "data = \"/d\"\nenroll_key = \"enrol-key-of-the-config-file-test\"\n",
			check: func(t *testing.T, st settings) {
				if st.cfg.EnrollKey != "enrol-key-of-the-config-file-test" {
					t.Errorf("enroll key %q", st.cfg.EnrollKey)
				}
			}},
		{name: "bool as string", doc: "data = \"/d\"\nopen_enrollment = \"yes\"\n", err: ":2: open_enrollment: want true or false"},
		{name: "bad proxy", doc: "data = \"/d\"\ntrusted_proxy = [\"10.0.0.0/33\"]\n", err: ":2: trusted_proxy:"},
		{name: "proxies of numbers", doc: "data = \"/d\"\ntrusted_proxy = [10]\n", err: ":2: trusted_proxy: want a string or an array of strings"},
		{name: "out of range", doc: "data = \"/d\"\n\nsessions_per_ip = -1\n", err: "server.toml:3: sessions_per_ip cannot be negative"},
		{name: "bad log level", doc: "data = \"/d\"\nlog_level = \"loud\"\n", err: `server.toml:2: log_level "loud"`},
		{name: "bad log format", doc: "data = \"/d\"\nlog_format = \"xml\"\n", err: `server.toml:2: log_format "xml": want text or json`},
		{name: "range error of a flag", doc: "data = \"/d\"\nsessions_per_ip = 5\n", args: []string{"--sessions-per-ip", "-1"}, err: "--sessions-per-ip cannot be negative"},
		{name: "syntax", doc: "data = \"/d\"\nlisten = \n", err: "server.toml:2: expected a value"},
		{name: "no data", doc: "listen = \":8080\"\n", err: "--data is required"},
		{name: "all errors at once", doc: "a = 1\nb = 2\n", err: ":1: a: unknown key\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.doc)
			if tt.mode != 0 {
				os.Chmod(path, tt.mode)
			}
			st, err := loadSettings(append([]string{"--config", path}, tt.args...), "", io.Discard)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) || !errors.Is(err, errUsage) {
					t.Fatalf("error %v, want a usage error with %q", err, tt.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, st)
		})
	}
}

// TestConfigKeysAreFlags: every serve flag but --config is a key of the
// file, so that one added to serve is a setting of the file too.
func TestConfigKeysAreFlags(t *testing.T) {
	st, err := loadSettings([]string{"--data", "/d"}, "", io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	for name := range st.values {
		if name == "config" {
			continue
		}
		// The empty string is refused by a flag that wants a number or a
		// boolean, but never as an unknown key.
		_, err := loadSettings([]string{"--config", writeConfig(t, configKey(name)+" = \"\"\n"), "--data", "/d"}, "", io.Discard)
		var ke *conftoml.KeyError
		if errors.As(err, &ke) && strings.Contains(ke.Error(), "unknown key") {
			t.Errorf("%s: %v", name, err)
		}
	}
}

func TestConfigCheck(t *testing.T) {
	good := writeConfig(t, "data = \"/var/lib/tether-server\"\nlisten = \"0.0.0.0:8443\"\n")
	bad := writeConfig(t, "data = \"/d\"\nlisten = 8443\n")
	pki, err := testpki.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	withCert := writeConfig(t, fmt.Sprintf("data = \"/d\"\ntls_cert = %q\ntls_key = %q\n", pki.Cert, pki.Key))
	wrongKey := writeConfig(t, fmt.Sprintf("data = \"/d\"\ntls_cert = %q\ntls_key = %q\n", pki.Cert, pki.CA))
	for _, tt := range []struct {
		args           []string
		code           int
		stdout, stderr string
	}{
		{[]string{"config", "check", "--config", good}, 0, good + ": valid\n", ""},
		{[]string{"config", "check", "--config", good, "--device-rate-limit", "5"}, 0, good + ": valid\n", ""},
		{[]string{"config", "check", "--config", good, "--device-rate-limit", "-5"}, 2, "", "--device-rate-limit cannot be negative"},
		{[]string{"config", "check", "--config", bad}, 2, "", bad + ":2: listen: want a string, got the integer 8443"},
		{[]string{"config", "check", "--config", withCert}, 0, withCert + ": valid\n", ""},
		{[]string{"config", "check", "--config", "", "--data", "/d"}, 0, "no config file; the flags are valid\n", ""},
		{[]string{"config", "check", "--config", ""}, 2, "", "--data is required"},
		{[]string{"config", "check", "--config", wrongKey}, 2, "", wrongKey + ":2: tls_cert and " + wrongKey + ":3: tls_key: "},
		{[]string{"config", "check", "--config", filepath.Join(t.TempDir(), "none.toml")}, 2, "", "no such file"},
	} {
		code, stdout, stderr := runCmd(t, tt.args...)
		if code != tt.code || stdout != tt.stdout || !strings.Contains(stderr, tt.stderr) {
			t.Errorf("%q: exit %d, stdout %q, stderr %q; want %d, %q, %q", tt.args, code, stdout, stderr, tt.code, tt.stdout, tt.stderr)
		}
	}
}

// FuzzConfigFile: whatever the file holds, reading it ends in settings
// or in an error, never a panic, and errors in the file are usage errors.
func FuzzConfigFile(f *testing.F) {
	for _, seed := range []string{
		"data = \"/d\"\nlisten = \":8443\"\n",
		"data = \"/d\"\ntrusted_proxy = [\"10.0.0.0/8\", \"::1\"]\nopen_enrollment = true\n",
		"device_rate_limit = 0x10\nbattery_max_delay = \"1h\"\n",
		"[t]\nx = 1\n",
		"data = { a = 1 }\n",
		"log_format = \"json\"\nlog_level = 'warn'\n",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, doc string) {
		path := writeConfig(t, doc)
		_, err := loadSettings([]string{"--config", path}, "", io.Discard)
		var ke *conftoml.KeyError
		if errors.As(err, &ke) && !errors.Is(err, errUsage) {
			t.Errorf("a bad file is no usage error: %v", err)
		}
	})
}
