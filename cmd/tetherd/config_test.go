// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"tether/agent"
	"tether/store"
)

func writeConfig(t *testing.T, doc string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "agent.toml")
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestConfigFileAndFlags(t *testing.T) {
	pin := base64.StdEncoding.EncodeToString(make([]byte, sha256.Size))
	path := writeConfig(t, `# a device's settings
server = "wss://push.example.com:8443"
ca_file = "/etc/tether/ca.pem"
server_pins = ["sha256//`+pin+`"]
enroll_key_file = "/etc/tether/enroll-key"
cert = "/etc/tether/device.pem"
key = "/etc/tether/device.key"
data_dir = "/data/tether"
dbus = "unix:path=/run/dbus/system_bus_socket"
log_level = "debug"

[socket]
path = "/run/t/t.sock"
mode = 0o660

[heartbeat]
interval = "9m"
min = "45s"
max = "20m"
start = "2m"

[power]
sysfs_root = "/fake/sys"
low_battery = 20

[reconnect]
min_backoff = "2s"
max_backoff = "10m"

[quota]
user_registrations = 5
app_messages = 50
app_bytes = "256KiB"
total_bytes = 1048576

[apps]
"com.example.thermo" = "root"
"com.example.meter" = 1001
`)
	tests := []struct {
		name  string
		flags []string
		want  func(o *options)
	}{
		{"file only", nil, func(o *options) {}},
		{"flags win", []string{"--server", "wss://flag:1", "--socket-mode", "0600", "--heartbeat", "30s", "--dbus", "off",
			"--app", "com.example.x=0", "--app", "com.example.y=7", "--enroll-key", "k", "--app-bytes", "64KiB", "--user-registrations", "7"}, func(o *options) {
			o.quota.AppBytes = 64 << 10
			o.userRegistrations = 7
			o.servers = []string{"wss://flag:1"}
			o.socketMode = 0o600
			o.heartbeat = 30 * time.Second
			o.dbus = "off"
			o.apps = map[string]uint32{"com.example.x": 0, "com.example.y": 7} // replacing the file's
			o.enrollKey, o.enrollKeyFile = "k", ""                             // the flag's key replaces the file's
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := options{
				config:        path,
				servers:       []string{"wss://push.example.com:8443"},
				caFile:        "/etc/tether/ca.pem",
				serverPins:    [][sha256.Size]byte{{}},
				enrollKeyFile: "/etc/tether/enroll-key",
				certFile:      "/etc/tether/device.pem",
				keyFile:       "/etc/tether/device.key",
				data:          "/data/tether",
				socket:        "/run/t/t.sock",
				socketMode:    0o660,
				dbus:          "unix:path=/run/dbus/system_bus_socket",
				heartbeat:     9 * time.Minute,
				policy:        agent.HeartbeatPolicy{Min: 45 * time.Second, Max: 20 * time.Minute, Start: 2 * time.Minute, Growth: 2, Precision: 15 * time.Second},
				sysfsRoot:     "/fake/sys",
				lowBattery:    20,
				minBackoff:    2 * time.Second,
				maxBackoff:    10 * time.Minute,
				apps:          map[string]uint32{"com.example.thermo": 0, "com.example.meter": 1001},
				logLevel:      slog.LevelDebug,

				userRegistrations: 5,
				quota:             store.Quota{AppMessages: 50, AppBytes: 256 << 10, Bytes: 1 << 20},
			}
			tt.want(&want)
			got, err := parseArgs(append([]string{"--config", path}, tt.flags...), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("options\n%+v\nwant\n%+v", got, want)
			}
		})
	}
}

