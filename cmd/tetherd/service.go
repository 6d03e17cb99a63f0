// SPDX-License-Identifier: Apache-2.0

//go:build !tether_noinstall

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"

	"tether/packaging/openrc"
	"tether/packaging/openwrt"
	"tether/packaging/systemd"
	"tether/packaging/sysv"
	"tether/platform/service"
)

// shippedBinary is where packages and firmware images put tetherd: what a
// service installed under --root runs unless --bin says otherwise.
const shippedBinary = systemd.Executable

// runService installs or controls tetherd as a system service.
func runService(ctx context.Context, action string, args []string, env environ) int {
	initName := "auto"
	var root, bin string
	var daemonArgs []string
	fs := flag.NewFlagSet("tetherd "+action, flag.ContinueOnError)
	fs.SetOutput(env.stderr)
	if action == "install" {
		// Every flag but --init, --root and --bin is for the installed
		// `tetherd run`: parsed now, so that a typo fails here and not at
		// boot.
		flagsOnly := defaults()
		fs = daemonFlags(&flagsOnly, env.stderr)
		fs.VisitAll(func(f *flag.Flag) { f.Value = recorder{Value: f.Value, name: f.Name, args: &daemonArgs} })
		fs.Usage = func() {
			fmt.Fprintf(env.stderr, "usage: tetherd install [--init SYSTEM] [--root DIR] [--bin PATH] [flags of tetherd run]\n\nflags:\n")
			fs.PrintDefaults()
		}
		fs.StringVar(&bin, "bin", "", "`path` of the tetherd the service runs (default: this binary; "+shippedBinary+" under --root)")
	}
	if action == "install" || action == "uninstall" {
		fs.StringVar(&root, "root", "", "root `directory` of the system to "+action+" into (a firmware image, a package's staging directory): files only, the service manager is not asked; needs --init")
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
	if bin == "" && root != "" {
		bin = shippedBinary
	}
	m, err := service.New(service.Config{
		Name:       "tetherd",
		Executable: bin,
		Arguments:  append([]string{"run"}, daemonArgs...),
		Init:       kind,
		Root:       root,
		Scripts: map[service.Init]string{
			service.InitSystemd: systemd.Unit,
			service.InitProcd:   openwrt.InitScript,
			service.InitOpenRC:  openrc.InitScript,
			service.InitSysV:    sysv.InitScript,
		},
	})
	if err != nil {
		fmt.Fprintln(env.stderr, "tetherd:", err)
		return 1
	}
	if action == "status" {
		st, err := m.Status(ctx)
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
	if err := m.Control(ctx, action); err != nil {
		fmt.Fprintln(env.stderr, "tetherd:", err)
		return 1
	}
	fmt.Fprintf(env.stdout, "%s: done (%s, %s)\n", action, m.System(), m.Script())
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
