// Command tether-server runs Tether's connection server and manages its
// senders (docs/server-api.md).
//
//	tether-server serve --listen 127.0.0.1:8080 --data DIR [--nats URLS [--public-url URL] [--shards N]]
//	                    [--tls-cert F --tls-key F] [--enroll-key K] [--device-ca F] [--open-enrollment] [--log-level L]
//	                    [--device-rate-limit N] [--topic-rate-limit N] [--max-store-size BYTES]
//	                    [--battery-max-delay D] [--store-retry-after D] [--shutdown-spread D] [--reconnect-limit N]
//	                    [--auth-failure-limit N] [--upstream-rate-limit N]
//	                    [--xmpp-listen ADDR [--xmpp-plaintext] [--xmpp-domain DOMAIN]]
//	tether-server sender add --data DIR | --nats URLS --name NAME [--webhook URL] [--json]
//	tether-server sender list --data DIR | --nats URLS [--json]
//	tether-server sender remove --data DIR | --nats URLS --id ID
//	tether-server sender rotate-key --data DIR | --nats URLS --id ID [--grace DURATION] [--json]
//	tether-server token rotate --data DIR | --nats URLS --token TOKEN|- [--grace DURATION] [--json]
//	tether-server enroll create --data DIR | --nats URLS [--uses N] [--expires DURATION] [--json]
//	tether-server enroll list --data DIR | --nats URLS [--json]
//	tether-server enroll revoke --data DIR | --nats URLS --id ID
//	tether-server device list --data DIR | --nats URLS [--json]
//	tether-server device show --data DIR | --nats URLS --id ID [--json]
//	tether-server device revoke --data DIR | --nats URLS --id ID
//	tether-server device remove --data DIR | --nats URLS --id ID
//	tether-server xmpp drain --data DIR
//	tether-server migrate --data DIR --nats URLS [--shards N] [--json]
//	tether-server version
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
	"net/netip"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"tether/internal/clockknob"
	"tether/server"
	"tether/server/natsstore"
	"tether/wire"
)

