// SPDX-License-Identifier: Apache-2.0

package main

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net/url"
	"os"
	"os/user"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"tether/agent"
	"tether/internal/conftoml"
	"tether/internal/proxyenv"
	"tether/ipc/socketdoor"
	"tether/store"
)

// defaultConfig is the file tetherd reads when --config does not name one.
// It may be missing: then the defaults and the flags are the whole
// configuration.
const defaultConfig = "/etc/tether/agent.toml"

// options are tetherd's settings: the defaults, then the config file, then
// the flags.
type options struct {
	// config is the file the settings were read from.
	config string
	// clockOffset is the TETHER_CLOCK_OFFSET test knob (package clockknob).
	clockOffset time.Duration
	// servers are the connection server's nodes, in the order given.
	servers    []string
	caFile     string
	insecure   bool
	serverPins [][sha256.Size]byte
	enrollKey  string
	// enrollKeyFile holds the enrollment key, kept out of ps.
	enrollKeyFile string
	// certFile and keyFile are the client certificate and its private
	// key, presented on wss:// connections.
	certFile, keyFile string
	data              string
	socket            string
	socketMode        os.FileMode
	// proxyURL is the proxy setting, a URL or proxyDirect, winning over
	// HTTPS_PROXY and HTTP_PROXY; "" leaves them the say.
	proxyURL string
	// proxyPasswordInFile is set when the config file's proxy URL holds
	// a password, which makes the file one of secrets.
	proxyPasswordInFile bool
	// noProxy, when set, wins over NO_PROXY.
	noProxy *string
	// proxyRules are the proxy settings in force, from proxyURL, noProxy
	// and the environment (resolveProxy), and proxy applies them.
	proxyRules proxyenv.Config
	proxy      func(*url.URL) *url.URL
	// dbus is the bus the D-Bus door joins: "system", "session", a bus
	// address, or "off".
	dbus string
	// heartbeat, when set, fixes the ping interval; zero makes it adaptive
	// within policy.
	heartbeat time.Duration
	policy    agent.HeartbeatPolicy
	// sysfsRoot is where the power watcher reads the batteries' state.
	sysfsRoot string
	// lowBattery is the capacity, in percent, at or under which the
	// battery counts as low.
	lowBattery             int
	minBackoff, maxBackoff time.Duration
	// apps binds app IDs to the Unix user allowed to register them.
	apps map[string]uint32
	// userRegistrations bounds the registrations of one Unix user.
	userRegistrations int
	// quota bounds the downstream messages held for apps.
	quota    store.Quota
	logLevel slog.Level
}

func defaults() options {
	return options{
		config:     defaultConfig,
		data:       "/var/lib/tether",
		socket:     "/run/tether/tetherd.sock",
		socketMode: socketdoor.DefaultMode,
		dbus:       "system",
		policy:     agent.DefaultHeartbeatPolicy,
		sysfsRoot:  "/sys",
		lowBattery: 15,
		minBackoff: agent.DefaultMinBackoff,
		maxBackoff: agent.DefaultMaxBackoff,
		logLevel:   slog.LevelInfo,

		userRegistrations: agent.DefaultUserRegistrations,
		quota:             agent.DefaultQuota,
	}
}

// The setters below check one setting as a flag or the config file gives
// it; their errors say what is wrong with the value, and the caller says
// where it came from.

// setServers checks the servers' URLs, naming a bad one by its position;
// whether ws:// may leave the machine is agent.New's to say, once
// --insecure is known.
func (o *options) setServers(list []string) error {
	if _, err := agent.Endpoints(list, true); err != nil {
		return err
	}
	o.servers = list
	return nil
}

// addServers reads --server URL[,URL...], adding to the servers of earlier
// --server flags.
func (o *options) addServers(s string) error {
	list := strings.Split(s, ",")
	for i := range list {
		list[i] = strings.TrimSpace(list[i])
	}
	return o.setServers(append(o.servers, list...))
}