// TestServers: the file's server is a string or a list; --server takes
// several, comma-separated or repeated, and replaces the file's.
func TestServers(t *testing.T) {
	one := writeConfig(t, "server = \"wss://a:8443\"\n")
	two := writeConfig(t, "server = [\"wss://a:8443\", \"wss://b:8443\"]\n")
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"a string", []string{"--config", one}, []string{"wss://a:8443"}},
		{"a list", []string{"--config", two}, []string{"wss://a:8443", "wss://b:8443"}},
		{"a flag replaces the list", []string{"--config", two, "--server", "wss://c"}, []string{"wss://c"}},
		{"comma-separated", []string{"--config", one, "--server", "wss://c, wss://d/tether"}, []string{"wss://c", "wss://d/tether"}},
		{"repeated", []string{"--config", "", "--server", "wss://c,wss://d", "--server", "https://e"}, []string{"wss://c", "wss://d", "https://e"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseArgs(tt.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(o.servers, tt.want) {
				t.Errorf("servers %q, want %q", o.servers, tt.want)
			}
		})
	}

	errs := []struct {
		name string
		args []string
		want string
	}{
		{"bad entry", []string{"--server", "wss://a,ftp://b"}, `invalid value "wss://a,ftp://b" for flag -server: entry 2: server URL "ftp://b": scheme must be ws, wss, http or https`},
		{"bad entry in a later flag", []string{"--server", "wss://a", "--server", "wss://b?x"}, `invalid value "wss://b?x" for flag -server: entry 2: server URL "wss://b?x": no user, query or fragment allowed`},
		{"empty entry", []string{"--server", "wss://a,"}, `entry 2: server URL "": scheme must be`},
		{"pins and a ws:// node", []string{"--server", "wss://a,ws://127.0.0.1:8080", "--server-pin", "sha256//" + strings.Repeat("A", 43) + "="},
			"server pins need wss:// or https:// servers, not ws://127.0.0.1:8080"},
	}
	for _, tt := range errs {
		t.Run(tt.name, func(t *testing.T) {
			var stderr bytes.Buffer
			code := run(context.Background(), append([]string{"config", "check", "--config="}, tt.args...), environ{stdout: io.Discard, stderr: &stderr, getenv: noEnv})
			if code != 2 || !strings.Contains(stderr.String(), tt.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit 2 and %q", code, stderr.String(), tt.want)
			}
		})
	}

	// ws:// off the machine is refused as tetherd starts, for each node.
	t.Run("a ws:// node without --insecure", func(t *testing.T) {
		dir := t.TempDir()
		var stderr bytes.Buffer
		code := run(context.Background(), []string{"run", "--config=", "--server", "wss://a,ws://192.0.2.1:8080", "--dbus", "off",
			"--data", dir, "--socket", filepath.Join(dir, "s.sock")}, environ{stdout: io.Discard, stderr: &stderr, getenv: noEnv})
		if want := `entry 2: server URL \"ws://192.0.2.1:8080\": ws:// would send`; code != 1 || !strings.Contains(stderr.String(), want) {
			t.Errorf("exit %d, stderr:\n%s\nwant exit 1 and %s", code, stderr.String(), want)
		}
	})
}

