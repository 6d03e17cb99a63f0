#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Checks the device binaries of a cross-build (cross/build.sh) against
# their size budgets and prints a line for each; exits 1 if any is over.
#
#   cross/size.sh [OUT]     default: bin/cross
#
# linux-armv7, the device CPU the budgets are set for, has
# TETHERD_MAX_KIB and TETHERCTL_MAX_KIB. Every other target has a ceiling
# in cross/size-ceilings.txt, its size when the budgets were set: no
# target may grow past it. Lower a ceiling when a target shrinks; raise it
# only with a reason in the commit.
set -euo pipefail
out=${1:-bin/cross}
dir=$(cd "$(dirname "$0")" && pwd)
tetherd_max=${TETHERD_MAX_KIB:-6000}
tetherctl_max=${TETHERCTL_MAX_KIB:-2800}

found=0
over=0
while read -r target d_max c_max; do
  [[ -z $target || $target == \#* ]] && continue
  if [[ $target == linux-armv7 ]]; then
    d_max=$tetherd_max c_max=$tetherctl_max
  fi
  for pair in "tetherd $d_max" "tetherctl $c_max"; do
    read -r bin max <<<"$pair"
    f="$out/$target/$bin"
    [[ -f $f ]] || continue
    found=1
    kib=$(($(stat -c %s "$f") / 1024))
    if ((kib > max)); then
      echo "size: $f is $kib KiB, over the budget of $max KiB"
      over=1
    else
      echo "size: $f $kib KiB (budget $max)"
    fi
  done
done <"$dir/size-ceilings.txt"
if ((!found)); then
  echo "size: no binaries in $out; run make cross" >&2
  exit 1
fi
exit $over