// applyServers takes the file's server as a string or an array of them.
func applyServers(o *options, v any) error {
	switch v := v.(type) {
	case string:
		return o.setServers([]string{v})
	case []any:
		if len(v) == 0 {
			return errors.New("want at least one server URL")
		}
		list := make([]string, len(v))
		for i, e := range v {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("want an array of strings, it holds %s", conftoml.TypeName(e))
			}
			list[i] = s
		}
		return o.setServers(list)
	}
	return fmt.Errorf("want a string or an array of strings, got %s", conftoml.TypeName(v))
}

func setPath(dst *string) func(string) error {
	return func(s string) error {
		if s == "" {
			return errors.New("empty path")
		}
		*dst = s
		return nil
	}
}

// pinPrefix starts a server pin, as curl's --pinnedpubkey writes it.
const pinPrefix = "sha256//"

func (o *options) addServerPin(s string) error {
	b64, ok := strings.CutPrefix(s, pinPrefix)
	sum, err := base64.StdEncoding.DecodeString(b64)
	if !ok || err != nil || len(sum) != sha256.Size {
		return fmt.Errorf("pin %q: want %s followed by the base64 SHA-256 of a certificate's public key", s, pinPrefix)
	}
	o.serverPins = append(o.serverPins, [sha256.Size]byte(sum))
	return nil
}

// proxyDirect is the proxy setting that connects directly, whatever the
// environment says.
const proxyDirect = "direct"

func (o *options) setProxy(s string) error {
	if s != proxyDirect {
		if s == "" {
			return fmt.Errorf("empty proxy: want an http:// URL, or %q for none", proxyDirect)
		}
		if _, err := proxyenv.ParseURL(s); err != nil {
			return err
		}
	}
	o.proxyURL, o.proxyPasswordInFile = s, false
	return nil
}

func (o *options) setNoProxy(s string) error {
	o.noProxy = &s
	return nil
}

// resolveProxy sets the proxy rules from the settings and, for what they
// leave unsaid, the environment's variables, which it checks.
func (o *options) resolveProxy(getenv func(string) string) error {
	rules := proxyenv.FromEnvironment(getenv)
	switch o.proxyURL {
	case "":
	case proxyDirect:
		rules.HTTPProxy, rules.HTTPSProxy = "", ""
	default:
		rules.HTTPProxy, rules.HTTPSProxy = o.proxyURL, o.proxyURL
	}
	if o.noProxy != nil {
		rules.NoProxy = *o.noProxy
	}
	f, err := rules.Func()
	if err != nil {
		// The setting was checked as it was read: the environment's is
		// at fault.
		return fmt.Errorf("the environment's HTTPS_PROXY or HTTP_PROXY (proxy = %q in the config file ignores them): %w", proxyDirect, err)
	}
	o.proxyRules, o.proxy = rules, f
	return nil
}

func (o *options) setSocketMode(s string) error {
	m, err := strconv.ParseUint(s, 8, 32)
	if err != nil || m > 0o777 {
		return fmt.Errorf("socket mode %q: want an octal mode like 0660", s)
	}
	o.socketMode = os.FileMode(m)
	return nil
}

func (o *options) setDBus(s string) error {
	switch s {
	case "system", "session", "off":
	default:
		if err := checkBusAddress(s); err != nil {
			return fmt.Errorf("dbus %q: want system, session, off or a bus address: %w", s, err)
		}
	}
	o.dbus = s
	return nil
}

// checkBusAddress checks the form of a D-Bus server address (the D-Bus
// specification, "Server Addresses"): transport:key=value,... with
// alternatives separated by semicolons.
func checkBusAddress(s string) error {
	for alt := range strings.SplitSeq(s, ";") {
		transport, params, ok := strings.Cut(alt, ":")
		if !ok || transport == "" {
			return fmt.Errorf("%q has no transport", alt)
		}
		if params == "" {
			continue
		}
		for kv := range strings.SplitSeq(params, ",") {
			if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
				return fmt.Errorf("%q is not key=value", kv)
			}
		}
	}
	return nil
}