func TestConfigMissing(t *testing.T) {
	// An explicit file must exist; "" reads none.
	missing := filepath.Join(t.TempDir(), "agent.toml")
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"--config", missing, "--server", "ws://h"}, environ{stdout: io.Discard, stderr: &stderr, getenv: noEnv}); code != 2 ||
		!strings.Contains(stderr.String(), "no such file") {
		t.Errorf("a missing --config: exit %d, %q", code, stderr.String())
	}
	o, err := parseArgs([]string{"--config", "", "--server", "ws://h"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := defaults()
	want.config, want.servers = "", []string{"ws://h"}
	if !reflect.DeepEqual(o, want) {
		t.Errorf("with --config \"\": %+v, want the defaults %+v", o, want)
	}
}

// TestConfigCheckNamesKeyAndLine is what `tetherd config check` says about
// broken files: the file, the line and the key, and what is wrong.
func TestConfigCheckNamesKeyAndLine(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string // lines after "tetherd: FILE:"
	}{
		{"syntax", "server = \"wss://h\n", []string{`1: basic strings cannot have new lines`}},
		{"unknown keys, and a bad value beside them", "server = \"ws://h\"\n[socket]\nmode = \"rwx\"\nmodes = 1\n[power]\nsysfs = \"/x\"\n", []string{
			`4: socket.modes: unknown key`,
			`6: power.sysfs: unknown key`,
			`3: socket.mode: socket mode "rwx": want an octal mode like 0660`,
		}},
		{"type", "server = 3\n", []string{`1: server: want a string or an array of strings, got the integer 3`}},
		{"empty server list", "server = []\n", []string{`1: server: want at least one server URL`}},
		{"server list type", "server = [\"wss://a\", 3]\n", []string{`1: server: want an array of strings, it holds the integer 3`}},
		{"bad URL in a list", "server = [\n  \"wss://a\",\n  \"ftp://h\",\n]\n", []string{`1: server: entry 2: server URL "ftp://h": scheme must be ws, wss, http or https`}},
		{"insecure as a number", "server = \"ws://h\"\ninsecure = 1\n", []string{`2: insecure: want true or false, got the integer 1`}},
		{"table as a value", "server = \"ws://h\"\nsocket = 3\n", []string{`2: socket: want a table`}},
		{"bad URL", "\n\nserver = \"ftp://h\"\n", []string{`3: server: server URL "ftp://h": scheme must be ws, wss, http or https`}},
		{"decimal mode", "server = \"ws://h\"\nsocket.mode = 660\n", []string{`2: socket.mode: socket mode 660: write it as an octal integer (0o660) or a string ("0660")`}},
		{"short heartbeat", "server = \"ws://h\"\n[heartbeat]\ninterval = \"10ms\"\n", []string{`3: heartbeat.interval: heartbeat 10ms: must be at least 1s`}},
		{"bad bus", "server = \"ws://h\"\ndbus = \"unix:path\"\n", []string{`2: dbus: dbus "unix:path": want system, session, off or a bus address: "path" is not key=value`}},
		{"bad pin", "server = \"wss://h\"\nserver_pins = [\"sha256//abc\"]\n", []string{`2: server_pins: pin "sha256//abc": want sha256// followed by the base64 SHA-256 of a certificate's public key`}},
		{"inline table", "server = \"ws://h\"\nsocket = { mode = \"0640\", path = 5 }\n", []string{`2: socket.path: want a string, got the integer 5`}},
		{"apps", "server = \"ws://h\"\n[apps]\n\"com.example.thermo\" = \"no-such-user-here\"\n\"a.b\" = -3\nc = true\n", []string{
			`3: apps."com.example.thermo": owner "no-such-user-here": user: unknown user no-such-user-here`,
			`4: apps."a.b": uid -3 out of range`,
			`5: apps.c: want a user name or a uid, got true`,
		}},
		{"app ID", "server = \"ws://h\"\napps.\"a b\" = 0\n", []string{`2: apps."a b": app ID "a b" has a space or control character`}},
		{"bad level", "server = \"ws://h\"\nlog_level = \"loud\"\n", []string{`2: log_level: log level "loud": want debug, info, warn or error`}},
		{"quotas", "server = \"ws://h\"\n[quota]\nuser_registrations = 0\napp_messages = \"5\"\napp_bytes = \"1GB\"\ntotal_bytes = -1\n", []string{
			`3: quota.user_registrations: user registrations "0": want a whole number of at least 1`,
			`4: quota.app_messages: want a number, got the string "5"`,
			`5: quota.app_bytes: app bytes "1GB": want a size in bytes such as 524288, 512KiB or 2MiB`,
			`6: quota.total_bytes: total bytes "-1": want a size in bytes such as 524288, 512KiB or 2MiB`,
		}},
		{"certificate path", "server = \"wss://h\"\ncert = 1\nkey = \"\"\n", []string{
			`2: cert: want a string, got the integer 1`,
			`3: key: empty path`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, tt.doc)
			var stdout, stderr bytes.Buffer
			code := run(context.Background(), []string{"config", "check", "--config", path}, environ{stdout: &stdout, stderr: &stderr, getenv: noEnv})
			if code != 2 {
				t.Errorf("exit %d, want 2", code)
			}
			var want []string
			for _, w := range tt.want {
				want = append(want, "tetherd: "+path+":"+w)
			}
			// Map order decides the order of app errors.
			got := strings.Split(strings.TrimSpace(stderr.String()), "\n")
			if !sameSet(got, want) {
				t.Errorf("stderr:\n%s\nwant:\n%s", stderr.String(), strings.Join(want, "\n"))
			}
		})
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, s := range a {
		seen[s]++
	}
	for _, s := range b {
		if seen[s] == 0 {
			return false
		}
		seen[s]--
	}
	return true
}

