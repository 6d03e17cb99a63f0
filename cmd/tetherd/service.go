//go:build !tether_noinstall

package main

import (
	"errors"
	"flag"
	"fmt"

	"tether/packaging/openwrt"
	"tether/packaging/systemd"
	"tether/platform/service"
)

// runService installs or controls tetherd as a system service.
func runService(action string, args []string, env environ) int {
	initName := "auto"
	var daemonArgs []string
	fs := flag.NewFlagSet("tetherd "+action, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	if action == "install" {
		// Every flag but --init is for the installed `tetherd run`: parsed
		// now, so that a typo fails here and not at boot.
		flagsOnly := defaults()
		fs = daemonFlags(&flagsOnly, env.stderr)
		fs.VisitAll(func(f *flag.Flag) { f.Value = recorder{Value: f.Value, name: f.Name, args: &daemonArgs} })
		fs.Usage = func() {
			fmt.Fprintf(env.stderr, "usage: tetherd install [--init SYSTEM] [flags of tetherd run]\n\nflags:\n")
			fs.PrintDefaults()
		}
	}
	fs.StringVar(&initName, "init", initName, "service `system`: systemd, procd, openrc, sysv or auto")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(env.stderr, "tetherd: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	kind, err := service.ParseInit(initName)
	if err != nil {
		fmt.Fprintln(env.stderr, "tetherd:", err)
		return 2
	}
	m, err := service.New(service.Config{
		Name:        "tetherd",
		Description: "Tether push-messaging agent",
		Arguments:   append([]string{"run"}, daemonArgs...),
		Init:        kind,
		Scripts: map[service.Init]string{
			service.InitSystemd: systemd.Unit,
			service.InitProcd:   openwrt.InitScript,
		},
	})
	if err != nil {
		fmt.Fprintln(env.stderr, "tetherd:", err)
		return 1
	}
	if action == "status" {
		st, err := m.Status()
		switch {
		case errors.Is(err, service.ErrNotInstalled):
			fmt.Fprintf(env.stdout, "not installed (%s)\n", m.System())
			return 4
		case err != nil:
			fmt.Fprintln(env.stderr, "tetherd:", err)
			return 1
		}
		fmt.Fprintf(env.stdout, "%s (%s)\n", st, m.System())
		if st != "running" {
			return 3
		}
		return 0
	}
	if err := m.Control(action); err != nil {
		fmt.Fprintln(env.stderr, "tetherd:", err)
		return 1
	}
	fmt.Fprintf(env.stdout, "%s: done (%s)\n", action, m.System())
	return 0
}

// recorder passes a flag's values on and records them as arguments of
// the command line that will run tetherd.
type recorder struct {
	flag.Value
	name string
	args *[]string
}

func (r recorder) Set(s string) error {
	*r.args = append(*r.args, "--"+r.name+"="+s)
	return r.Value.Set(s)
}
