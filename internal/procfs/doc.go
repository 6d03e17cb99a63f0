// SPDX-License-Identifier: Apache-2.0

// Package procfs reads a process's footprint and wake-ups from Linux's
// /proc: the numbers of its status file (VmRSS and the like), the context
// switches of its threads, the CPU time it has used and its open-file
// limit, and the machine's /proc/meminfo. Reading /proc does not wake the
// process, so a tool can watch an idle program without disturbing what it
// measures.
//
// It is for Linux only; elsewhere every read fails, there being no /proc.
// It is not a process manager: it neither starts, signals nor waits for a
// process, and it keeps nothing between reads.
package procfs
