// Command tetherd is the Tether device agent: it keeps the device connected
// to a Tether connection server and serves local apps on a Unix socket.
//
//	tetherd version
//	tetherd [run] --server URL [--data DIR] [--socket PATH] [--socket-mode MODE]
//	        [--ca-file FILE] [--enroll-key KEY | --enroll-key-file FILE] [--heartbeat DURATION]
//	        [--log-level LEVEL]
//
// It stops cleanly on SIGTERM or SIGINT: it stops accepting apps, finishes
// what it is writing to its store, closes the server connection with a
// close frame and exits 0. A usage error exits 2, a failure 1.
package main

import (
	"context"
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
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"tether/agent"
	"tether/ipc"
	"tether/store"
)

// version is set at build time (make build stamps it from git).
var version = "dev"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// options are the parsed command line.
type options struct {
	server     string
	data       string
	socket     string
	socketMode os.FileMode
	caFile     string
	enrollKey  string
	// enrollKeyFile holds the enrollment key, kept out of ps.
	enrollKeyFile string
	heartbeat     time.Duration
	logLevel      slog.Level
}

// errUsage marks a command line the user must fix; the flag package has
// already printed what is wrong.
var errUsage = errors.New("usage error")

func parseArgs(args []string, stderr io.Writer) (options, error) {
	if len(args) > 0 && args[0] == "run" {
		args = args[1:]
	}
	o := options{socketMode: ipc.DefaultSocketMode}
	fs := flag.NewFlagSet("tetherd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: tetherd [run] --server URL [flags]\n\nflags:\n")
		fs.PrintDefaults()
	}
	fs.StringVar(&o.server, "server", "", "connection server `URL` (ws://, wss://, http:// or https://)")
	fs.StringVar(&o.data, "data", "/var/lib/tether", "`directory` of the agent's store")
	fs.StringVar(&o.socket, "socket", "/run/tether/tetherd.sock", "`path` of the apps' Unix socket")
	fs.Func("socket-mode", "permissions of the socket, an octal `mode` (default 0666)", func(s string) error {
		m, err := strconv.ParseUint(s, 8, 32)
		if err != nil || m > 0o777 {
			return fmt.Errorf("want an octal mode like 0660")
		}
		o.socketMode = os.FileMode(m)
		return nil
	})
	fs.StringVar(&o.caFile, "ca-file", "", "PEM `file` of the CA certificates to trust for wss:// (default: the system's)")
	fs.StringVar(&o.enrollKey, "enroll-key", "", "enrollment `key` for the first check-in, if the server requires one")
	fs.StringVar(&o.enrollKeyFile, "enroll-key-file", "", "`file` holding the enrollment key (keeps it out of ps)")
	fs.DurationVar(&o.heartbeat, "heartbeat", agent.DefaultHeartbeat, "interval between heartbeats")
	fs.TextVar(&o.logLevel, "log-level", slog.LevelInfo, "log `level`: debug, info, warn or error")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return o, err
		}
		return o, errUsage
	}
	problem := ""
	switch {
	case fs.NArg() > 0:
		problem = fmt.Sprintf("unexpected argument %q", fs.Arg(0))
	case o.server == "":
		problem = "--server is required"
	case o.enrollKey != "" && o.enrollKeyFile != "":
		problem = "give --enroll-key or --enroll-key-file, not both"
	case o.heartbeat < time.Second:
		problem = "--heartbeat must be at least 1s"
	}
	if problem == "" {
		if _, err := agent.Endpoint(o.server); err != nil {
			problem = err.Error()
		}
	}
	if problem != "" {
		fmt.Fprintln(stderr, "tetherd:", problem)
		fs.Usage()
		return o, errUsage
	}
	return o, nil
}

// run is tetherd's main, returning the exit code.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && (args[0] == "version" || args[0] == "--version") {
		fmt.Fprintln(stdout, "tetherd", version)
		return 0
	}
	o, err := parseArgs(args, stderr)
	switch {
	case errors.Is(err, flag.ErrHelp):
		return 0
	case err != nil:
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: o.logLevel}))
	if err := serve(ctx, o, log); err != nil {
		log.Error("tetherd failed", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}

func serve(ctx context.Context, o options, log *slog.Logger) error {
	var tlsConfig *tls.Config
	if o.caFile != "" {
		pem, err := os.ReadFile(o.caFile)
		if err != nil {
			return fmt.Errorf("read CA file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return fmt.Errorf("CA file %s holds no PEM certificate", o.caFile)
		}
		tlsConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}

	if o.enrollKeyFile != "" {
		b, err := os.ReadFile(o.enrollKeyFile)
		if err != nil {
			return fmt.Errorf("read enrollment key: %w", err)
		}
		if o.enrollKey = strings.TrimSpace(string(b)); o.enrollKey == "" {
			return fmt.Errorf("read enrollment key: %s is empty", o.enrollKeyFile)
		}
	}

	st, err := store.Open(filepath.Join(o.data, "agent.db"))
	if err != nil {
		return err
	}
	defer st.Close()

	a, err := agent.New(agent.Config{
		Store:     st,
		ServerURL: o.server,
		TLS:       tlsConfig,
		EnrollKey: o.enrollKey,
		Heartbeat: o.heartbeat,
		Name:      "tetherd/" + version,
		Logger:    log.With("part", "agent"),
	})
	if err != nil {
		return err
	}
	door, err := ipc.NewSocketServer(ipc.SocketConfig{
		Path:    o.socket,
		Mode:    o.socketMode,
		Backend: a,
		Logger:  log,
	})
	if err != nil {
		return err
	}

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var doorErr, agentErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer cancel() // the agent is no use without its door
		doorErr = door.Serve(ctx)
	}()
	go func() {
		defer wg.Done()
		defer cancel()
		agentErr = a.Run(ctx)
	}()
	log.Info("ready", "version", version, "server", o.server, "socket", o.socket, "data", o.data)
	<-ctx.Done()
	log.Info("stopping")
	wg.Wait()
	return errors.Join(doorErr, agentErr)
}