func TestConfigCheckAccepts(t *testing.T) {
	dir := t.TempDir()
	key := filepath.Join(dir, "enroll-key")
	if err := os.WriteFile(key, []byte("k\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := writeConfig(t, "server = \"ws://h\"\nenroll_key_file = \""+key+"\"\n")
	var stdout, stderr bytes.Buffer
	if code := run(context.Background(), []string{"config", "check", "--config", path}, environ{stdout: &stdout, stderr: &stderr, getenv: noEnv}); code != 0 {
		t.Fatalf("exit %d: %s", code, stderr.String())
	}
	if got := stdout.String(); got != path+": valid\n" {
		t.Errorf("stdout %q", got)
	}

	// What the file points to is read too.
	os.Remove(key)
	stderr.Reset()
	if code := run(context.Background(), []string{"config", "check", "--config", path}, environ{stdout: io.Discard, stderr: &stderr, getenv: noEnv}); code != 2 ||
		!strings.Contains(stderr.String(), "read enrollment key") {
		t.Errorf("a missing enrollment key file: exit %d, %q", code, stderr.String())
	}
}

// TestShippedConfigs checks the default config files the packages
// install: they are valid, the values they show commented out are the
// defaults, and the OpenWrt one keeps the store off the tmpfs.
func TestShippedConfigs(t *testing.T) {
	doc, err := os.ReadFile("../../packaging/config/agent.toml")
	if err != nil {
		t.Fatal(err)
	}
	shown := map[string]bool{"data_dir": true, "log_level": true, "dbus": true, "path": true, "mode": true, "min": true, "max": true, "start": true,
		"sysfs_root": true, "low_battery": true, "min_backoff": true, "max_backoff": true,
		"user_registrations": true, "app_messages": true, "app_bytes": true, "total_bytes": true}
	var uncommented []string
	for _, line := range strings.Split(string(doc), "\n") {
		if key, _, ok := strings.Cut(strings.TrimPrefix(line, "#"), " = "); ok && shown[key] {
			line = strings.TrimPrefix(line, "#")
		}
		uncommented = append(uncommented, line)
	}
	for name, doc := range map[string]string{"as shipped": string(doc), "uncommented": strings.Join(uncommented, "\n")} {
		o, err := parseArgs([]string{"--config", writeConfig(t, doc), "--server", "wss://push.example.com"}, io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := defaults()
		want.config, want.servers = o.config, []string{"wss://push.example.com"}
		if !reflect.DeepEqual(o, want) {
			t.Errorf("%s: %+v, want the defaults %+v", name, o, want)
		}
	}

	o, err := parseArgs([]string{"--config", "../../packaging/openwrt/agent.toml", "--server", "wss://push.example.com"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if o.data != "/etc/tether/data" || o.socket != "/var/run/tether/tetherd.sock" {
		t.Errorf("OpenWrt settings: data %s, socket %s", o.data, o.socket)
	}
}

func FuzzConfig(f *testing.F) {
	f.Add("server = \"ws://h\"\n[socket]\nmode = \"0660\"\n[apps]\n\"a.b\" = 0\n")
	f.Add("socket = { mode = 0o640, path = 5 }\n[[x]]\ny = 1\n")
	f.Add("a.b.c = [1, {d = 2}]\n")
	f.Add("proxy = \"http://u:p%40@proxy:3128\"\nno_proxy = \"10.0.0.0/8,.lan\"\n")
	f.Add("proxy = \"direct\"\nno_proxy = 3\n")
	f.Add("cert = \"/c.pem\"\nkey = \"/k.pem\"\n[quota]\napp_bytes = \"512KiB\"\ntotal_bytes = 9007199254740993\nuser_registrations = 1\n")
	f.Fuzz(func(t *testing.T, doc string) {
		o := defaults()
		err := applyConfig(&o, "agent.toml", []byte(doc))
		if err != nil && !strings.HasPrefix(err.Error(), "agent.toml:") {
			t.Errorf("error %q does not start with the file", err)
		}
	})
}

// A size is a number of bytes, bare or in KiB or MiB, of at least one
// byte; whatever it is written as, the bytes it sets read back the same.
func FuzzSize(f *testing.F) {
	for _, s := range []string{"1", "512KiB", "2MiB", "0", "-1KiB", "9223372036854775807", "8796093022208MiB", "KiB", " 1", "1kib"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var n int64
		if err := setSize(&n, "size")(s); err != nil {
			return
		}
		var again int64
		if n < 1 || setSize(&again, "size")(strconv.FormatInt(n, 10)) != nil || again != n {
			t.Errorf("%q set %d, which does not read back", s, n)
		}
	})
}
