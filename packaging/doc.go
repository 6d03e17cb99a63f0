// SPDX-License-Identifier: Apache-2.0

// Package packaging holds what Tether's packages and firmware recipes
// install beside the binaries: the systemd unit (systemd), the init
// scripts for procd (openwrt), OpenRC (openrc) and SysV init (sysv), the
// D-Bus policy and interface description, the default settings, nfpm's
// package descriptions and the maintainer scripts of each package format
// (scripts, rendered for each package by scripts/render.sh). The
// subpackages embed the unit and scripts, so that `tetherd install`
// writes the same files the packages install.
package packaging
