// SPDX-License-Identifier: Apache-2.0

// Command tetherd is the Tether device agent: it keeps the device connected
// to a Tether connection server and serves local apps on a Unix socket.
//
//	tetherd [run] [--config FILE] [flags]        run the agent
//	tetherd config check [--config FILE] [flags] check the settings
//	tetherd install [--init SYSTEM] [--root DIR] [--bin PATH] [flags]
//	                                            install the service: tetherd run [flags]
//	tetherd uninstall [--init SYSTEM] [--root DIR]
//	tetherd start|stop|restart|status [--init SYSTEM]
//	tetherd version
//
// Settings come from the config file (/etc/tether/agent.toml unless
// --config names another; docs/config.md), then from flags, which win.
//
// Under systemd it reports readiness once its store is open and its socket
// listens (Type=notify), pings the watchdog while its store answers, and
// logs to the journal with priorities. It stops cleanly on SIGTERM or
// SIGINT: it stops accepting apps, finishes what it is writing to its
// store, closes the server connection with a close frame and exits 0. A
// usage or configuration error exits 2, a failure 1.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"syscall"

	"tether/agent"
	"tether/internal/clockknob"
	"tether/ipc/dbusdoor"
	"tether/ipc/socketdoor"
	"tether/platform/service"
	"tether/store"
)

// version is set at build time (make build stamps it from git).
var version = "dev"

// defaultGCPercent is the garbage collector's target unless GOGC says
// otherwise. An agent is mostly idle and its live heap small; collecting
// at a quarter of it keeps what a burst of messages left from staying
// resident on a small board (an idle agent: 5.0 MiB of anonymous memory
// at Go's default, 2.1 MiB at 25).
const defaultGCPercent = 25

// defaultMaxProcs is how many threads run the agent's Go code at once
// unless GOMAXPROCS says otherwise. Its work is short hand-offs between
// goroutines around I/O: with one, a wake-up stays on its thread instead
// of waking another, and no idle thread spins looking for work. At full
// speed on two cores (make bench) one takes about a fifth less CPU per
// message, with the same throughput and latency; blocking system calls,
// the fsyncs among them, still run beside it.
const defaultMaxProcs = 1

func main() {
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(defaultGCPercent)
	}
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(defaultMaxProcs)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], environ{
		stdout:  os.Stdout,
		stderr:  os.Stderr,
		getenv:  os.Getenv,
		journal: service.JournalStream(os.Stderr, os.Getenv),
	})
	stop()
	os.Exit(code)
}

// environ is what a run of tetherd gets from its process.
type environ struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	// journal is set when stderr is systemd's journal stream.
	journal bool
}

const usage = `usage: tetherd [run] [flags]            run the agent; tetherd run --help lists the flags
       tetherd config check [flags]     check the config file and flags, and exit
       tetherd install [--init SYSTEM] [--root DIR] [--bin PATH] [flags]
                                        install the service, running tetherd run [flags]
       tetherd uninstall [--init SYSTEM] [--root DIR]
       tetherd start|stop|restart|status [--init SYSTEM]
       tetherd version

SYSTEM is systemd, procd, openrc, sysv or auto (the default: the one running).
DIR is the root of another system (a firmware image): files only, --init needed.
`

// errUsage marks a command line the user must fix; what is wrong has
// already been printed.
var errUsage = errors.New("usage error")

