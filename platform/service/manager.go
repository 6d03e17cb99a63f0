//go:build !tether_noinstall

package service

import (
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"

	kservice "github.com/kardianos/service"
)

// Init names a service manager.
type Init string

// The service managers a Manager handles. InitAuto picks the one the
// device runs, as github.com/kardianos/service detects it.
const (
	InitAuto    Init = ""
	InitSystemd Init = "systemd"
	InitProcd   Init = "procd"
	InitOpenRC  Init = "openrc"
	InitSysV    Init = "sysv"
)

// kardianosNames maps each Init to the system's name in kardianos/service.
var kardianosNames = map[Init]string{
	InitSystemd: "linux-systemd",
	InitProcd:   "linux-procd",
	InitOpenRC:  "linux-openrc",
	InitSysV:    "unix-systemv",
}

// ParseInit turns a name as a user gives it (systemd, procd, openrc, sysv,
// or auto) into an Init.
func ParseInit(s string) (Init, error) {
	if s == "auto" || s == "" {
		return InitAuto, nil
	}
	if _, ok := kardianosNames[Init(s)]; ok {
		return Init(s), nil
	}
	return "", fmt.Errorf("init system %q: want systemd, procd, openrc, sysv or auto", s)
}

// Actions are what Control accepts.
var Actions = []string{"install", "uninstall", "start", "stop", "restart"}

// ErrNotInstalled is what Status returns when the service is not installed.
var ErrNotInstalled = kservice.ErrNotInstalled

// Config configures a Manager.
type Config struct {
	// Name of the service: the unit is Name.service, the script
	// /etc/init.d/Name.
	Name        string
	Description string
	// Executable is the daemon's binary; empty means the running one.
	Executable string
	// Arguments follow the binary on the service's command line.
	Arguments []string
	// Init chooses the service manager; InitAuto detects it.
	Init Init
	// Scripts holds the unit or init script to install, by service manager;
	// for one not listed, kardianos/service's generic script is used. Each
	// is written as it is except its command line (the ExecStart= line of a
	// systemd unit, the "procd_set_param command" line of a procd script),
	// which is rewritten to run Executable with Arguments.
	Scripts map[Init]string
}

// Manager installs and controls one service.
type Manager struct {
	svc    kservice.Service
	system string
}

// New returns a Manager for cfg's service on cfg's (or the detected)
// service manager.
func New(cfg Config) (*Manager, error) {
	if cfg.Name == "" {
		return nil, errors.New("service: no name")
	}
	system := kservice.ChosenSystem()
	if cfg.Init != InitAuto {
		name, ok := kardianosNames[cfg.Init]
		if !ok {
			return nil, fmt.Errorf("service: unknown init system %q", cfg.Init)
		}
		i := slices.IndexFunc(kservice.AvailableSystems(), func(s kservice.System) bool { return s.String() == name })
		if i < 0 {
			return nil, fmt.Errorf("service: init system %s is not supported on this platform", cfg.Init)
		}
		system = kservice.AvailableSystems()[i]
	}
	if system == nil {
		return nil, errors.New("service: no service manager detected; choose one")
	}
	exe := cfg.Executable
	if exe == "" {
		var err error
		if exe, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("service: find this binary: %w", err)
		}
	}
	kc := &kservice.Config{
		Name:        cfg.Name,
		Description: cfg.Description,
		Executable:  exe,
		Arguments:   cfg.Arguments,
		Option:      kservice.KeyValue{},
	}
	kind := initOf(system.String())
	if script, ok := cfg.Scripts[kind]; ok {
		rendered, err := renderScript(kind, script, exe, cfg.Arguments)
		if err != nil {
			return nil, fmt.Errorf("service: %s script: %w", kind, err)
		}
		switch kind {
		case InitSystemd:
			kc.Option["SystemdScript"] = rendered
		case InitOpenRC:
			kc.Option["OpenRCScript"] = rendered
		default: // procd and SysV read the same option
			kc.Option["SysvScript"] = rendered
		}
	}
	svc, err := system.New(noRun{}, kc)
	if err != nil {
		return nil, fmt.Errorf("service: %w", err)
	}
	return &Manager{svc: svc, system: system.String()}, nil
}

