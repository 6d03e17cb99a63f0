#!/bin/sh
# After the package has gone. A purge (deb) also removes the agent's
# store; the tether user stays, as Debian policy asks, so that files it
# owned elsewhere keep a name.
#   deb: remove, purge, upgrade, ...   rpm: 0 (remove) or 1 (upgrade)
#   apk, ipk: no arguments
set -e
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
if [ "${1:-}" = purge ]; then
	rm -rf /var/lib/tether
	rmdir /etc/tether 2>/dev/null || true
fi
