# SPDX-License-Identifier: Apache-2.0
# Shell helpers of the demos (demo.sh, cluster-demo.sh), sourced by them:
# each sets work, the directory whose logs fail prints, before using them.

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
fail() { echo "${0##*/}: $*" >&2; for f in "$work"/*.log; do echo "--- $f" >&2; tail -20 "$f" >&2; done; exit 1; }
# wait_for DESCRIPTION COMMAND...: runs COMMAND until it succeeds, for up to
# WAIT_TENTHS tenths of a second (default 200).
wait_for() {
  local what=$1; shift
  for _ in $(seq "${WAIT_TENTHS:-200}"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.1; done
  fail "timed out waiting for $what"
}
json_field() { sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p"; }
