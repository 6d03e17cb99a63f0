#!/usr/bin/env bash
# Builds static, stripped binaries of the device side (tetherd, tetherctl)
# and the server for the CPUs Tether's devices use, into OUT/GOOS-GOARCH/.
set -euo pipefail
out=${1:-bin/cross}
cd "$(dirname "$0")/.."
version=$(git describe --tags --always --dirty 2>/dev/null || echo dev)

# name GOARCH extra-env
targets=(
  "linux-amd64   amd64"
  "linux-arm64   arm64"
  "linux-armv7   arm     GOARM=7"
  "linux-armv6   arm     GOARM=6"
  "linux-mipsle  mipsle  GOMIPS=softfloat"
  "linux-mips    mips    GOMIPS=softfloat"
  "linux-riscv64 riscv64"
)
for t in "${targets[@]}"; do
  read -r name arch extra <<<"$t"
  mkdir -p "$out/$name"
  env CGO_ENABLED=0 GOOS=linux GOARCH="$arch" $extra \
    go build -trimpath -ldflags "-s -w -X main.version=$version" -o "$out/$name/" ./cmd/tetherd ./cmd/tetherctl ./cmd/tether-server
  printf '%-14s' "$name"; for b in tetherd tetherctl tether-server; do printf ' %s=%s' "$b" "$(stat -c %s "$out/$name/$b")"; done; echo
done
