#!/bin/sh
# After an install or upgrade: the store's directory (for a start without
# systemd too), the service enabled, and restarted if it runs (an
# upgrade). A first install does not start it: no device can enroll
# before an enrollment key or setting exists, and serve refuses to start
# without one.
set -e
install -d -o tether-server -g tether-server -m 0700 /var/lib/tether-server

running=false
if command -v systemctl >/dev/null 2>&1; then
	systemctl enable tether-server.service >/dev/null 2>&1 || true
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload
		systemctl try-restart tether-server.service
		systemctl is-active --quiet tether-server.service && running=true
	fi
fi

if ! $running; then
	cat <<'MSG'
tether-server: edit /etc/tether/server.toml, create an enrollment key with
  runuser -u tether-server -- tether-server enroll create --data /var/lib/tether-server
then start the tether-server service (/usr/share/doc/tether-server/deploy.md).
MSG
fi