// run is tetherd's main, returning the exit code.
func run(ctx context.Context, args []string, env environ) int {
	cmd := ""
	if len(args) > 0 {
		cmd = args[0]
	}
	switch cmd {
	case "version", "--version":
		fmt.Fprintln(env.stdout, "tetherd", version)
		return 0
	case "help", "-h", "-help", "--help":
		fmt.Fprint(env.stdout, usage)
		return 0
	case "config":
		return runConfig(args[1:], env)
	case "install", "uninstall", "start", "stop", "restart", "status":
		return runService(ctx, cmd, args[1:], env)
	case "run":
		args = args[1:]
	}
	o, err := parseArgs(args, env.stderr)
	if code, done := exitFor(err, env.stderr); done {
		return code
	}
	if o.clockOffset, err = clockknob.FromEnv(env.getenv); err != nil {
		fmt.Fprintln(env.stderr, "tetherd:", err)
		return 2
	}
	if err := o.resolveProxy(env.getenv); err != nil {
		fmt.Fprintln(env.stderr, "tetherd:", err)
		return 2
	}
	// What the settings point to is part of them: a file that cannot be
	// read, or that others can read, is refused as config check refuses
	// it.
	tlsConfig, enrollKey, err := prepare(o)
	if err != nil {
		fmt.Fprintln(env.stderr, "tetherd:", err)
		return 2
	}
	log := newLogger(o.logLevel, env)
	notify, err := service.NewNotifier(env.getenv, os.Getpid())
	if err != nil {
		log.Warn("not notifying systemd", "err", err)
	}
	if err := serve(ctx, o, tlsConfig, enrollKey, log, notify); err != nil {
		log.Error("tetherd failed", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

// exitFor turns a parse error into an exit code, printing what the user
// must fix; done is false when there is no error.
func exitFor(err error, stderr io.Writer) (code int, done bool) {
	switch {
	case err == nil:
		return 0, false
	case errors.Is(err, flag.ErrHelp):
		return 0, true
	case errors.Is(err, errUsage):
		return 2, true
	}
	for line := range strings.SplitSeq(err.Error(), "\n") {
		fmt.Fprintln(stderr, "tetherd:", line)
	}
	return 2, true
}

func newLogger(level slog.Level, env environ) *slog.Logger {
	opts := &slog.HandlerOptions{Level: level}
	if env.journal {
		return slog.New(service.NewJournalHandler(env.stderr, opts))
	}
	return slog.New(slog.NewTextHandler(env.stderr, opts))
}

// parseArgs reads the settings of `tetherd run`: the defaults, the config
// file, then the flags in args.
func parseArgs(args []string, stderr io.Writer) (options, error) {
	// A first pass reports flag errors and finds the config file; the
	// second applies the flags over the file.
	flagsOnly := defaults()
	fs := daemonFlags(&flagsOnly, stderr)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return options{}, err
		}
		return options{}, errUsage
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	problem := ""
	switch {
	case fs.NArg() > 0:
		problem = fmt.Sprintf("unexpected argument %q", fs.Arg(0))
	case set["enroll-key"] && set["enroll-key-file"]:
		problem = "give --enroll-key or --enroll-key-file, not both"
	}
	if problem != "" {
		fmt.Fprintln(stderr, "tetherd:", problem)
		fs.Usage()
		return options{}, errUsage
	}

	o := defaults()
	o.config = flagsOnly.config
	if o.config != "" {
		if err := loadConfig(&o, o.config, set["config"]); err != nil {
			return options{}, err
		}
	}
	if err := daemonFlags(&o, io.Discard).Parse(args); err != nil {
		return options{}, fmt.Errorf("flags: %w", err) // parsed once already
	}
	if err := o.check(); err != nil {
		return options{}, err
	}
	return o, nil
}

// runConfig is `tetherd config check`.
func runConfig(args []string, env environ) int {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprint(env.stderr, "usage: tetherd config check [--config FILE] [flags]\n")
		return 2
	}
	o, err := parseArgs(args[1:], env.stderr)
	if code, done := exitFor(err, env.stderr); done {
		return code
	}
	if err := o.resolveProxy(env.getenv); err != nil {
		fmt.Fprintln(env.stderr, "tetherd:", err)
		return 2
	}
	if _, _, err := prepare(o); err != nil {
		fmt.Fprintln(env.stderr, "tetherd:", err)
		return 2
	}
	switch _, err := os.Stat(o.config); {
	case o.config == "":
		fmt.Fprintln(env.stdout, "no config file; the flags are valid")
	case err != nil:
		fmt.Fprintf(env.stdout, "%s: none, the defaults and flags are valid\n", o.config)
	default:
		fmt.Fprintf(env.stdout, "%s: valid\n", o.config)
	}
	return 0
}

// prepare reads what the settings point to: the CA file, the client
// certificate and the enrollment key. The files of secrets must be the
// owner's alone (checkPrivate).
func prepare(o options) (*tls.Config, string, error) {
	var tlsConfig *tls.Config
	if o.caFile != "" || len(o.serverPins) > 0 || o.certFile != "" {
		tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	if o.caFile != "" {
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return nil, "", fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, "", fmt.Errorf("CA file %s holds no PEM certificate", o.caFile)
		}
		tlsConfig.RootCAs = pool
	}
	if pins := o.serverPins; len(pins) > 0 {
		tlsConfig.VerifyConnection = func(cs tls.ConnectionState) error {
			for _, chain := range cs.VerifiedChains {
				for _, c := range chain {
					if slices.Contains(pins, sha256.Sum256(c.RawSubjectPublicKeyInfo)) {
						return nil
					}
				}
			}
			return errors.New("the server's certificate chain holds none of the pinned public keys")
		}
	}

	if o.certFile != "" {
		if _, err := loadClientCert(o.certFile, o.keyFile); err != nil {
			return nil, "", err
		}
		// Read at each handshake, so that a renewed certificate is used
		// from the next connection on, without a restart.
		tlsConfig.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			cert, err := loadClientCert(o.certFile, o.keyFile)
			return &cert, err
		}
	}

	if o.proxyPasswordInFile {
		if err := checkPrivate("config file holding the proxy's password,", o.config); err != nil {
			return nil, "", err
		}
	}

	enrollKey := o.enrollKey
	if o.enrollKeyFile != "" {
		if err := checkPrivate("enrollment key file", o.enrollKeyFile); err != nil {
			return nil, "", err
		}
		b, err := os.ReadFile(o.enrollKeyFile)
		if err != nil {
			return nil, "", fmt.Errorf("read enrollment key: %w", err)
		}
		if enrollKey = strings.TrimSpace(string(b)); enrollKey == "" {
			return nil, "", fmt.Errorf("read enrollment key: %s is empty", o.enrollKeyFile)
		}
	}
	return tlsConfig, enrollKey, nil
}

