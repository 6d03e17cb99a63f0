// SPDX-License-Identifier: Apache-2.0

// Command tether-server runs Tether's connection server and manages its
// senders (docs/server-api.md).
//
//	tether-server serve [--config FILE] --listen 127.0.0.1:8080 --data DIR [--nats URLS [--public-url URL] [--shards N]]
//	                    [--tls-cert F --tls-key F | --acme-domain NAMES [--acme-email A] [--acme-cache DIR] [--acme-directory URL]]
//	                    [--enroll-key K] [--device-ca F] [--open-enrollment] [--log-level L] [--log-format F]
//	                    [--device-rate-limit N] [--topic-rate-limit N] [--max-store-size BYTES]
//	                    [--battery-max-delay D] [--store-retry-after D] [--shutdown-spread D] [--reconnect-limit N]
//	                    [--auth-failure-limit N] [--upstream-rate-limit N]
//	                    [--xmpp-listen ADDR [--xmpp-plaintext] [--xmpp-domain DOMAIN]]
//	tether-server sender add --data DIR | --nats URLS --name NAME [--webhook URL] [--json]
//	tether-server sender list --data DIR | --nats URLS [--json]
//	tether-server sender remove --data DIR | --nats URLS --id ID
//	tether-server sender rotate-key --data DIR | --nats URLS --id ID [--grace DURATION] [--json]
//	tether-server sender update --data DIR | --nats URLS --id ID --webhook URL [--json]
//	tether-server sender rotate-webhook-secret --data DIR | --nats URLS --id ID [--grace DURATION] [--json]
//	tether-server sender service-account --data DIR | --nats URLS --id ID --public-url URL --out FILE
//	tether-server sender service-account list|revoke --data DIR | --nats URLS --id ID [--key KEY_ID] [--json]
//	tether-server token rotate --data DIR | --nats URLS --token TOKEN|- [--grace DURATION] [--json]
//	tether-server enroll create --data DIR | --nats URLS [--uses N] [--expires DURATION] [--json]
//	tether-server enroll list --data DIR | --nats URLS [--json]
//	tether-server enroll revoke --data DIR | --nats URLS --id ID
//	tether-server device list --data DIR | --nats URLS [--json]
//	tether-server device show --data DIR | --nats URLS --id ID [--json]
//	tether-server device revoke --data DIR | --nats URLS --id ID
//	tether-server device remove --data DIR | --nats URLS --id ID
//	tether-server device drain --data DIR [--to URL] [--over DURATION] [--retry-after DURATION] [--json]
//	tether-server xmpp drain --data DIR
//	tether-server migrate --data DIR --nats URLS [--shards N] [--json]
//	tether-server healthcheck [--url URL] [--timeout DURATION]
//	tether-server config check [--config FILE] [serve's flags]
//	tether-server backup --data DIR --out FILE [--json]
//	tether-server compact --data DIR [--json]
//	tether-server version
//
// serve reads its settings from the config file --config names, every
// flag a key (docs/config.md), then from its flags; SIGHUP reloads the
// certificate and the settings that can change while it serves.
//
// Exit status: 0 on success, 1 on an error, 2 on a usage error.
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	"tether/internal/clockknob"
	"tether/server"
	"tether/server/natsstore"
	"tether/wire"
)