func initOf(kardianosName string) Init {
	for i, n := range kardianosNames {
		if n == kardianosName {
			return i
		}
	}
	return InitAuto
}

// System names the service manager in use, as kardianos/service does
// (linux-systemd, linux-procd, ...).
func (m *Manager) System() string { return m.system }

// Control runs one of Actions.
func (m *Manager) Control(action string) error {
	var err error
	switch action {
	case "install":
		err = m.svc.Install()
	case "uninstall":
		err = m.svc.Uninstall()
	case "start":
		err = m.svc.Start()
	case "stop":
		err = m.svc.Stop()
	case "restart":
		err = m.svc.Restart()
	default:
		return fmt.Errorf("service: unknown action %q, want one of %s", action, strings.Join(Actions, ", "))
	}
	if err != nil {
		return fmt.Errorf("%s %s: %w", action, m.system, err)
	}
	return nil
}

// Status reports whether the service runs: "running" or "stopped", or
// ErrNotInstalled.
func (m *Manager) Status() (string, error) {
	st, err := m.svc.Status()
	if err != nil {
		if errors.Is(err, kservice.ErrNotInstalled) {
			return "", ErrNotInstalled
		}
		return "", fmt.Errorf("status %s: %w", m.system, err)
	}
	switch st {
	case kservice.StatusRunning:
		return "running", nil
	case kservice.StatusStopped:
		return "stopped", nil
	}
	return "", fmt.Errorf("status %s: unknown", m.system)
}

// noRun is the kardianos/service program: tetherd runs its own main loop
// and only uses the library to install and control the service, so the
// library's Run is never called.
type noRun struct{}

func (noRun) Start(kservice.Service) error { return errors.New("service: Run is not used") }
func (noRun) Stop(kservice.Service) error  { return nil }

// renderScript rewrites script's command line to run exe with args. The
// result is a kardianos/service template without actions, so that it is
// written out as it is.
func renderScript(kind Init, script, exe string, args []string) (string, error) {
	if strings.Contains(script, "{{") || strings.Contains(script, "}}") {
		return "", errors.New("holds template braces")
	}
	var prefix string
	var quote func(string) string
	switch kind {
	case InitSystemd:
		prefix, quote = "ExecStart=", systemdQuote
	case InitProcd:
		prefix, quote = "procd_set_param command ", shellQuote
	default:
		return "", fmt.Errorf("no command line to rewrite for %s", kind)
	}
	lines := strings.SplitAfter(script, "\n")
	n := 0
	for i, line := range lines {
		body := strings.TrimLeft(line, " \t")
		if !strings.HasPrefix(body, prefix) {
			continue
		}
		n++
		words := []string{quote(exe)}
		for _, a := range args {
			words = append(words, quote(a))
		}
		indent := line[:len(line)-len(body)]
		eol := line[len(strings.TrimRight(line, "\n")):]
		lines[i] = indent + prefix + strings.Join(words, " ") + eol
	}
	if n != 1 {
		return "", fmt.Errorf("want one %q line, found %d", strings.TrimSpace(prefix), n)
	}
	return strings.Join(lines, ""), nil
}

// systemdQuote quotes one word of an ExecStart= command line when it needs
// it (systemd.service(5), "Command lines"), and escapes the specifier and
// variable characters systemd would otherwise expand.
func systemdQuote(s string) string {
	s = strings.NewReplacer("%", "%%", "$", "$$").Replace(s)
	if s != "" && !strings.ContainsAny(s, " \t\n\"'\\;") {
		return s
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`, "\t", `\t`).Replace(s) + `"`
}

// shellQuote quotes one word for /bin/sh when it needs it.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:,@+") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
