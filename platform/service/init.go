// SPDX-License-Identifier: Apache-2.0

//go:build !tether_noinstall

package service

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Init names a service manager.
type Init string

// The service managers a Manager handles. InitAuto picks the one the
// running system booted with.
const (
	InitAuto    Init = ""
	InitSystemd Init = "systemd"
	InitProcd   Init = "procd"
	InitOpenRC  Init = "openrc"
	InitSysV    Init = "sysv"
)

// ParseInit turns a name as a user gives it (systemd, procd, openrc, sysv,
// or auto) into an Init.
func ParseInit(s string) (Init, error) {
	if s == "auto" || s == "" {
		return InitAuto, nil
	}
	if _, ok := layouts[Init(s)]; ok {
		return Init(s), nil
	}
	return "", fmt.Errorf("init system %q: want systemd, procd, openrc, sysv or auto", s)
}

// ErrNoInit is what detection returns when the system shows none of the
// service managers a Manager handles.
var ErrNoInit = errors.New("no service manager found (no /run/systemd/system, /sbin/procd, /run/openrc/softlevel or /etc/init.d): choose one")

// detect names the service manager of the system whose root directory is
// root, by what each leaves behind when it runs. systemd comes first: its
// machines often carry an /etc/init.d of compatibility scripts too.
func detect(root string) (Init, error) {
	for _, m := range []struct {
		kind Init
		path string
	}{
		{InitSystemd, "/run/systemd/system"}, // sd_booted(3)
		{InitProcd, "/sbin/procd"},
		{InitOpenRC, "/run/openrc/softlevel"}, // written by OpenRC at boot, not by installing it
		{InitSysV, "/etc/init.d"},
	} {
		if _, err := os.Stat(filepath.Join(root, m.path)); err == nil {
			return m.kind, nil
		}
	}
	return "", ErrNoInit
}
