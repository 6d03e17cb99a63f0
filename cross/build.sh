#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds static, stripped, reproducible binaries of the device side (tetherd,
# tetherctl) and the server for the CPUs Tether's devices use, into
# OUT/NAME/, and writes a size report to OUT/sizes.txt.
#
#   cross/build.sh [OUT [NAME...]]     default: bin/cross, every target
#
# VERSION (default: scripts/version.sh) is stamped into the binaries. The same
# source, Go version and VERSION give the same bytes: paths are trimmed,
# the build ID is fixed and no VCS state is embedded.
set -euo pipefail
out=${1:-bin/cross}
shift || true
cd "$(dirname "$0")/.."
mkdir -p "$out"
out=$(cd "$out" && pwd)
version=${VERSION:-$(scripts/version.sh)}

# NAME GOARCH [extra environment]
targets=(
  "linux-amd64   amd64"
  "linux-386     386     GO386=softfloat"
  "linux-arm64   arm64"
  "linux-armv7   arm     GOARM=7"
  "linux-armv6   arm     GOARM=6"
  "linux-mips    mips    GOMIPS=softfloat"
  "linux-mipsle  mipsle  GOMIPS=softfloat"
  "linux-riscv64 riscv64"
)
want=("$@")

report="$out/sizes.txt"
{
  echo "# tether $version, $(go env GOVERSION); sizes in bytes (KiB)"
  printf '%-14s %18s %18s %18s\n' target tetherd tetherctl tether-server
} >"$report.new"
for t in "${targets[@]}"; do
  read -r name arch extra <<<"$t"
  if ((${#want[@]})) && [[ ! " ${want[*]} " =~ " $name " ]]; then
    continue
  fi
  mkdir -p "$out/$name"
  # shellcheck disable=SC2086 # extra is a list of assignments
  env CGO_ENABLED=0 GOOS=linux GOARCH="$arch" $extra \
    go build -trimpath -buildvcs=false -ldflags "-s -w -buildid= -X main.version=$version" \
    -o "$out/$name/" ./cmd/tetherd ./cmd/tetherctl ./cmd/tether-server
  row=$(printf '%-14s' "$name")
  for b in tetherd tetherctl tether-server; do
    size=$(stat -c %s "$out/$name/$b")
    row+=$(printf ' %18s' "$size ($((size / 1024)))")
  done
  echo "$row" | tee -a "$report.new"
done
mv "$report.new" "$report"
