# SPDX-License-Identifier: Apache-2.0
################################################################################
#
# tetherd
#
################################################################################

TETHERD_VERSION = $(call qstrip,$(BR2_PACKAGE_TETHERD_VERSION))
TETHERD_SITE = $(call qstrip,$(BR2_PACKAGE_TETHERD_GIT_URL))
TETHERD_SITE_METHOD = git
TETHERD_LICENSE = Apache-2.0
TETHERD_LICENSE_FILES = LICENSE
# Buildroot makes the source tarball itself, with the modules vendored into
# it, so its hash is known only after the first `make tetherd-source`: add
# it to tetherd.hash then and drop this line.
BR_NO_CHECK_HASH_FOR += $(TETHERD_SOURCE)

# The module path is "tether"; Buildroot vendors its modules at download.
# pkg-golang builds each target into bin/ under its last element and
# installs those binaries into /usr/bin.
TETHERD_GOMOD = tether
TETHERD_BUILD_TARGETS = cmd/tetherd cmd/tetherctl
# Static, stripped and reproducible, as `make cross` builds them
# (pkg-golang already passes -trimpath and -buildvcs=false).
TETHERD_GO_ENV = CGO_ENABLED=0
TETHERD_LDFLAGS = -s -w -buildid= -X main.version=$(patsubst v%,%,$(TETHERD_VERSION))

define TETHERD_USERS
	tether -1 tether -1 * /var/lib/tether - - Tether push agent
endef

define TETHERD_INSTALL_FILES
	$(INSTALL) -D -m 0644 $(@D)/packaging/config/agent.toml \
		$(TARGET_DIR)/etc/tether/agent.toml
	$(INSTALL) -D -m 0644 $(@D)/packaging/dbus/org.tether.Push.conf \
		$(TARGET_DIR)/usr/share/dbus-1/system.d/org.tether.Push.conf
	$(INSTALL) -D -m 0644 $(@D)/packaging/dbus/org.tether.Push.service \
		$(TARGET_DIR)/usr/share/dbus-1/system-services/org.tether.Push.service
endef
TETHERD_POST_INSTALL_TARGET_HOOKS += TETHERD_INSTALL_FILES

define TETHERD_INSTALL_INIT_SYSTEMD
	$(INSTALL) -D -m 0644 $(@D)/packaging/systemd/tetherd.service \
		$(TARGET_DIR)/usr/lib/systemd/system/tetherd.service
endef

# The SysV script `tetherd install --init sysv` writes; BusyBox init runs
# /etc/init.d/S??* in order.
define TETHERD_INSTALL_INIT_SYSV
	$(INSTALL) -D -m 0755 $(@D)/packaging/sysv/tetherd.init \
		$(TARGET_DIR)/etc/init.d/S95tetherd
endef

$(eval $(golang-package))
