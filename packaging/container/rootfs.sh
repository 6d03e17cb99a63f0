#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Lays out every file of tether-server's container image under ROOT: the
# static binary, the packaged config, the CA certificates for webhooks
# and ACME, an /etc/passwd and /etc/group naming the unprivileged user,
# and the data directory that user owns. The Dockerfile runs it in its
# build stage and copies ROOT onto an empty base; the container test
# (cross/container_test.go) runs it into a directory and the server from
# there with chroot --userspec, as the image would. Needs root for chown.
#
#   packaging/container/rootfs.sh BINARY ROOT UID
#
#   CA_BUNDLE  the CA certificates to trust (default: Debian's bundle)
set -eu
if [ $# -ne 3 ]; then
	echo "usage: $0 BINARY ROOT UID" >&2
	exit 2
fi
bin=$1 root=$2 uid=$3
here=$(dirname "$0")
ca=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
data=/var/lib/tether-server

install -D -m 0755 "$bin" "$root/usr/bin/tether-server"
install -D -m 0644 "$here/../config/server.toml" "$root/etc/tether/server.toml"
install -D -m 0644 "$ca" "$root/etc/ssl/certs/ca-certificates.crt"
cat >"$root/etc/passwd" <<PASSWD
root:x:0:0:root:/:/sbin/nologin
tether-server:x:$uid:$uid:Tether connection server:$data:/sbin/nologin
PASSWD
cat >"$root/etc/group" <<GROUP
root:x:0:
tether-server:x:$uid:
GROUP
chmod 0644 "$root/etc/passwd" "$root/etc/group"
install -d -o "$uid" -g "$uid" -m 0700 "$root$data"