const usage = `usage:
  tether-server serve --data DIR [--nats URL[,URL...] [--nats-creds FILE] [--nats-ca FILE] [--public-url URL] [--shards N]]
                      [--listen ADDR] [--tls-cert FILE --tls-key FILE]
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
  tether-server token rotate --data DIR | --nats URL --token TOKEN|- [--grace DURATION] [--json]
  tether-server enroll create --data DIR | --nats URL [--uses N] [--expires DURATION] [--json]
  tether-server enroll list --data DIR | --nats URL [--json]
  tether-server enroll revoke --data DIR | --nats URL --id ID
  tether-server device list --data DIR | --nats URL [--json]
  tether-server device show --data DIR | --nats URL --id ID [--json]
  tether-server device revoke --data DIR | --nats URL --id ID
  tether-server device remove --data DIR | --nats URL --id ID
  tether-server xmpp drain --data DIR
  tether-server migrate --data DIR --nats URL[,URL...] [--shards N] [--json]
  tether-server version

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

// errUsage marks a usage error, exit status 2; flag has printed why.
var errUsage = errors.New("usage")

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	err := dispatch(ctx, args, stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		return 2
	}
	fmt.Fprintf(stderr, "tether-server: %v\n", err)
	return 1
}

func dispatch(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	switch {
	case len(args) >= 1 && args[0] == "serve":
		return serve(ctx, args[1:], stderr)
	case len(args) >= 2 && args[0] == "sender" && args[1] == "add":
		return senderAdd(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "sender" && args[1] == "list":
		return senderList(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "sender" && args[1] == "remove":
		return senderRemove(ctx, args[2:], stdout, stderr)
	case len(args) >= 2 && args[0] == "sender" && args[1] == "rotate-key":
		return senderRotateKey(ctx, args[2:], stdout, stderr)
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
	case len(args) >= 2 && args[0] == "xmpp" && args[1] == "drain":
		return xmppDrain(ctx, args[2:], stdout, stderr)
	case len(args) >= 1 && args[0] == "migrate":
		return migrate(ctx, args[1:], stdout, stderr)
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

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flags("serve", stderr)
	listen := fs.String("listen", "127.0.0.1:8080", "TCP `address` for app servers and devices")
	data := fs.String("data", "", "data `directory` (created with mode 0700)")
	cert := fs.String("tls-cert", "", "TLS certificate `file` (PEM); serve HTTPS and WSS")
	key := fs.String("tls-key", "", "TLS private key `file` (PEM)")
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
	publicURL := fs.String("public-url", "", "this node's `URL` for devices (wss://host:port), named to them by other nodes when one shuts down; with --nats")
	shards := fs.Int("shards", 0, "streams a new cluster state spreads devices over, fixed at creation; with --nats (0: 8)")
	if err := parse(fs, args, "data"); err != nil {
		return err
	}
	if nats.urls == "" && (*publicURL != "" || *shards != 0) {
		fmt.Fprintln(stderr, "tether-server serve: --public-url and --shards go with --nats")
		return errUsage
	}
	if nats.urls != "" && *maxStore != 0 {
		fmt.Fprintln(stderr, "tether-server serve: --max-store-size caps the bbolt file; a cluster's storage is capped by its JetStream limits (docs/scaling.md)")
		return errUsage
	}
	if *publicURL != "" {
		if _, err := wire.ParseServerURL(*publicURL); err != nil {
			fmt.Fprintf(stderr, "tether-server serve: --public-url: %v\n", err)
			return errUsage
		}
	}
	if *shards < 0 || *shards > natsstore.MaxShards {
		fmt.Fprintf(stderr, "tether-server serve: --shards %d out of range 1 to %d\n", *shards, natsstore.MaxShards)
		return errUsage
	}
	if *deviceRate < 0 || *topicRate < 0 || *maxStore < 0 || *reconnectLimit < 0 || *authLimit < 0 || *upstreamRate < 0 || *checkInLimit < 0 || *enrollFailureLimit < 0 ||
		*connsPerIP < 0 || *sessionsPerIP < 0 {
		fmt.Fprintln(stderr, "tether-server serve: --device-rate-limit, --topic-rate-limit, --max-store-size, --reconnect-limit, --auth-failure-limit, --upstream-rate-limit, --checkin-limit, --enroll-failure-limit, --conns-per-ip and --sessions-per-ip cannot be negative")
		return errUsage
	}
	if *deviceExpiry < 0 || *maxHeartbeat < time.Minute || *maxHeartbeat > time.Duration(wire.MaxHeartbeat)*time.Second {
		fmt.Fprintf(stderr, "tether-server serve: --device-expiry cannot be negative, and --max-heartbeat is 1m to %v\n", time.Duration(wire.MaxHeartbeat)*time.Second)
		return errUsage
	}
	if *deviceCA != "" && *cert == "" {
		fmt.Fprintln(stderr, "tether-server serve: --device-ca needs --tls-cert and --tls-key: client certificates need TLS to end at tether-server (docs/security.md)")
		return errUsage
	}
	const maxWait = 24 * time.Hour // the longest wait the wire carries
	for _, d := range []struct {
		name string
		v    time.Duration
		min  time.Duration
	}{{"battery-max-delay", *batteryDelay, time.Second}, {"store-retry-after", *storeRetry, time.Second}, {"shutdown-spread", *shutdownSpread, 0}} {
		if d.v < d.min || d.v > maxWait {
			fmt.Fprintf(stderr, "tether-server serve: --%s %v is out of range %v to %v\n", d.name, d.v, d.min, maxWait)
			return errUsage
		}
	}
	var logLevel slog.Level
	if err := logLevel.UnmarshalText([]byte(*level)); err != nil {
		fmt.Fprintf(stderr, "tether-server serve: bad --log-level %q\n", *level)
		return errUsage
	}
	if (*cert == "") != (*key == "") {
		fmt.Fprintln(stderr, "tether-server serve: --tls-cert and --tls-key go together")
		return errUsage
	}
	if *xmppListen != "" && *cert == "" && !*xmppPlain {
		fmt.Fprintln(stderr, "tether-server serve: --xmpp-listen needs --tls-cert and --tls-key, or --xmpp-plaintext behind a proxy that terminates TLS")
		return errUsage
	}
	if *xmppListen == "" && (*xmppPlain || *xmppDomain != "") {
		fmt.Fprintln(stderr, "tether-server serve: --xmpp-plaintext and --xmpp-domain go with --xmpp-listen")
		return errUsage
	}
	if *enrollKey != "" && *enrollKeyFile != "" {
		fmt.Fprintln(stderr, "tether-server serve: give --enroll-key or --enroll-key-file, not both")
		return errUsage
	}
	if *enrollKeyFile != "" {
		key, err := readSecretFile(*enrollKeyFile)
		if err != nil {
			return fmt.Errorf("read enrollment key: %w", err)
		}
		*enrollKey = key
	}
	offset, err := clockknob.FromEnv(os.Getenv)
	if err != nil {
		fmt.Fprintln(stderr, "tether-server serve:", err)
		return errUsage
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: logLevel}))
	cfg := server.Config{
		DataDir: *data, Listen: *listen, TLSCert: *cert, TLSKey: *key, Logger: log,
		EnrollKey: *enrollKey, DeviceCA: *deviceCA, OpenEnrollment: *openEnrollment,
		DeviceExpiry: *deviceExpiry, MaxHeartbeat: *maxHeartbeat,
		CheckInLimit: *checkInLimit, EnrollFailureLimit: *enrollFailureLimit,
		TrustedProxies: trusted.prefixes, ConnsPerIP: *connsPerIP, SessionsPerIP: *sessionsPerIP,
		DeviceRateLimit: *deviceRate, TopicRateLimit: *topicRate, MaxStoreSize: *maxStore,
		BatteryMaxDelay: *batteryDelay, StoreRetryAfter: *storeRetry,
		ShutdownSpread: *shutdownSpread, ReconnectLimit: *reconnectLimit, UpstreamRateLimit: *upstreamRate,
		AuthFailureLimit: *authLimit,
		XMPPListen:       *xmppListen, XMPPPlaintext: *xmppPlain, XMPPDomain: *xmppDomain,
		NATS: nats.config(), MetricsListen: *metricsListen,
	}
	if cfg.NATS != nil {
		cfg.NATS.PublicURL, cfg.NATS.Shards = *publicURL, *shards
	}
	if offset != 0 {
		cfg.Now = func() time.Time { return time.Now().Add(offset) }
	}
	// Zero means the default in Config, and none on the command line.
	if cfg.ShutdownSpread == 0 {
		cfg.ShutdownSpread = -1
	}
	if cfg.ReconnectLimit == 0 {
		cfg.ReconnectLimit = -1
	}
	for _, v := range []*int{&cfg.AuthFailureLimit, &cfg.UpstreamRateLimit, &cfg.CheckInLimit, &cfg.EnrollFailureLimit, &cfg.ConnsPerIP, &cfg.SessionsPerIP} {
		if *v == 0 {
			*v = -1
		}
	}
	if cfg.DeviceExpiry == 0 {
		cfg.DeviceExpiry = -1
	}
	srv, err := server.New(cfg)
	if err != nil {
		return err
	}
	defer srv.Close()
	return srv.Serve(ctx)
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
	data := fs.String("data", "", "data `directory` of the running server")
	if err := parse(fs, args, "data"); err != nil {
		return err
	}
	a, err := server.OpenAdmin(ctx, server.AdminConfig{DataDir: *data})
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
	var urls []string
	for _, u := range strings.Split(n.urls, ",") {
		if u = strings.TrimSpace(u); u != "" {
			urls = append(urls, u)
		}
	}
	return &server.NATSConfig{URLs: urls, Creds: n.creds, CA: n.ca, Prefix: n.prefix}
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
	asJSON := fs.Bool("json", false, `print {"sender_id": ..., "server_key": ...}`)
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
