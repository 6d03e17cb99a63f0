#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# Prints Tether's version, from the VERSION file, refined by git where the
# source is a git clone.
#
#   scripts/version.sh            for binaries: 0.2.0, or 0.2.0-pre7+g1a2b3c4
#   scripts/version.sh --package  for packages: 0.2.0, or 0.2.0-pre7
#
# VERSION holds the semantic version that the tree is becoming. At the tag
# vX.Y.Z that matches it, the version is X.Y.Z. Anywhere else in a clone
# it is a pre-release of it: preN for the N-th commit since VERSION last
# changed, which the package formats order below the release (nfpm writes
# 0.2.0~pre7 for .deb, .rpm and .ipk, 0.2.0_pre7 for .apk). Binaries also
# name the commit, and a tree with local changes says so. The same commit
# gives the same version, so builds stay reproducible.
set -eu
cd "$(dirname "$0")/.."
version=$(tr -d ' \n' <VERSION)
case $version in
[0-9]*.[0-9]*.[0-9]*) ;;
*)
  echo "VERSION: $version is not a semantic version X.Y.Z" >&2
  exit 1
  ;;
esac
if ! git rev-parse --git-dir >/dev/null 2>&1; then
  echo "$version"
  exit 0
fi
if [ "$(git describe --tags --exact-match --match "v$version" 2>/dev/null)" = "v$version" ] && git diff --quiet HEAD 2>/dev/null; then
  echo "$version"
  exit 0
fi
since=$(git rev-list --count "$(git log -1 --format=%H -- VERSION)..HEAD" 2>/dev/null || echo 0)
if [ "${1:-}" = --package ]; then
  echo "$version-pre$since"
  exit 0
fi
build=g$(git rev-parse --short=7 HEAD)
git diff --quiet HEAD 2>/dev/null || build=$build.dirty
echo "$version-pre$since+$build"
