// SPDX-License-Identifier: Apache-2.0

// Package spdx holds the test that every source file of Tether names its
// licence with an SPDX identifier, so that firmware builders' licence
// scanners (Yocto's, Buildroot's legal-info, FOSSology) find it in each
// file and not only in LICENSE. It has no code of its own.
package spdx
