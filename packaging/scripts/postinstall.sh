#!/bin/sh
# After an install or upgrade: enable the service (without starting it on a
# first install: it needs a server in /etc/tether/agent.toml first) and
# restart it on an upgrade.
#   deb: configure [OLD-VERSION]   rpm: 1 (install) or 2 (upgrade)
#   apk, ipk: no arguments
set -e
upgrade=false
case "${1:-}" in
	configure) [ -z "${2:-}" ] || upgrade=true ;;
	[2-9]) upgrade=true ;;
esac

if [ -n "${IPKG_INSTROOT:-}" ]; then
	exit 0 # an OpenWrt image build enables services itself
fi

if command -v systemctl >/dev/null 2>&1; then
	# enable works offline too (image builds, chroots).
	systemctl enable tetherd.service >/dev/null 2>&1 || true
	if [ -d /run/systemd/system ]; then
		systemctl daemon-reload
		if $upgrade; then
			systemctl try-restart tetherd.service
		fi
	fi
elif [ -f /etc/rc.common ] && [ -x /etc/init.d/tetherd ]; then
	/etc/init.d/tetherd enable
	if $upgrade; then
		/etc/init.d/tetherd restart
	fi
fi

if ! $upgrade && ! grep -qs '^server *=' /etc/tether/agent.toml; then
	echo "tetherd: set server in /etc/tether/agent.toml, then start the tetherd service"
fi