// loadClientCert reads the client certificate and its private key, which
// must be private.
func loadClientCert(certFile, keyFile string) (tls.Certificate, error) {
	if err := checkPrivate("client key file", keyFile); err != nil {
		return tls.Certificate{}, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("read client certificate %s and key %s: %w", certFile, keyFile, err)
	}
	return cert, nil
}

// checkPrivate refuses a file of secrets that its group or others may
// read or change, as ssh and Mosquitto refuse a private key that others
// can read: whoever reads an enrollment key can enroll devices, and
// whoever reads a device's key can be the device.
func checkPrivate(what, path string) error {
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("read %s: %w", what, err)
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%s %s has mode %04o, which gives its group or others access: make it the owner's alone with chmod 600 %s", what, path, perm, path)
	}
	return nil
}

func serve(ctx context.Context, o options, tlsConfig *tls.Config, enrollKey string, log *slog.Logger, notify *service.Notifier) error {
	st, err := store.Open(filepath.Join(o.data, "agent.db"))
	if err != nil {
		return err
	}
	defer st.Close()

	var dbusDoor *dbusdoor.Server // set before the agent runs
	cfg := agent.Config{
		Store:       st,
		Servers:     o.servers,
		TLS:         tlsConfig,
		Insecure:    o.insecure,
		Proxy:       o.proxy,
		EnrollKey:   enrollKey,
		Heartbeat:   o.heartbeat,
		MinBackoff:  o.minBackoff,
		MaxBackoff:  o.maxBackoff,
		AppOwners:   o.apps,
		ClockOffset: o.clockOffset,

		UserRegistrations: o.userRegistrations,
		Quota:             o.quota,
		Name:              "tetherd/" + version,
		Logger:            log.With("part", "agent"),
		OnStatusChange: func() {
			if dbusDoor != nil {
				dbusDoor.StatusChanged()
			}
		},
	}
	if o.heartbeat == 0 {
		cfg.HeartbeatPolicy = &o.policy
	}
	a, err := agent.New(cfg)
	if err != nil {
		return err
	}
	door, err := socketdoor.New(socketdoor.Config{
		Path:    o.socket,
		Mode:    o.socketMode,
		Backend: a,
		Logger:  log,
	})
	if err != nil {
		return err
	}
	defer door.Close()
	systemBus := connectSystemBus(ctx, log)
	if systemBus != nil {
		defer systemBus.Close() // after the watchers have stopped
	}
	if dbusDoor, err = openDBusDoor(o, systemBus, a, log.With("door", "dbus")); err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var doorErr, agentErr error
	wg.Add(3)
	go func() {
		defer wg.Done()
		defer cancel() // the agent is no use without its door
		doorErr = door.Serve(ctx)
	}()
	if dbusDoor != nil {
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Apps on the bus lose their door when the bus goes, but the
			// socket and the connection go on.
			if err := dbusDoor.Serve(ctx); err != nil && ctx.Err() == nil {
				log.Error("D-Bus door closed", "err", err)
			}
		}()
	}
	go func() {
		defer wg.Done()
		defer cancel()
		agentErr = a.Run(ctx)
	}()
	watchPlatform(ctx, &wg, systemBus, a, o, log)
	go func() {
		defer wg.Done()
		// Pinging only while the store answers lets systemd restart an
		// agent whose store or state lock is stuck.
		notify.Watchdog(ctx, func(ctx context.Context) error {
			_, err := a.Status(ctx)
			return err
		}, func(err error) { log.Warn("watchdog", "err", err) })
	}()
	log.Info("ready", "version", version, "servers", o.servers, "proxy", o.proxyRules, "socket", o.socket, "data", o.data)
	if err := notify.Ready("serving apps on " + o.socket); err != nil {
		log.Warn("not notifying systemd", "err", err)
	}
	<-ctx.Done()
	log.Info("stopping")
	if err := notify.Stopping(); err != nil {
		log.Warn("not notifying systemd", "err", err)
	}
	wg.Wait()
	return errors.Join(doorErr, agentErr)
}