func (o *options) setHeartbeat(s string) error { return setDuration(&o.heartbeat, "heartbeat")(s) }

// setDuration sets a duration of at least a second.
func setDuration(dst *time.Duration, name string) func(string) error {
	return func(s string) error {
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%s %q: want a duration like 4m or 90s", name, s)
		}
		if d < time.Second {
			return fmt.Errorf("%s %s: must be at least 1s", name, d)
		}
		*dst = d
		return nil
	}
}

func (o *options) setLowBattery(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 100 {
		return fmt.Errorf("low battery %q: want a percentage from 0 to 100", s)
	}
	o.lowBattery = n
	return nil
}

// setCount sets a count of at least 1.
func setCount(dst *int, name string) func(string) error {
	return func(s string) error {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			return fmt.Errorf("%s %q: want a whole number of at least 1", name, s)
		}
		*dst = n
		return nil
	}
}

// setSize sets a number of bytes, written as a number or with KiB or MiB.
func setSize(dst *int64, name string) func(string) error {
	return func(s string) error {
		unit, digits := int64(1), s
		for suffix, n := range map[string]int64{"KiB": 1 << 10, "MiB": 1 << 20} {
			if d, ok := strings.CutSuffix(s, suffix); ok {
				unit, digits = n, d
			}
		}
		n, err := strconv.ParseInt(digits, 10, 64)
		if err != nil || n < 1 || n > math.MaxInt64/unit {
			return fmt.Errorf("%s %q: want a size in bytes such as 524288, 512KiB or 2MiB", name, s)
		}
		*dst = n * unit
		return nil
	}
}

func (o *options) setLogLevel(s string) error {
	var l slog.Level
	if err := l.UnmarshalText([]byte(s)); err != nil {
		return fmt.Errorf("log level %q: want debug, info, warn or error", s)
	}
	o.logLevel = l
	return nil
}

// bindApp binds app to owner, a user name or a numeric uid.
func (o *options) bindApp(app, owner string) error {
	switch {
	case app == "":
		return errors.New("empty app ID")
	case strings.IndexFunc(app, func(r rune) bool { return unicode.IsSpace(r) || unicode.IsControl(r) }) >= 0:
		return fmt.Errorf("app ID %q has a space or control character", app)
	}
	var uid uint32
	if n, err := strconv.ParseUint(owner, 10, 32); err == nil {
		uid = uint32(n)
	} else {
		u, err := user.Lookup(owner)
		if err != nil {
			return fmt.Errorf("owner %q: %w", owner, err)
		}
		n, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			return fmt.Errorf("owner %q has uid %q", owner, u.Uid)
		}
		uid = uint32(n)
	}
	if o.apps == nil {
		o.apps = map[string]uint32{}
	}
	o.apps[app] = uid
	return nil
}

// bindAppFlag reads --app APP=OWNER.
func (o *options) bindAppFlag(s string) error {
	app, owner, ok := strings.Cut(s, "=")
	if !ok || owner == "" {
		return fmt.Errorf("%q: want APP=USER or APP=UID", s)
	}
	return o.bindApp(app, owner)
}

