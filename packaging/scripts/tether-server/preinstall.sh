#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Creates the system user and group tether-server runs as, unless they
# exist, before the files are unpacked: the config file belongs to its
# group.
set -e
name=tether-server
getent passwd "$name" >/dev/null 2>&1 && exit 0

shell=/bin/false
[ -x /usr/sbin/nologin ] && shell=/usr/sbin/nologin
[ -x /sbin/nologin ] && shell=/sbin/nologin
group=--user-group
getent group "$name" >/dev/null 2>&1 && group="--gid $name"
# shellcheck disable=SC2086 # group is two words or one
useradd --system $group --home-dir /var/lib/tether-server --no-create-home \
	--shell "$shell" --comment "Tether connection server" "$name"
