// SPDX-License-Identifier: Apache-2.0

//go:build !tether_noinstall

package service

import (
	"os/exec"
	"strings"
)

// layout is where a service manager keeps a service's script, what enables
// it, and the lines of the script that name the command to run.
type layout struct {
	// script is the unit's or init script's path for a service name.
	script func(name string) string
	mode   uint32
	// packaged lists where packages put the script, for the start, stop
	// and status of a service that install did not write.
	packaged func(name string) []string
	// links enable the service at boot: each is a symbolic link to the
	// script, as the manager's own enable command would make it.
	links func(name string) []link
	// command lists the script's lines that carry the command line, by
	// their start; install rewrites each (renderScript).
	command []commandLine
	// plainExe is set where the binary's path cannot be quoted: it must
	// be a word the shell leaves as it is.
	plainExe bool
	// control is the command line that makes the manager start, stop,
	// restart or report on the service.
	control func(name, action string) []string
}

// link is a symbolic link at path pointing to target.
type link struct{ path, target string }

// commandLine is a line of a script that starts with prefix and carries
// the daemon's command line, as value renders it.
type commandLine struct {
	prefix string
	value  func(exe string, args []string) string
}

var layouts = map[Init]layout{
	InitSystemd: {
		script: func(name string) string { return "/etc/systemd/system/" + name + ".service" },
		mode:   0o644,
		packaged: func(name string) []string {
			return []string{"/usr/lib/systemd/system/" + name + ".service", "/lib/systemd/system/" + name + ".service"}
		},
		// The shipped unit's [Install] says WantedBy=multi-user.target.
		links: func(name string) []link {
			unit := "/etc/systemd/system/" + name + ".service"
			return []link{{"/etc/systemd/system/multi-user.target.wants/" + name + ".service", unit}}
		},
		command: []commandLine{{"ExecStart=", func(exe string, args []string) string {
			return words(systemdQuote, exe, args)
		}}},
		control: func(name, action string) []string {
			if action == "status" {
				action = "is-active"
			}
			return []string{"systemctl", action, name + ".service"}
		},
	},
	InitProcd: {
		script: initScript,
		mode:   0o755,
		// What `/etc/init.d/NAME enable` makes from START=95 and STOP=10
		// in the shipped script.
		links:   rcLinks("95", []string{"/etc/rc.d"}, "10", []string{"/etc/rc.d"}),
		command: []commandLine{{"procd_set_param command ", shellCommand}},
		control: func(name, action string) []string { return []string{initScript(name), action} },
	},
	InitOpenRC: {
		script: initScript,
		mode:   0o755,
		// What `rc-update add NAME default` makes.
		links: func(name string) []link {
			return []link{{"/etc/runlevels/default/" + name, initScript(name)}}
		},
		// openrc-run passes command_args through eval: it holds words
		// quoted for the shell, itself quoted. It uses command unquoted,
		// inside eval and out.
		plainExe: true,
		command: []commandLine{
			{"command=", func(exe string, _ []string) string { return shellQuote(exe) }},
			{"command_args=", func(_ string, args []string) string { return shellQuote(words(shellQuote, "", args)) }},
		},
		control: func(name, action string) []string { return []string{"rc-service", name, action} },
	},
	InitSysV: {
		script: initScript,
		mode:   0o755,
		// The runlevels of the shipped script's LSB header, and what
		// update-rc.d makes of them.
		links: rcLinks("95", []string{"/etc/rc2.d", "/etc/rc3.d", "/etc/rc4.d", "/etc/rc5.d"}, "05", []string{"/etc/rc0.d", "/etc/rc1.d", "/etc/rc6.d"}),
		// The shipped script evals DAEMON_ARGS, as openrc-run does
		// command_args.
		command: []commandLine{
			{"DAEMON=", func(exe string, _ []string) string { return shellQuote(exe) }},
			{"DAEMON_ARGS=", func(_ string, args []string) string { return shellQuote(words(shellQuote, "", args)) }},
		},
		control: func(name, action string) []string {
			if _, err := exec.LookPath("service"); err != nil {
				return []string{initScript(name), action} // BusyBox has no service(8)
			}
			return []string{"service", name, action}
		},
	},
}

func initScript(name string) string { return "/etc/init.d/" + name }

// rcLinks returns the links from rc directories to an init script that
// start the service (S and the sequence number start) in startDirs and
// stop it (K and stop) in stopDirs.
func rcLinks(start string, startDirs []string, stop string, stopDirs []string) func(name string) []link {
	return func(name string) []link {
		var links []link
		add := func(prefix string, dirs []string) {
			for _, d := range dirs {
				links = append(links, link{d + "/" + prefix + name, "../init.d/" + name})
			}
		}
		add("S"+start, startDirs)
		add("K"+stop, stopDirs)
		return links
	}
}

// shellCommand renders a command line of words for /bin/sh.
func shellCommand(exe string, args []string) string { return words(shellQuote, exe, args) }

// words quotes exe (when not empty) and args with quote and joins them
// with spaces.
func words(quote func(string) string, exe string, args []string) string {
	var ws []string
	if exe != "" {
		ws = append(ws, quote(exe))
	}
	for _, a := range args {
		ws = append(ws, quote(a))
	}
	return strings.Join(ws, " ")
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
