#!/bin/sh
# After the package has gone. A purge (deb) also removes the server's
# store, which holds its senders, devices and queued messages: back it up
# first (docs/deploy.md). The tether-server user stays, as Debian policy
# asks, so that files it owned elsewhere keep a name.
#   deb: remove, purge, upgrade, ...   rpm: 0 (remove) or 1 (upgrade)
set -e
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	systemctl daemon-reload || true
fi
if [ "${1:-}" = purge ]; then
	rm -rf /var/lib/tether-server
	rmdir /etc/tether 2>/dev/null || true
fi