const usage = `usage:
  tether-server serve [--config FILE] --data DIR [--nats URL[,URL...] [--nats-creds FILE] [--nats-ca FILE] [--public-url URL] [--shards N]]
                      [--listen ADDR] [--tls-cert FILE --tls-key FILE | --acme-domain NAMES [--acme-email ADDR] [--acme-cache DIR] [--acme-directory URL]]
                      [--log-format text|json]
                      [--enroll-key KEY | --enroll-key-file FILE] [--device-ca FILE] [--open-enrollment]
                      [--device-expiry DURATION] [--max-heartbeat DURATION] [--log-level debug|info|warn|error]
                      [--device-rate-limit N] [--topic-rate-limit N] [--max-store-size BYTES]
                      [--battery-max-delay DURATION] [--store-retry-after DURATION]
                      [--shutdown-spread DURATION] [--reconnect-limit N]
                      [--auth-failure-limit N] [--upstream-rate-limit N] [--checkin-limit N] [--enroll-failure-limit N]
                      [--conns-per-ip N] [--sessions-per-ip N] [--trusted-proxy CIDR]...
                      [--xmpp-listen ADDR [--xmpp-plaintext] [--xmpp-domain DOMAIN]]
  tether-server sender add --data DIR | --nats URL --name NAME [--webhook URL] [--json]
  tether-server sender list --data DIR | --nats URL [--json]
  tether-server sender remove --data DIR | --nats URL --id ID
  tether-server sender rotate-key --data DIR | --nats URL --id ID [--grace DURATION] [--json]
  tether-server sender update --data DIR | --nats URL --id ID --webhook URL [--json]
  tether-server sender rotate-webhook-secret --data DIR | --nats URL --id ID [--grace DURATION] [--json]
  tether-server sender service-account --data DIR | --nats URL --id ID --public-url URL --out FILE
  tether-server sender service-account list --data DIR | --nats URL --id ID [--json]
  tether-server sender service-account revoke --data DIR | --nats URL --id ID --key KEY_ID
  tether-server token rotate --data DIR | --nats URL --token TOKEN|- [--grace DURATION] [--json]
  tether-server enroll create --data DIR | --nats URL [--uses N] [--expires DURATION] [--json]
  tether-server enroll list --data DIR | --nats URL [--json]
  tether-server enroll revoke --data DIR | --nats URL --id ID
  tether-server device list --data DIR | --nats URL [--json]
  tether-server device show --data DIR | --nats URL --id ID [--json]
  tether-server device revoke --data DIR | --nats URL --id ID
  tether-server device remove --data DIR | --nats URL --id ID
  tether-server device drain --data DIR [--to URL] [--over DURATION] [--retry-after DURATION] [--json]
  tether-server xmpp drain --data DIR
  tether-server migrate --data DIR --nats URL[,URL...] [--shards N] [--json]
  tether-server config check [--config FILE] [serve's flags]
  tether-server backup --data DIR --out FILE [--json]
  tether-server compact --data DIR [--json]
  tether-server version

serve's settings come from the config file --config names (docs/config.md),
then from its flags; SIGHUP reloads the TLS certificate and the settings
that can change while it serves. config check reads /etc/tether/server.toml
unless --config names another file.

--nats takes --nats-creds FILE, --nats-ca FILE and --nats-prefix NAME beside it.
`

// version is set at build time (make build stamps it from git).
var version = "dev"

// defaultGCPercent is the garbage collector's target unless GOGC says
// otherwise. The server's memory is mostly idle device sessions; collecting
// at 30% of the live heap rather than Go's 100% keeps the garbage of a
// burst of connections or sends from staying resident beside them: an idle
// wss:// session takes 19–20 KiB of RSS at 30, 22 at 50 (make load), for
// a little more CPU in bursts.
const defaultGCPercent = 30

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// errUsage marks a usage error, exit status 2; flag has printed why, or
// the error that wraps it (usagef) says why.
var errUsage = errors.New("usage")

// usageError is a usage error that says what is wrong.
type usageError struct{ err error }

func (e *usageError) Error() string   { return e.err.Error() }
func (e *usageError) Unwrap() []error { return []error{errUsage, e.err} }

