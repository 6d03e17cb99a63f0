# SPDX-License-Identifier: Apache-2.0
SUMMARY = "Tether push-messaging agent"
DESCRIPTION = "tetherd keeps the device connected to a Tether connection \
server and hands stored messages to local apps over a Unix socket and \
D-Bus; tetherctl is its command line."
HOMEPAGE = "https://example.org/tether"
# Tether itself; tetherd-licenses.inc adds the modules linked into the
# binaries.
LICENSE = "Apache-2.0"
LIC_FILES_CHKSUM = "file://src/${GO_IMPORT}/LICENSE;md5=3b83ef96387f14655fc854ddc3c6bd57"

# The release tag v${PV}. The recipe's file name carries the version
# (tetherd_X.Y.Z.bb, the VERSION file of that release); set SRCREV to the
# commit the tag names (git rev-parse vX.Y.Z^{commit}) in a .bbappend,
# since a tag can move and a commit cannot.
TETHER_GIT_URL ??= "git://example.org/tether.git;protocol=https;branch=main"
SRC_URI = "${TETHER_GIT_URL};tag=v${PV};destsuffix=${GO_SRCURI_DESTSUFFIX}"
SRCREV ??= ""

GO_IMPORT = "tether"
GO_INSTALL = "${GO_IMPORT}/cmd/tetherd ${GO_IMPORT}/cmd/tetherctl"
# Static, stripped and reproducible, as `make cross` builds them.
export CGO_ENABLED = "0"
GO_LINKSHARED = ""
GOBUILDFLAGS:append = " -buildvcs=false"
GO_EXTRA_LDFLAGS:append = " -s -w -buildid= -X main.version=${PV}"
# go.bbclass asks for a position-independent executable on arm, x86 and
# riscv64, which Go builds only with cgo and the external linker. A static
# binary has no loader to relocate it, so PIE would buy nothing.
GOBUILDFLAGS:remove = "-buildmode=pie"
# The modules come from SRC_URI (tetherd-go-mods.inc, gomod:// with their
# checksums), so the build never reaches the network.
export GOPROXY = "off"

inherit go-mod go-mod-update-modules systemd useradd

# `bitbake -c update_modules tetherd` writes both files again after
# go.mod changes; `go test ./cross/` checks that they match go.sum.
require ${BPN}-go-mods.inc
require ${BPN}-licenses.inc

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
}

FILES:${PN} += "${systemd_system_unitdir}/tetherd.service ${datadir}/dbus-1"
CONFFILES:${PN} = "${sysconfdir}/tether/agent.toml"
# Go binaries carry no debug info to split (-s -w) and are static.
INSANE_SKIP:${PN} += "already-stripped ldflags"
