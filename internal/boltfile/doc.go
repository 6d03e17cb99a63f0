// SPDX-License-Identifier: Apache-2.0

// Package boltfile opens a bbolt file only after making sure it is whole,
// for the agent's store (package tether/store) and the server's (package
// tether/server/store).
//
// bbolt trusts its file: on a damaged one it may panic, return garbage, or
// follow a page number out of its memory map and kill the process with a
// fault that no recover can catch. Later writes to a damaged file can make
// things worse: a free list that names pages still in use lets bbolt write
// over live data. So Open, before it opens an existing file for writing,
// takes the file's lock and reads it through a memory map of its own, every
// access bounds-checked: both meta pages must be valid, the file must be as
// long as they say, and every page reachable from the root and the free
// list must lie inside the file, name itself, have a known type and keep
// its entries inside its bounds. Only then does it run bbolt's own
// consistency check (Tx.Check: free pages, pages referenced twice, key
// order), which the walk has made safe to run, and open the file for
// writing.
//
// A damaged file is left exactly as it is, for inspection: Open neither
// repairs nor replaces it, and never falls back to an empty store. Its error
// wraps ErrDamaged and says what is wrong. What the walk cannot see is a
// damaged value: bbolt keeps no checksums of data pages, so a flipped bit in
// a value reads back as a different value; the stores' own decoders report
// that when they read it.
//
// The walk and the check read every page in use once; see the benchmarks
// for what that costs.
package boltfile
