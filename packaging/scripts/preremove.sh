#!/bin/sh
# Before the package goes (not on an upgrade): stop and disable the service.
#   deb: remove, upgrade, deconfigure or failed-upgrade   rpm: 0 (remove) or 1 (upgrade)
#   apk, ipk: no arguments (a removal)
set -e
case "${1:-}" in
	upgrade | failed-upgrade | 1) exit 0 ;;
esac

if command -v systemctl >/dev/null 2>&1; then
	if [ -d /run/systemd/system ]; then
		systemctl stop tetherd.service || true
	fi
	systemctl disable tetherd.service >/dev/null 2>&1 || true
elif [ -f /etc/rc.common ] && [ -x /etc/init.d/tetherd ]; then
	/etc/init.d/tetherd stop || true
	/etc/init.d/tetherd disable || true
fi
