// SPDX-License-Identifier: Apache-2.0

//go:build !tether_noinstall

package service

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Actions are what Control accepts.
var Actions = []string{"install", "uninstall", "start", "stop", "restart"}

// Sentinel errors of a Manager.
var (
	ErrNotInstalled = errors.New("service not installed")
	ErrInstalled    = errors.New("service already installed")
)

// Config configures a Manager.
type Config struct {
	// Name of the service: the unit is Name.service, the script
	// /etc/init.d/Name.
	Name string
	// Executable is the daemon's binary; empty means the running one.
	Executable string
	// Arguments follow the binary on the service's command line.
	Arguments []string
	// Init chooses the service manager; InitAuto detects it.
	Init Init
	// Scripts holds the unit or init script to install, by service manager,
	// as shipped. Each is written as it is except the lines that carry its
	// command line (the ExecStart= line of a systemd unit, command= and
	// command_args= of an OpenRC script, ...), which are rewritten to run
	// Executable with Arguments.
	Scripts map[Init]string
	// Root is the root directory of the system the service goes into: a
	// firmware image being built, a package's staging directory, or a
	// test's directory. Empty means the running system. Under a root,
	// Install and Uninstall write and remove files and links only, the
	// service manager is not asked anything, and Init must be given.
	Root string
}

// Manager installs and controls one service.
type Manager struct {
	name   string
	root   string
	kind   Init
	layout layout
	script string // rendered
}

// New returns a Manager for cfg's service on cfg's (or the detected)
// service manager.
func New(cfg Config) (*Manager, error) {
	if cfg.Name == "" || strings.ContainsAny(cfg.Name, "/ \t\n") {
		return nil, fmt.Errorf("service: name %q: want a word without slashes or spaces", cfg.Name)
	}
	kind := cfg.Init
	if kind == InitAuto {
		if cfg.Root != "" {
			return nil, fmt.Errorf("service: under root %s the init system is not detected: choose one", cfg.Root)
		}
		var err error
		if kind, err = detect("/"); err != nil {
			return nil, fmt.Errorf("service: %w", err)
		}
	}
	l, ok := layouts[kind]
	if !ok {
		return nil, fmt.Errorf("service: unknown init system %q", kind)
	}
	script, ok := cfg.Scripts[kind]
	if !ok {
		return nil, fmt.Errorf("service: no %s script to install", kind)
	}
	exe := cfg.Executable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("service: find this binary: %w", err)
		}
	}
	if l.plainExe && shellQuote(exe) != exe {
		return nil, fmt.Errorf("service: %s cannot run %q: put the binary under a path of letters, digits and -_./", kind, exe)
	}
	rendered, err := renderScript(l.command, script, exe, cfg.Arguments)
	if err != nil {
		return nil, fmt.Errorf("service: %s script: %w", kind, err)
	}
	return &Manager{name: cfg.Name, root: cfg.Root, kind: kind, layout: l, script: rendered}, nil
}

// System names the service manager in use (systemd, procd, openrc, sysv).
func (m *Manager) System() string { return string(m.kind) }

// Script is the path of the unit or init script, under the root.
func (m *Manager) Script() string { return filepath.Join(m.root, m.layout.script(m.name)) }

// Control runs one of Actions.
func (m *Manager) Control(ctx context.Context, action string) error {
	var err error
	switch action {
	case "install":
		err = m.install(ctx)
	case "uninstall":
		err = m.uninstall(ctx)
	case "start", "stop", "restart":
		if err = m.found(); err == nil {
			_, err = m.run(ctx, action)
		}
	default:
		return fmt.Errorf("service: unknown action %q, want one of %s", action, strings.Join(Actions, ", "))
	}
	if err != nil {
		return fmt.Errorf("%s %s service %s: %w", action, m.kind, m.name, err)
	}
	return nil
}

// Status reports whether the service runs: "running" or "stopped", or
// ErrNotInstalled.
func (m *Manager) Status(ctx context.Context) (string, error) {
	if err := m.found(); err != nil {
		return "", err
	}
	running, err := m.run(ctx, "status")
	if err != nil {
		return "", fmt.Errorf("status of %s service %s: %w", m.kind, m.name, err)
	}
	if running {
		return "running", nil
	}
	return "stopped", nil
}

