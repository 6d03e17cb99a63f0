SUMMARY = "Tether push-messaging agent"
DESCRIPTION = "tetherd keeps the device connected to a Tether connection \
server and hands stored messages to local apps over a Unix socket and \
D-Bus; tetherctl is its command line."
# Tether's source carries no license file yet: set LICENSE and
# LIC_FILES_CHKSUM to its terms once it does.
LICENSE ??= "CLOSED"

# Where your build fetches Tether from, and the commit to build: set both
# (in this file, a .bbappend or local.conf). docs/firmware.md has the steps.
TETHER_GIT_URL ??= "git://example.org/tether.git;protocol=https;branch=main"
SRC_URI = "${TETHER_GIT_URL}"
SRCREV ??= "${AUTOREV}"
PV = "0.0.0+git${SRCPV}"

GO_IMPORT = "tether"
GO_INSTALL = "${GO_IMPORT}/cmd/tetherd ${GO_IMPORT}/cmd/tetherctl"
# Static, stripped and reproducible, as `make cross` builds them.
export CGO_ENABLED = "0"
GO_LINKSHARED = ""
GOBUILDFLAGS:append = " -trimpath -buildvcs=false"
GO_EXTRA_LDFLAGS:append = " -s -w -buildid= -X main.version=${PV}"

inherit go-mod systemd useradd

# go-mod fetches the modules go.sum names during the build.
do_compile[network] = "1"

USERADD_PACKAGES = "${PN}"
USERADD_PARAM:${PN} = "--system --user-group --no-create-home --home-dir /var/lib/tether --shell /sbin/nologin tether"

SYSTEMD_SERVICE:${PN} = "tetherd.service"
SYSTEMD_AUTO_ENABLE:${PN} = "enable"

do_install:append() {
    src=${S}/src/${GO_IMPORT}
    install -D -m 0644 $src/packaging/systemd/tetherd.service ${D}${systemd_system_unitdir}/tetherd.service
    install -D -m 0644 $src/packaging/config/agent.toml ${D}${sysconfdir}/tether/agent.toml
    install -D -m 0644 $src/packaging/dbus/org.tether.Push.conf ${D}${datadir}/dbus-1/system.d/org.tether.Push.conf
    install -D -m 0644 $src/packaging/dbus/org.tether.Push.service ${D}${datadir}/dbus-1/system-services/org.tether.Push.service
    # Only the device's binaries.
    rm -f ${D}${bindir}/tether-server
}

FILES:${PN} += "${systemd_system_unitdir}/tetherd.service ${datadir}/dbus-1"
CONFFILES:${PN} = "${sysconfdir}/tether/agent.toml"
# Go binaries carry no debug info to split (-s -w) and are static.
INSANE_SKIP:${PN} += "already-stripped ldflags"
