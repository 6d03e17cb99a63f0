#!/bin/sh
# Before the package goes (not on an upgrade): stop and disable the service.
#   deb: remove, upgrade, deconfigure or failed-upgrade   rpm: 0 (remove) or 1 (upgrade)
set -e
case "${1:-}" in
	upgrade | failed-upgrade | 1) exit 0 ;;
esac
command -v systemctl >/dev/null 2>&1 || exit 0
[ -d /run/systemd/system ] && systemctl stop tether-server.service || true
systemctl disable tether-server.service >/dev/null 2>&1 || true
