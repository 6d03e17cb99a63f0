#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Writes the maintainer scripts of one package, from the templates in
# packaging/scripts/{deb,rpm,apk}/, into OUT/{deb,rpm,apk}/: one set of
# scripts serves tetherd and tether-server, which differ only in the
# names filled in here. Beside them: OUT/preinst, which creates the
# package's user for every format, and tetherd's OpenWrt scripts, OUT/ipk/.
#
#   packaging/scripts/render.sh PACKAGE OUT     PACKAGE: tetherd or tether-server
set -eu
pkg=$1
out=$2
here=$(dirname "$0")
case "$pkg" in
tetherd) user=tether preinst=$here/preinstall.sh ;;
tether-server) user=tether-server preinst=$here/tether-server/preinstall.sh ;;
*)
	echo "render.sh: unknown package $pkg (tetherd or tether-server)" >&2
	exit 2
	;;
esac
for f in "$here"/deb/* "$here"/rpm/* "$here"/apk/*; do
	dst=$out/$(basename "$(dirname "$f")")/$(basename "$f")
	mkdir -p "$(dirname "$dst")"
	sed -e "s|@PACKAGE@|$pkg|g; s|@UNIT@|$pkg.service|g; s|@USER@|$user|g; s|@STATE@|/var/lib/$user|g" \
		-e "/^@FIRST_RUN@\$/{r $here/$pkg.first-run" -e 'd;}' "$f" >"$dst"
done
cp "$preinst" "$out/preinst"
if [ "$pkg" = tetherd ]; then
	mkdir -p "$out/ipk"
	cp "$here"/ipk/* "$out/ipk/"
fi
# The .apk and .ipk keep the scripts' times: a fixed one, as for the
# packages' files (mtime in the nfpm descriptions), keeps them
# reproducible.
find "$out" -type f -exec chmod 0755 {} + -exec touch -d 2024-01-01T00:00:00Z {} +
