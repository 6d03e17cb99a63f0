#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Packages the binaries cross/build.sh made: .deb, .rpm, .apk and .ipk of
# tetherd (with tetherctl), with packaging/nfpm.yaml, and .deb and .rpm of
# tether-server, with packaging/nfpm-server.yaml, for each target with
# nfpm, into OUT/NAME/.
#
#   cross/package.sh NFPM CROSS-DIR OUT [NAME...]   default: every target built
#
#   TETHER_VERSION     package version, semantic (default: scripts/version.sh)
#   PACKAGE_FORMATS    default: deb rpm apk ipk (tether-server: deb and rpm
#                      of these only)
#   IPK_ARCH           the OpenWrt architecture of the .ipk, for one target,
#                      where the device's differs from the default below
#                      (opkg -print-architecture on the device names it)
#   TETHER_MAINTAINER  the packages' Maintainer field
set -euo pipefail
nfpm=$(realpath "$1")
cross=$(realpath "$2")
mkdir -p "$3"
out=$(realpath "$3")
shift 3
cd "$(dirname "$0")/.."

TETHER_VERSION=${TETHER_VERSION:-$(scripts/version.sh --package)}
export TETHER_VERSION
export TETHER_MAINTAINER=${TETHER_MAINTAINER:-Tether maintainers <tether@example.org>}
formats=(${PACKAGE_FORMATS:-deb rpm apk ipk})

# What the nfpm descriptions take from bin/packaging/: each package's
# maintainer scripts for each format, and the changelog the .debs carry.
rm -rf bin/packaging
for pkg in tetherd tether-server; do
  packaging/scripts/render.sh "$pkg" "bin/packaging/$pkg"
done
gzip -9n <CHANGELOG.md >bin/packaging/changelog.gz
touch -d 2024-01-01T00:00:00Z bin/packaging/changelog.gz

# cross/build.sh's target names and nfpm's architectures
declare -A arch=(
  [linux-amd64]=amd64 [linux-386]=386 [linux-arm64]=arm64 [linux-armv7]=arm7
  [linux-armv6]=arm6 [linux-mips]=mips [linux-mipsle]=mipsle [linux-riscv64]=riscv64
)
# The OpenWrt architecture each target's .ipk installs on by default: the
# commonest OpenWrt target with that CPU (ramips mt7621 and mt76x8, ath79,
# ipq40xx and sunxi, mediatek filogic and bcm2710, bcm2708, x86).
declare -A ipk_arch=(
  [linux-amd64]=x86_64 [linux-386]=i386_pentium4 [linux-arm64]=aarch64_cortex-a53
  [linux-armv7]=arm_cortex-a7_neon-vfpv4 [linux-armv6]=arm_arm1176jzf-s_vfp
  [linux-mips]=mips_24kc [linux-mipsle]=mipsel_24kc [linux-riscv64]=riscv64_riscv64
)
names=("$@")
if ((${#names[@]} == 0)); then
  for d in "$cross"/linux-*/; do names+=("$(basename "$d")"); done
fi
for name in "${names[@]}"; do
  [[ -n ${arch[$name]:-} ]] || { echo "package: unknown target $name" >&2; exit 1; }
  export TETHER_BIN=$cross/$name
  rm -rf "${out:?}/$name" # no packages of an earlier version beside the new ones
  mkdir -p "$out/$name"
  for f in "${formats[@]}"; do
    TETHER_ARCH=${arch[$name]}
    if [[ $f == ipk ]]; then TETHER_ARCH=${IPK_ARCH:-${ipk_arch[$name]}}; fi
    export TETHER_ARCH
    "$nfpm" package --config packaging/nfpm.yaml --packager "$f" --target "$out/$name/" | grep -v '^using '
    if [[ $f == deb || $f == rpm ]]; then
      "$nfpm" package --config packaging/nfpm-server.yaml --packager "$f" --target "$out/$name/" | grep -v '^using '
    fi
  done
done