func usagef(format string, args ...any) error {
	return &usageError{fmt.Errorf(format, args...)}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		if err != errUsage {
			for line := range strings.SplitSeq(err.Error(), "\n") {
				fmt.Fprintf(stderr, "tether-server: %s\n", line)
			}
		}
		return 2
	}
	fmt.Fprintf(stderr, "tether-server: %v\n", err)
	return 1
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch {
	case len(args) >= 1 && args[0] == "serve":
		return serve(ctx, args[1:], stderr)
	case len(args) >= 2 && args[0] == "config" && args[1] == "check":
		return configCheck(args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "sender" && args[1] == "add":
		return senderAdd(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "sender" && args[1] == "list":
		return senderList(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "sender" && args[1] == "remove":
		return senderRemove(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "sender" && args[1] == "rotate-key":
		return senderRotateKey(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "sender" && args[1] == "update":
		return senderUpdate(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "sender" && args[1] == "rotate-webhook-secret":
		return senderRotateWebhookSecret(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "sender" && args[1] == "service-account":
		return senderServiceAccount(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "token" && args[1] == "rotate":
		return tokenRotate(ctx, args[2:], os.Stdin, stdout, stderr)
	case len(args) >= 2 && args[0] == "enroll" && args[1] == "create":
		return enrollCreate(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "enroll" && args[1] == "list":
		return enrollList(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "enroll" && args[1] == "revoke":
		return enrollRevoke(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "device" && args[1] == "list":
		return deviceList(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "device" && args[1] == "show":
		return deviceShow(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "device" && (args[1] == "revoke" || args[1] == "remove"):
		return deviceEnd(ctx, args[1], args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "device" && args[1] == "drain":
		return deviceDrain(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "xmpp" && args[1] == "drain":
		return xmppDrain(ctx, args[2:], stdout, stderr)
	case len(args) >= 1 && args[0] == "migrate":
		return migrate(ctx, args[1:], stdout, stderr)
	case len(args) >= 1 && args[0] == "healthcheck":
		return healthcheck(ctx, args[1:], stdout, stderr)
	case len(args) >= 1 && args[0] == "backup":
		return backup(ctx, args[1:], stdout, stderr)
	case len(args) >= 1 && args[0] == "compact":
		return compact(ctx, args[1:], stdout, stderr)
	case len(args) == 1 && (args[0] == "version" || args[0] == "--version"):
		fmt.Fprintln(stdout, "tether-server", version)
		return nil
	case len(args) >= 1 && (args[0] == "help" || args[0] == "-h" || args[0] == "--help"):
		io.WriteString(stdout, usage)
		return nil
	}
	io.WriteString(stderr, usage)
	return errUsage
}

// flags makes a flag set for one subcommand that reports errors as usage
// errors.
func flags(name string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet("tether-server "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs
}

func parse(fs *flag.FlagSet, args []string, required ...string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(fs.Output(), "%s: unexpected argument %q\n", fs.Name(), fs.Arg(0))
		return errUsage
	}
	for _, name := range required {
		if fs.Lookup(name).Value.String() == "" {
			fmt.Fprintf(fs.Output(), "%s: --%s is required\n", fs.Name(), name)
			return errUsage
		}
	}
	return nil
}

// settings are what serve's flags and config file say.
type settings struct {
	cfg       server.Config
	level     slog.Level
	logFormat string
	src       settingSource
	// values are every flag's value as text, to tell on a reload which
	// settings changed.
	values map[string]string
}

// loadSettings reads serve's settings from args and the config file that
// --config names, by default config. Usage errors are printed to stderr.
func loadSettings(args []string, config string, stderr io.Writer) (settings, error) {
	fs := flags("serve", stderr)
	fs.String("config", config, "settings `file` (TOML, docs/config.md): each flag is a key, as tls_cert for --tls-cert; flags given here win")
	listen := fs.String("listen", "127.0.0.1:8080", "TCP `address` for app servers and devices")
	data := fs.String("data", "", "data `directory` (created with mode 0700)")
	cert := fs.String("tls-cert", "", "TLS certificate `file` (PEM); serve HTTPS and WSS")
	key := fs.String("tls-key", "", "TLS private key `file` (PEM)")
	acmeDomain := fs.String("acme-domain", "", "`names`, comma-separated, to obtain and renew the certificate for from an ACME CA (Let's Encrypt unless --acme-directory) instead of --tls-cert; the CA must reach --listen on port 443")
	acmeCache := fs.String("acme-cache", "", "`directory` of the ACME account key and certificates (default acme in --data)")
	acmeEmail := fs.String("acme-email", "", "contact `address` given to the ACME CA")
	acmeDirectory := fs.String("acme-directory", "", "`URL` of the ACME CA's directory (default Let's Encrypt's)")
	enrollKey := fs.String("enroll-key", "", "fleet-wide enrollment `key` that devices may present to check in, at least 22 characters")
	enrollKeyFile := fs.String("enroll-key-file", "", "`file` holding the fleet-wide enrollment key (mode 0600; keeps it out of ps)")
	deviceCA := fs.String("device-ca", "", "PEM `file` of the CAs whose client certificates let devices check in without a key (needs --tls-cert)")
	openEnrollment := fs.Bool("open-enrollment", false, "let any device check in with no key or certificate (not on a public address)")
	deviceExpiry := fs.Duration("device-expiry", 270*24*time.Hour, "remove devices not seen for this `duration` (0: never)")
	maxHeartbeat := fs.Duration("max-heartbeat", 30*time.Minute, "longest heartbeat a device may announce (`duration`)")
	checkInLimit := fs.Int("checkin-limit", 30, "most devices that may check in per `minute` from one IP address (0: no limit)")
	enrollFailureLimit := fs.Int("enroll-failure-limit", 10, "most refused device credentials per `minute` from one IP address before its devices are told to wait (0: no limit)")
	connsPerIP := fs.Int("conns-per-ip", 64, "most HTTP connections, device sessions apart, and XMPP connections one IP `address` (an IPv6 /64) holds open (0: no limit)")
	sessionsPerIP := fs.Int("sessions-per-ip", 1024, "most device connections from one IP `address` (an IPv6 /64); raise it for devices behind a large NAT (0: no limit)")
	var trusted cidrList
	fs.Var(&trusted, "trusted-proxy", "`CIDR` (or address) of a proxy or load balancer in front, whose X-Forwarded-For or PROXY protocol header names the client; repeat for several")
	level := fs.String("log-level", "info", "log `level`: debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "log `format`: text (key=value) or json (one object a line)")
	deviceRate := fs.Int("device-rate-limit", 0, "most messages accepted per device per `minute` (0: no limit)")
	topicRate := fs.Int("topic-rate-limit", 0, "most messages accepted per topic of a sender per `minute` (0: no limit)")
	maxStore := fs.Int("max-store-size", 0, "cap the store file at this many `bytes`; sends answer Unavailable when full (0: no cap)")
	batteryDelay := fs.Duration("battery-max-delay", 15*time.Minute, "longest a normal-priority message waits for a device on battery (`duration`)")
	storeRetry := fs.Duration("store-retry-after", 30*time.Second, "wait asked of devices while the store is unavailable, spread ±50% (`duration`)")
	shutdownSpread := fs.Duration("shutdown-spread", 10*time.Second, "devices reconnect at random within this `duration` after a shutdown (0: at once)")
	reconnectLimit := fs.Int("reconnect-limit", 30, "most connections one device may open per `minute`; beyond it it is told to wait (0: no limit)")
	authLimit := fs.Int("auth-failure-limit", 20, "most failed app server authentications per `minute` from one IP address before its attempts are refused (0: no limit)")
	upstreamRate := fs.Int("upstream-rate-limit", 60, "most upstream messages one device may store per `minute`; beyond it it is told to send them later (0: no limit)")
	xmppListen := fs.String("xmpp-listen", "", "TCP `address` of the XMPP (CCS) endpoint for app servers, e.g. :5235; TLS with --tls-cert (off when empty)")
	xmppPlain := fs.Bool("xmpp-plaintext", false, "serve XMPP without TLS, for a proxy in front that terminates TLS")
	xmppDomain := fs.String("xmpp-domain", "", "`domain` accepted in SENDER_ID@DOMAIN besides gcm.googleapis.com and fcm.googleapis.com")
	metricsListen := fs.String("metrics-listen", "", "TCP `address` serving Prometheus metrics at /metrics, apart from the public listener, e.g. 127.0.0.1:9464 (off when empty; docs/operations.md)")
	var nats natsFlags
	nats.add(fs)
	publicURL := fs.String("public-url", "", "the `URL` devices and app servers reach this server at (https://host[:port] or wss://host[:port]), for the URLs it hands out and, in a cluster, the goaway of other nodes")
	shards := fs.Int("shards", 0, "streams a new cluster state spreads devices over, fixed at creation; with --nats (0: 8)")
	src, err := parseWithConfig(fs, args)
	if err != nil {
		return settings{}, err
	}
	name := src.name
	switch {
	case *data == "":
		return settings{}, usagef("--data is required (or data in the config file)")
	case nats.urls == "" && *shards != 0:
		return settings{}, usagef("--shards goes with --nats")
	case nats.urls != "" && *maxStore != 0:
		return settings{}, usagef("%s caps the bbolt file; a cluster's storage is capped by its JetStream limits (docs/scaling.md)", name("max-store-size"))
	case *shards < 0 || *shards > natsstore.MaxShards:
		return settings{}, usagef("%s %d out of range 1 to %d", name("shards"), *shards, natsstore.MaxShards)
	case *acmeDomain != "" && *cert != "":
		return settings{}, usagef("give --tls-cert and --tls-key, or --acme-domain, not both")
	case *acmeDomain == "" && (*acmeCache != "" || *acmeEmail != "" || *acmeDirectory != ""):
		return settings{}, usagef("--acme-cache, --acme-email and --acme-directory go with --acme-domain")
	case *deviceCA != "" && *cert == "" && *acmeDomain == "":
		return settings{}, usagef("--device-ca needs --tls-cert and --tls-key, or --acme-domain: client certificates need TLS to end at tether-server (docs/security.md)")
	case (*cert == "") != (*key == ""):
		return settings{}, usagef("--tls-cert and --tls-key go together")
	case *xmppListen != "" && *cert == "" && *acmeDomain == "" && !*xmppPlain:
		return settings{}, usagef("--xmpp-listen needs --tls-cert and --tls-key or --acme-domain, or --xmpp-plaintext behind a proxy that terminates TLS")
	case *xmppListen == "" && (*xmppPlain || *xmppDomain != ""):
		return settings{}, usagef("--xmpp-plaintext and --xmpp-domain go with --xmpp-listen")
	case *enrollKey != "" && *enrollKeyFile != "":
		return settings{}, usagef("give --enroll-key or --enroll-key-file, not both")
	case *logFormat != "text" && *logFormat != "json":
		return settings{}, usagef("%s %q: want text or json", name("log-format"), *logFormat)
	}
	if *publicURL != "" {
		if _, err := wire.ParseServerURL(*publicURL); err != nil {
			return settings{}, usagef("%s: %v", name("public-url"), err)
		}
	}
	for _, n := range []struct {
		flag string
		v    int
	}{{"device-rate-limit", *deviceRate}, {"topic-rate-limit", *topicRate}, {"max-store-size", *maxStore}, {"reconnect-limit", *reconnectLimit},
		{"auth-failure-limit", *authLimit}, {"upstream-rate-limit", *upstreamRate}, {"checkin-limit", *checkInLimit},
		{"enroll-failure-limit", *enrollFailureLimit}, {"conns-per-ip", *connsPerIP}, {"sessions-per-ip", *sessionsPerIP}} {
		if n.v < 0 {
			return settings{}, usagef("%s cannot be negative", name(n.flag))
		}
	}
	const maxWait = 24 * time.Hour // the longest wait the wire carries
	for _, d := range []struct {
		flag     string
		v        time.Duration
		min, max time.Duration
	}{{"battery-max-delay", *batteryDelay, time.Second, maxWait}, {"store-retry-after", *storeRetry, time.Second, maxWait},
		{"shutdown-spread", *shutdownSpread, 0, maxWait}, {"max-heartbeat", *maxHeartbeat, time.Minute, time.Duration(wire.MaxHeartbeat) * time.Second},
		{"device-expiry", *deviceExpiry, 0, time.Duration(math.MaxInt64)}} {
		if d.v < d.min || d.v > d.max {
			return settings{}, usagef("%s %v is out of range %v to %v", name(d.flag), d.v, d.min, d.max)
		}
	}
	var logLevel slog.Level
	if err := logLevel.UnmarshalText([]byte(*level)); err != nil {
		return settings{}, usagef("%s %q: want debug, info, warn or error", name("log-level"), *level)
	}
	if *enrollKeyFile != "" {
		key, err := readSecretFile(*enrollKeyFile)
		if err != nil {
			return settings{}, fmt.Errorf("read enrollment key: %w", err)
		}
		*enrollKey = key
	}
	cfg := server.Config{
		DataDir: *data, Listen: *listen, TLSCert: *cert, TLSKey: *key,
		EnrollKey: *enrollKey, DeviceCA: *deviceCA, OpenEnrollment: *openEnrollment,
		DeviceExpiry: *deviceExpiry, MaxHeartbeat: *maxHeartbeat,
		CheckInLimit: *checkInLimit, EnrollFailureLimit: *enrollFailureLimit,
		TrustedProxies: trusted.prefixes, ConnsPerIP: *connsPerIP, SessionsPerIP: *sessionsPerIP,
		DeviceRateLimit: *deviceRate, TopicRateLimit: *topicRate, MaxStoreSize: *maxStore,
		BatteryMaxDelay: *batteryDelay, StoreRetryAfter: *storeRetry,
		ShutdownSpread: *shutdownSpread, ReconnectLimit: *reconnectLimit, UpstreamRateLimit: *upstreamRate,
		AuthFailureLimit: *authLimit,
		XMPPListen:       *xmppListen, XMPPPlaintext: *xmppPlain, XMPPDomain: *xmppDomain,
		NATS: nats.config(), PublicURL: *publicURL, MetricsListen: *metricsListen,
	}
	if cfg.NATS != nil {
		cfg.NATS.Shards = *shards
	}
	if *acmeDomain != "" {
		cfg.ACME = &server.ACMEConfig{Domains: splitList(*acmeDomain), CacheDir: *acmeCache, Email: *acmeEmail, DirectoryURL: *acmeDirectory}
		if err := server.CheckACMEDomains(cfg.ACME.Domains); err != nil {
			return settings{}, usagef("%s: %v", name("acme-domain"), err)
		}
	}
	// Zero means the default in Config, and none on the command line.
	if cfg.ShutdownSpread == 0 {
		cfg.ShutdownSpread = -1
	}
	for _, v := range []*int{&cfg.ReconnectLimit, &cfg.AuthFailureLimit, &cfg.UpstreamRateLimit, &cfg.CheckInLimit, &cfg.EnrollFailureLimit, &cfg.ConnsPerIP, &cfg.SessionsPerIP} {
		if *v == 0 {
			*v = -1
		}
	}
	if cfg.DeviceExpiry == 0 {
		cfg.DeviceExpiry = -1
	}
	st := settings{cfg: cfg, level: logLevel, logFormat: *logFormat, src: src, values: map[string]string{}}
	fs.VisitAll(func(f *flag.Flag) { st.values[f.Name] = f.Value.String() })
	return st, nil
}

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	// SIGHUP would end the process; it reloads instead, once the server
	// runs (one that comes while it starts waits).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	st, err := loadSettings(args, "", stderr)
	if err != nil {
		return err
	}
	offset, err := clockknob.FromEnv(os.Getenv)
	if err != nil {
		return usagef("%v", err)
	}
	var level slog.LevelVar
	level.Set(st.level)
	cfg := st.cfg
	cfg.Logger = newLogger(st.logFormat, &level, stderr)
	if offset != 0 {
		cfg.Now = func() time.Time { return time.Now().Add(offset) }
	}
	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	reloadCtx, stopReloads := context.WithCancel(ctx)
	var reloads sync.WaitGroup
	reloads.Go(func() {
		for {
			select {
			case <-reloadCtx.Done():
				return
			case <-hup:
				reload(srv, args, st, &level, cfg.Logger)
			}
		}
	})
	err = serveNotifying(ctx, srv, cfg.Logger)
	stopReloads()
	reloads.Wait()
	return err
}

// reloadable are the flags whose settings a reload applies to a running
// server (docs/config.md); the others take a restart.
var reloadable = []string{"tls-cert", "tls-key", "log-level", "conns-per-ip", "sessions-per-ip",
	"device-rate-limit", "topic-rate-limit", "reconnect-limit", "checkin-limit", "upstream-rate-limit", "auth-failure-limit", "enroll-failure-limit"}

// reload reads the settings again, from the same flags and config file,
// and applies those that can change while serving. A bad config file or
// certificate changes nothing: the error is logged and the server goes
// on as it was. Settings that take a restart are named when they differ
// from those the server started with.
func reload(srv *server.Server, args []string, started settings, level *slog.LevelVar, log *slog.Logger) {
	next, err := loadSettings(args, "", io.Discard)
	if err == nil {
		err = srv.Reload(next.cfg)
	}
	if err != nil {
		log.Error("reload failed; the settings in use are kept", "err", err)
		return
	}
	level.Set(next.level)
	var restart []string
	for name, v := range next.values {
		if v != started.values[name] && !slices.Contains(reloadable, name) {
			restart = append(restart, configKey(name))
		}
	}
	slices.Sort(restart)
	if len(restart) > 0 {
		log.Warn("reload: these settings changed and take effect at the next restart", "keys", strings.Join(restart, ","))
	}
	log.Info("reloaded", "config", next.src.file, "tls_cert", next.cfg.TLSCert, "log_level", next.level.String())
}

// newLogger logs in format, "text" or "json", at level.
func newLogger(format string, level slog.Leveler, w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

func migrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("migrate", stderr)
	data := fs.String("data", "", "data `directory` of the single-node server to move (stopped)")
	var nats natsFlags
	nats.add(fs)
	shards := fs.Int("shards", 0, "streams a new cluster state spreads devices over (0: 8)")
	asJSON := fs.Bool("json", false, "print the counts as a JSON object")
	if err := parse(fs, args, "data", "nats"); err != nil {
		return err
	}
	cfg := nats.config()
	cfg.Shards = *shards
	n, err := server.Migrate(ctx, server.MigrateConfig{DataDir: *data, NATS: *cfg})
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(n)
	}
	fmt.Fprintf(stdout, "moved %d senders, %d devices, %d registrations, %d queued messages, %d upstream messages, %d upstream IDs seen, %d topic messages\n",
		n.Senders, n.Devices, n.Registrations, n.Messages, n.Upstream, n.Seen, n.TopicMessages)
	return nil
}

func xmppDrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("xmpp drain", stderr)
	a, _, err := openNode(ctx, fs, args, "data `directory` of the running server")
	if err != nil {
		return err
	}
	defer a.Close()
	res, err := a.DrainXMPP(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "drained %d XMPP connections\n", res.Drained)
	return nil
}

// cidrList is a repeated flag of networks, or single addresses.
type cidrList struct {
	prefixes []netip.Prefix
}

func (c *cidrList) String() string {
	parts := make([]string, len(c.prefixes))
	for i, p := range c.prefixes {
		parts[i] = p.String()
	}
	return strings.Join(parts, ",")
}

func (c *cidrList) repeatable() {}

func (c *cidrList) Set(v string) error {
	p, err := server.ParseTrustedProxies([]string{v})
	if err != nil {
		return err
	}
	c.prefixes = append(c.prefixes, p...)
	return nil
}

// natsFlags say how to reach a cluster's NATS servers.
type natsFlags struct {
	urls, creds, ca, prefix string
}

func (n *natsFlags) add(fs *flag.FlagSet) {
	fs.StringVar(&n.urls, "nats", "", "`URLs` of the cluster's NATS servers, comma-separated: the state is in JetStream there (docs/scaling.md)")
	fs.StringVar(&n.creds, "nats-creds", "", "NATS credentials `file`")
	fs.StringVar(&n.ca, "nats-ca", "", "PEM `file` of the CAs of the NATS servers' certificates (tls:// URLs)")
	fs.StringVar(&n.prefix, "nats-prefix", "tether", "`name` of the cluster's streams and subjects, for several clusters on one NATS")
}

// config is the cluster configuration the flags give, or nil without
// --nats.
func (n *natsFlags) config() *server.NATSConfig {
	if n.urls == "" {
		return nil
	}
	return &server.NATSConfig{URLs: splitList(n.urls), Creds: n.creds, CA: n.ca, Prefix: n.prefix}
}

// splitList splits a comma-separated flag, dropping empty entries.
func splitList(s string) []string {
	var list []string
	for e := range strings.SplitSeq(s, ",") {
		if e = strings.TrimSpace(e); e != "" {
			list = append(list, e)
		}
	}
	return list
}

// target is where an admin command works: a data directory (of a running
// server or a stopped one), or a cluster's NATS servers.
type target struct {
	data string
	nats natsFlags
}

// targetFlags adds --data and the NATS flags to fs.
func targetFlags(fs *flag.FlagSet) *target {
	t := &target{}
	fs.StringVar(&t.data, "data", "", "data `directory` of the server")
	t.nats.add(fs)
	return t
}

// check says which of --data and --nats is missing or too many.
func (t *target) check(fs *flag.FlagSet) error {
	if (t.data == "") == (t.nats.urls == "") {
		fmt.Fprintf(fs.Output(), "%s: give --data DIR, or --nats URL for a cluster\n", fs.Name())
		return errUsage
	}
	return nil
}

func openAdmin(ctx context.Context, t *target, create bool) (*server.Admin, error) {
	return server.OpenAdmin(ctx, server.AdminConfig{DataDir: t.data, NATS: t.nats.config(), Create: create})
}

// open parses an admin command's arguments, with the flags named in
// required, and opens the server's store they point at.
func (t *target) open(ctx context.Context, fs *flag.FlagSet, args []string, create bool, required ...string) (*server.Admin, error) {
	if err := parse(fs, args, required...); err != nil {
		return nil, err
	}
	if err := t.check(fs); err != nil {
		return nil, err
	}
	return openAdmin(ctx, t, create)
}

func senderAdd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("sender add", stderr)
	tgt := targetFlags(fs)
	name := fs.String("name", "", "`name` of the app server, for people")
	webhook := fs.String("webhook", "", "`URL` that upstream messages are POSTed to")
	asJSON := fs.Bool("json", false, `print {"sender_id": ..., "server_key": ..., "webhook_secret": ...}`)
	admin, err := tgt.open(ctx, fs, args, true, "name")
	if err != nil {
		return err
	}
	defer admin.Close()
	snd, err := admin.AddSender(ctx, *name, *webhook)
	if err != nil {
		return err
	}
	return printKey(snd, *asJSON, stdout, stderr)
}

// printKey shows a new server key, the one time it is shown.
func printKey(snd server.NewSender, asJSON bool, stdout, stderr io.Writer) error {
	if asJSON {
		return json.NewEncoder(stdout).Encode(snd)
	}
	fmt.Fprintf(stdout, "sender_id  %s\nserver_key %s\n", snd.ID, snd.ServerKey)
	if snd.WebhookSecret != "" {
		// Shown once too; rotate-webhook-secret gives a new one.
		fmt.Fprintf(stdout, "webhook_secret %s\n", snd.WebhookSecret)
	}
	if !snd.OldKeyUntil.IsZero() {
		fmt.Fprintf(stdout, "old key works until %s\n", snd.OldKeyUntil.Local().Format(time.DateTime))
	}
	fmt.Fprintln(stderr, "Keep the server key safe: it is shown only this once.")
	return nil
}

func senderList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("sender list", stderr)
	tgt := targetFlags(fs)
	asJSON := fs.Bool("json", false, "print a JSON array")
	admin, err := tgt.open(ctx, fs, args, false)
	if err != nil {
		return err
	}
	defer admin.Close()
	list, err := admin.Senders(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		if list == nil {
			list = []server.SenderInfo{}
		}
		return json.NewEncoder(stdout).Encode(list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SENDER ID\tNAME\tWEBHOOK\tCREATED")
	for _, snd := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", snd.ID, snd.Name, dashIfEmpty(snd.Webhook), snd.Created.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func senderRemove(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("sender remove", stderr)
	tgt := targetFlags(fs)
	id := fs.String("id", "", "sender `ID` to remove")
	admin, err := tgt.open(ctx, fs, args, false, "id")
	if err != nil {
		return err
	}
	defer admin.Close()
	if err := admin.RemoveSender(ctx, *id); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "removed sender %s\n", *id)
	return nil
}

func senderRotateKey(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("sender rotate-key", stderr)
	tgt := targetFlags(fs)
	id := fs.String("id", "", "sender `ID` whose server key to replace")
	grace := fs.Duration("grace", 24*time.Hour, "how long the old key keeps working (`duration`, 0 to stop it at once)")
	asJSON := fs.Bool("json", false, `print {"sender_id": ..., "server_key": ..., "old_key_until": ...}`)
	admin, err := tgt.open(ctx, fs, args, false, "id")
	if err != nil {
		return err
	}
	defer admin.Close()
	snd, err := admin.RotateSenderKey(ctx, *id, *grace)
	if err != nil {
		return err
	}
	return printKey(snd, *asJSON, stdout, stderr)
}

func tokenRotate(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flags("token rotate", stderr)
	tgt := targetFlags(fs)
	token := fs.String("token", "", "registration `token` to replace; - reads it from standard input (keeps it out of ps)")
	grace := fs.Duration("grace", server.DefaultTokenGrace, "how long the old token keeps working (`duration`)")
	asJSON := fs.Bool("json", false, `print {"token": ..., "grace_until": ...}`)
	if err := parse(fs, args, "token"); err != nil {
		return err
	}
	if err := tgt.check(fs); err != nil {
		return err
	}
	if *token == "-" {
		line, err := bufio.NewReader(io.LimitReader(stdin, 4<<10)).ReadString('\n')
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read token: %w", err)
		}
		if *token = strings.TrimSpace(line); *token == "" {
			return errors.New("read token: standard input is empty")
		}
	}
	admin, err := openAdmin(ctx, tgt, false)
	if err != nil {
		return err
	}
	defer admin.Close()
	rotated, err := admin.RotateToken(ctx, *token, *grace)
	if err != nil {
		return err
	}
	if !admin.ReachesSessions() {
		fmt.Fprintln(stderr, "The device learns the new token when it next connects to the server.")
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(rotated)
	}
	fmt.Fprintf(stdout, "token       %s\ngrace_until %s\n", rotated.Token, rotated.GraceUntil.Local().Format(time.DateTime))
	return nil
}
