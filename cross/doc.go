// SPDX-License-Identifier: Apache-2.0

// Package cross holds the tests of what cross/build.sh and
// cross/package.sh make, run by `make test-cross` once they have run:
// the ARM and MIPS binaries under qemu-user against an amd64 server on
// loopback, the reproducibility of a build, and the .debs installed, the
// server run from its installed files, and removed on the machine running
// the tests.
//
// The tests need $TETHER_CROSS (the binaries' directory) and
// $TETHER_PACKAGES (the packages'); without them they are skipped, so that
// `go test ./...` does not depend on a cross build; the check that `make
// release` gives the same bytes twice needs $TETHER_NFPM. The test of
// cross/size.sh's budgets needs neither, nor does the test of the
// container image's files (packaging/container/rootfs.sh), which builds
// the server itself and needs only root, nor do the replays of the Yocto,
// Buildroot and OpenWrt recipes' builds, which need make and the module
// cache. It has no non-test code.
package cross