// install writes the script and the links that enable it.
func (m *Manager) install(ctx context.Context) error {
	path := m.Script()
	if err := writeNew(path, m.script, fs.FileMode(m.layout.mode)); err != nil {
		return err
	}
	for _, l := range m.layout.links(m.name) {
		p := filepath.Join(m.root, l.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return fmt.Errorf("enable: %w", err)
		}
		// A link left from an earlier install points where this one would.
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("enable: %w", err)
		}
		if err := os.Symlink(l.target, p); err != nil {
			return fmt.Errorf("enable: %w", err)
		}
	}
	return m.reload(ctx)
}

// uninstall removes the links and the script. It leaves a running service
// running.
func (m *Manager) uninstall(ctx context.Context) error {
	if err := m.installed(); err != nil {
		return err
	}
	for _, l := range m.layout.links(m.name) {
		if err := os.Remove(filepath.Join(m.root, l.path)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("disable: %w", err)
		}
	}
	if err := os.Remove(m.Script()); err != nil {
		return err
	}
	return m.reload(ctx)
}

// reload tells a running systemd that units changed; the other managers
// read their scripts when asked.
func (m *Manager) reload(ctx context.Context) error {
	if m.kind != InitSystemd || m.root != "" {
		return nil
	}
	if out, err := exec.CommandContext(ctx, "systemctl", "daemon-reload").CombinedOutput(); err != nil {
		return fmt.Errorf("systemctl daemon-reload: %w: %s", err, bytesTrim(out))
	}
	return nil
}

// found reports ErrNotInstalled unless install or a package put the
// script in place.
func (m *Manager) found() error {
	if m.layout.packaged != nil {
		for _, p := range m.layout.packaged(m.name) {
			if _, err := os.Stat(filepath.Join(m.root, p)); err == nil {
				return nil
			}
		}
	}
	return m.installed()
}

// installed reports ErrNotInstalled unless install put the script in
// place.
func (m *Manager) installed() error {
	if _, err := os.Stat(m.Script()); errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%w: no %s", ErrNotInstalled, m.Script())
	} else if err != nil {
		return err
	}
	return nil
}

// run asks the service manager to do action. It reports whether the
// command exited 0, and an error only when the command could not run or
// action was not "status" (whose other exit statuses mean stopped).
func (m *Manager) run(ctx context.Context, action string) (bool, error) {
	if m.root != "" {
		return false, fmt.Errorf("a service under root %s is not controlled from here", m.root)
	}
	argv := m.layout.control(m.name, action)
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).CombinedOutput()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return true, nil
	case action == "status" && errors.As(err, &exit):
		return false, nil
	}
	return false, fmt.Errorf("%s: %w: %s", strings.Join(argv, " "), err, bytesTrim(out))
}

func bytesTrim(b []byte) string { return strings.TrimSpace(string(b)) }

// writeNew writes a file that must not exist yet, with mode, and the
// directories above it.
func writeNew(path, content string, mode fs.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("%w: %s exists; uninstall first", ErrInstalled, path)
	}
	if err != nil {
		return err
	}
	// The umask may have taken bits the script needs.
	_, err = f.WriteString(content)
	if err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(path)
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// renderScript rewrites script's command lines, each line that starts
// with one of lines' prefixes, to run exe with args.
func renderScript(lines []commandLine, script, exe string, args []string) (string, error) {
	out := strings.SplitAfter(script, "\n")
	for _, cl := range lines {
		n := 0
		for i, line := range out {
			body := strings.TrimLeft(line, " \t")
			if !strings.HasPrefix(body, cl.prefix) {
				continue
			}
			n++
			indent := line[:len(line)-len(body)]
			eol := line[len(strings.TrimRight(line, "\n")):]
			out[i] = indent + cl.prefix + cl.value(exe, args) + eol
		}
		if n != 1 {
			return "", fmt.Errorf("want one %q line, found %d", strings.TrimSpace(cl.prefix), n)
		}
	}
	return strings.Join(out, ""), nil
}
