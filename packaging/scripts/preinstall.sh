#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Creates the system user and group tetherd runs as, unless they exist.
# Runs on Debian and RPM distributions (useradd), Alpine (BusyBox adduser)
# and OpenWrt (/lib/functions.sh, also inside an image build, where
# IPKG_INSTROOT is the image's root).
set -e
name=tether
home=/var/lib/tether
root=${IPKG_INSTROOT:-}

if grep -qs "^$name:" "$root/etc/passwd" || { [ -z "$root" ] && getent passwd "$name" >/dev/null 2>&1; }; then
	exit 0
fi

nologin=/bin/false
for s in /usr/sbin/nologin /sbin/nologin; do
	if [ -x "$root$s" ]; then nologin=$s; break; fi
done

if [ -z "$root" ] && command -v useradd >/dev/null 2>&1; then
	if getent group "$name" >/dev/null 2>&1; then
		group="--gid $name"
	else
		group=--user-group
	fi
	# shellcheck disable=SC2086 # group is two words or one
	useradd --system $group --home-dir "$home" --no-create-home \
		--shell "$nologin" --comment "Tether push agent" "$name"
elif [ -z "$root" ] && command -v adduser >/dev/null 2>&1 && command -v addgroup >/dev/null 2>&1; then
	grep -qs "^$name:" /etc/group || addgroup -S "$name"
	adduser -S -D -H -h "$home" -s "$nologin" -G "$name" -g "Tether push agent" "$name"
elif [ -f "$root/lib/functions.sh" ]; then
	. "$root/lib/functions.sh"
	# The first id from 200 free as both a uid and a gid.
	id=200
	while cut -d: -f3 "$root/etc/passwd" "$root/etc/group" | grep -qx "$id"; do
		id=$((id + 1))
	done
	group_exists "$name" || group_add "$name" "$id"
	gid=$(grep "^$name:" "$root/etc/group" | cut -d: -f3)
	user_add "$name" "$id" "$gid" "Tether push agent" "$home" "$nologin"
else
	echo "tetherd: cannot create the $name user: no useradd, adduser or OpenWrt functions" >&2
	exit 1
fi
