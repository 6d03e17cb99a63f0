# SPDX-License-Identifier: Apache-2.0
# tetherctl finds tetherd's socket where OpenWrt keeps it.
export TETHER_SOCKET=/var/run/tether/tetherd.sock