// check reports what is missing or contradicts once every source is read.
func (o *options) check() error {
	plain := slices.IndexFunc(o.servers, func(s string) bool { return !strings.HasPrefix(s, "wss:") && !strings.HasPrefix(s, "https:") })
	switch {
	case len(o.servers) == 0 && o.config == "":
		return errors.New("no server: give --server")
	case len(o.servers) == 0:
		return fmt.Errorf("no server: set server in %s or give --server", o.config)
	case o.enrollKey != "" && o.enrollKeyFile != "":
		return errors.New("give --enroll-key or --enroll-key-file, not both")
	case len(o.serverPins) > 0 && plain >= 0:
		return fmt.Errorf("server pins need wss:// or https:// servers, not %s", o.servers[plain])
	case (o.certFile == "") != (o.keyFile == ""):
		return errors.New("a client certificate needs both cert and key (--cert and --key)")
	case o.certFile != "" && plain >= 0:
		return fmt.Errorf("a client certificate needs wss:// or https:// servers, not %s, where it would never be presented", o.servers[plain])
	case o.maxBackoff < o.minBackoff:
		return fmt.Errorf("reconnect.max_backoff %s is under reconnect.min_backoff %s", o.maxBackoff, o.minBackoff)
	}
	if o.heartbeat == 0 {
		if err := o.policy.Check(); err != nil {
			return fmt.Errorf("adaptive heartbeat: %w", err)
		}
	}
	if err := o.quota.Check(); err != nil {
		return fmt.Errorf("quota.app_bytes and quota.total_bytes: %w", err)
	}
	return nil
}

// listFlag is a repeatable flag whose values replace, rather than extend,
// what the config file gave.
type listFlag struct {
	reset   func()
	add     func(string) error
	started bool
}

func (l *listFlag) String() string { return "" }

func (l *listFlag) Set(s string) error {
	if !l.started {
		l.reset()
		l.started = true
	}
	return l.add(s)
}

// daemonFlags are the flags of `tetherd run`, writing into o.
func daemonFlags(o *options, out io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tetherd", flag.ContinueOnError)
	fs.SetOutput(out)
	fs.Usage = func() {
		fmt.Fprintf(out, "usage: tetherd [run] [flags]\n\nSettings come from --config, then these flags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.config, "config", defaultConfig, "settings `file` (TOML, docs/config.md); if the default is missing, or with \"\", the defaults apply")
	fs.Var(&listFlag{reset: func() { o.servers = nil }, add: o.addServers}, "server",
		"connection server `URL` (ws://, wss://, http:// or https://); several, comma-separated or repeated, are nodes of one server")
	fs.Func("ca-file", "PEM `file` of the CA certificates to trust for wss:// (default: the system's)", setPath(&o.caFile))
	fs.BoolVar(&o.insecure, "insecure", o.insecure, "allow a ws:// server that is not on loopback: the device secret and every message cross the network in the clear")
	fs.Var(&listFlag{reset: func() { o.serverPins = nil }, add: o.addServerPin}, "server-pin",
		"accept only a server whose certificate chain holds this public key, as `sha256//BASE64` (repeatable)")
	fs.Func("enroll-key", "enrollment `key` for the first check-in, if the server requires one", func(s string) error {
		o.enrollKey, o.enrollKeyFile = s, ""
		return nil
	})
	fs.Func("enroll-key-file", "`file` holding the enrollment key (keeps it out of ps); mode 0600", func(s string) error {
		o.enrollKey = ""
		return setPath(&o.enrollKeyFile)(s)
	})
	fs.Func("cert", "PEM `file` of the client certificate to present on wss:// connections (with --key)", setPath(&o.certFile))
	fs.Func("key", "PEM `file` of the client certificate's private key; mode 0600", setPath(&o.keyFile))
	fs.Func("proxy", "HTTP proxy `URL` to reach the server through, http://[user:password@]host[:port], or \"direct\" for none (default: HTTPS_PROXY and HTTP_PROXY)", o.setProxy)
	fs.Func("no-proxy", "hosts to reach directly, past the proxy, as NO_PROXY lists them (default: NO_PROXY)", o.setNoProxy)
	fs.Func("data", "`directory` of the agent's store (default /var/lib/tether)", setPath(&o.data))
	fs.Func("socket", "`path` of the apps' Unix socket (default /run/tether/tetherd.sock)", setPath(&o.socket))
	fs.Func("socket-mode", "permissions of the socket, an octal `mode` (default 0666)", o.setSocketMode)
	fs.Func("dbus", "D-Bus door: system, session, off, or a bus `address` (default system)", o.setDBus)
	fs.Func("heartbeat", "fixed `interval` between heartbeats (default: learned per network)", o.setHeartbeat)
	fs.Func("heartbeat-min", "shortest learned heartbeat `interval` (default 30s)", setDuration(&o.policy.Min, "heartbeat min"))
	fs.Func("heartbeat-max", "longest learned heartbeat `interval` (default 28m0s)", setDuration(&o.policy.Max, "heartbeat max"))
	fs.Func("heartbeat-start", "heartbeat `interval` on a network not learned yet (default 1m0s)", setDuration(&o.policy.Start, "heartbeat start"))
	fs.Func("sysfs-root", "`directory` where sysfs is mounted, for the battery state (default /sys)", setPath(&o.sysfsRoot))
	fs.Func("low-battery", "battery `percent` at or under which only high-priority messages move (default 15)", o.setLowBattery)
	fs.Func("min-backoff", "first reconnection `delay` ceiling (default 1s)", setDuration(&o.minBackoff, "min backoff"))
	fs.Func("max-backoff", "largest reconnection `delay` (default 5m0s)", setDuration(&o.maxBackoff, "max backoff"))
	fs.Var(&listFlag{reset: func() { o.apps = nil }, add: o.bindAppFlag}, "app",
		"bind an app ID to the only user who may register it, as `APP=USER` or APP=UID (repeatable)")
	fs.Func("user-registrations", "most registrations one Unix user may hold; root and --app apps are not counted (default 20)",
		setCount(&o.userRegistrations, "user registrations"))
	fs.Func("app-messages", "most downstream messages held for one app; older ones are dropped (default 100)",
		setCount(&o.quota.AppMessages, "app messages"))
	fs.Func("app-bytes", "most `bytes` of downstream messages held for one app, as 524288, 512KiB or 2MiB (default 512KiB)",
		setSize(&o.quota.AppBytes, "app bytes"))
	fs.Func("total-bytes", "most `bytes` of downstream messages held for all apps together (default 2MiB)",
		setSize(&o.quota.Bytes, "total bytes"))
	fs.Func("log-level", "log `level`: debug, info, warn or error (default info)", o.setLogLevel)
	return fs
}

// fileTables are the config file's tables; the keys in them and at the
// top are those of settings. Values are read as they are written and
// checked by the same setters as the flags, so that a file and a flag are
// held to the same rules.
var fileTables = []string{"socket", "heartbeat", "power", "reconnect", "quota", "apps"}

// fileSetting is one key of the file with its value and how to apply it.
type fileSetting struct {
	key   []string
	value any
	apply func(o *options, v any) error
}

// settings lists the file's keys with their values in root (nil when
// absent) and how to apply them.
func settings(root map[string]any) []fileSetting {
	s := []fileSetting{
		{[]string{"server"}, lookup(root, "server"), applyServers},
		{[]string{"ca_file"}, lookup(root, "ca_file"), text(func(o *options, s string) error { return setPath(&o.caFile)(s) })},
		{[]string{"insecure"}, lookup(root, "insecure"), func(o *options, v any) error {
			b, ok := v.(bool)
			if !ok {
				return fmt.Errorf("want true or false, got %s", conftoml.TypeName(v))
			}
			o.insecure = b
			return nil
		}},
		{[]string{"server_pins"}, lookup(root, "server_pins"), textList((*options).addServerPin)},
		{[]string{"enroll_key_file"}, lookup(root, "enroll_key_file"), text(func(o *options, s string) error { return setPath(&o.enrollKeyFile)(s) })},
		{[]string{"cert"}, lookup(root, "cert"), text(func(o *options, s string) error { return setPath(&o.certFile)(s) })},
		{[]string{"key"}, lookup(root, "key"), text(func(o *options, s string) error { return setPath(&o.keyFile)(s) })},
		{[]string{"proxy"}, lookup(root, "proxy"), text(func(o *options, s string) error {
			if err := o.setProxy(s); err != nil {
				return err
			}
			u, _ := proxyenv.ParseURL(s) // checked; "direct" has no user
			_, o.proxyPasswordInFile = u.User.Password()
			return nil
		})},
		{[]string{"no_proxy"}, lookup(root, "no_proxy"), text((*options).setNoProxy)},
		{[]string{"data_dir"}, lookup(root, "data_dir"), text(func(o *options, s string) error { return setPath(&o.data)(s) })},
		{[]string{"dbus"}, lookup(root, "dbus"), text((*options).setDBus)},
		{[]string{"log_level"}, lookup(root, "log_level"), text((*options).setLogLevel)},
		{[]string{"socket", "path"}, lookup(root, "socket", "path"), text(func(o *options, s string) error { return setPath(&o.socket)(s) })},
		{[]string{"socket", "mode"}, lookup(root, "socket", "mode"), applySocketMode},
		{[]string{"heartbeat", "interval"}, lookup(root, "heartbeat", "interval"), text((*options).setHeartbeat)},
		{[]string{"heartbeat", "min"}, lookup(root, "heartbeat", "min"), duration(func(o *options) *time.Duration { return &o.policy.Min }, "heartbeat min")},
		{[]string{"heartbeat", "max"}, lookup(root, "heartbeat", "max"), duration(func(o *options) *time.Duration { return &o.policy.Max }, "heartbeat max")},
		{[]string{"heartbeat", "start"}, lookup(root, "heartbeat", "start"), duration(func(o *options) *time.Duration { return &o.policy.Start }, "heartbeat start")},
		{[]string{"power", "sysfs_root"}, lookup(root, "power", "sysfs_root"), text(func(o *options, s string) error { return setPath(&o.sysfsRoot)(s) })},
		{[]string{"power", "low_battery"}, lookup(root, "power", "low_battery"), integer("a percentage", (*options).setLowBattery)},
		{[]string{"reconnect", "min_backoff"}, lookup(root, "reconnect", "min_backoff"), duration(func(o *options) *time.Duration { return &o.minBackoff }, "min backoff")},
		{[]string{"reconnect", "max_backoff"}, lookup(root, "reconnect", "max_backoff"), duration(func(o *options) *time.Duration { return &o.maxBackoff }, "max backoff")},
		{[]string{"quota", "user_registrations"}, lookup(root, "quota", "user_registrations"), integer("a number", func(o *options, s string) error {
			return setCount(&o.userRegistrations, "user registrations")(s)
		})},
		{[]string{"quota", "app_messages"}, lookup(root, "quota", "app_messages"), integer("a number", func(o *options, s string) error {
			return setCount(&o.quota.AppMessages, "app messages")(s)
		})},
		{[]string{"quota", "app_bytes"}, lookup(root, "quota", "app_bytes"), size(func(o *options) *int64 { return &o.quota.AppBytes }, "app bytes")},
		{[]string{"quota", "total_bytes"}, lookup(root, "quota", "total_bytes"), size(func(o *options) *int64 { return &o.quota.Bytes }, "total bytes")},
	}
	apps, _ := root["apps"].(map[string]any)
	for app, owner := range apps {
		s = append(s, fileSetting{[]string{"apps", app}, owner, func(o *options, v any) error {
			switch v := v.(type) {
			case string:
				return o.bindApp(app, v)
			case int64:
				if v < 0 || v > 1<<32-1 {
					return fmt.Errorf("uid %d out of range", v)
				}
				return o.bindApp(app, strconv.FormatInt(v, 10))
			}
			return fmt.Errorf("want a user name or a uid, got %s", conftoml.TypeName(v))
		}})
	}
	return s
}

func duration(field func(*options) *time.Duration, name string) func(*options, any) error {
	return text(func(o *options, s string) error { return setDuration(field(o), name)(s) })
}

// integer takes a TOML integer, what, and sets it as set takes it written.
func integer(what string, set func(*options, string) error) func(*options, any) error {
	return func(o *options, v any) error {
		n, ok := v.(int64)
		if !ok {
			return fmt.Errorf("want %s, got %s", what, conftoml.TypeName(v))
		}
		return set(o, strconv.FormatInt(n, 10))
	}
}

// size takes a number of bytes as a TOML integer or a string ("512KiB").
func size(field func(*options) *int64, name string) func(*options, any) error {
	return func(o *options, v any) error {
		switch v := v.(type) {
		case int64:
			return setSize(field(o), name)(strconv.FormatInt(v, 10))
		case string:
			return setSize(field(o), name)(v)
		}
		return fmt.Errorf("want a size such as 524288 or \"512KiB\", got %s", conftoml.TypeName(v))
	}
}

func text(set func(*options, string) error) func(*options, any) error {
	return func(o *options, v any) error {
		s, ok := v.(string)
		if !ok {
			return fmt.Errorf("want a string, got %s", conftoml.TypeName(v))
		}
		return set(o, s)
	}
}

func textList(add func(*options, string) error) func(*options, any) error {
	return func(o *options, v any) error {
		list, ok := v.([]any)
		if !ok {
			return fmt.Errorf("want an array of strings, got %s", conftoml.TypeName(v))
		}
		for _, e := range list {
			s, ok := e.(string)
			if !ok {
				return fmt.Errorf("want an array of strings, it holds %s", conftoml.TypeName(e))
			}
			if err := add(o, s); err != nil {
				return err
			}
		}
		return nil
	}
}

// applySocketMode takes the mode as a string ("0660") or a TOML octal
// integer (0o660).
func applySocketMode(o *options, v any) error {
	switch v := v.(type) {
	case string:
		return o.setSocketMode(v)
	case int64:
		if v < 0 || v > 0o777 {
			return fmt.Errorf("socket mode %d: write it as an octal integer (0o660) or a string (\"0660\")", v)
		}
		o.socketMode = os.FileMode(v)
		return nil
	}
	return fmt.Errorf("want an octal mode, got %s", conftoml.TypeName(v))
}

// loadConfig applies the config file at path to o. A missing file is no
// error unless required.
func loadConfig(o *options, path string, required bool) error {
	doc, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !required {
		return nil
	}
	if err != nil {
		return fmt.Errorf("read config: %w", err)
	}
	return applyConfig(o, path, doc)
}

// applyConfig applies doc, the config file at path, to o. Every bad key
// is reported, with its line: the unknown ones, the tables written as
// something else, and the values their setters refuse.
func applyConfig(o *options, path string, doc []byte) error {
	d, err := conftoml.ParseFile(path, doc)
	if err != nil {
		return err
	}
	var errs []error
	bad := func(key []string, err error) {
		errs = append(errs, &conftoml.KeyError{File: path, Line: d.Line(key...), Key: conftoml.KeyName(key), Err: err})
	}
	known := map[string]bool{}
	list := settings(d.Root)
	for _, s := range list {
		known[strings.Join(s.key, ".")] = true
	}
	for k, v := range d.Root {
		switch {
		case slices.Contains(fileTables, k):
			t, ok := v.(map[string]any)
			if !ok {
				bad([]string{k}, errors.New("want a table"))
				continue
			}
			if k == "apps" {
				continue // every key is an app ID
			}
			for sub := range t {
				if !known[k+"."+sub] {
					bad([]string{k, sub}, errors.New("unknown key"))
				}
			}
		case !known[k]:
			bad([]string{k}, errors.New("unknown key"))
		}
	}
	for _, s := range list {
		if s.value == nil {
			continue
		}
		if err := s.apply(o, s.value); err != nil {
			bad(s.key, err)
		}
	}
	return errors.Join(errs...)
}

// lookup returns the value at path in root, nil if there is none.
func lookup(root map[string]any, path ...string) any {
	var v any = root
	for _, k := range path {
		t, ok := v.(map[string]any)
		if !ok {
			return nil
		}
		v = t[k]
	}
	return v
}
