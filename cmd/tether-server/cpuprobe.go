// SPDX-License-Identifier: Apache-2.0

//go:build cpuprobe

package main

import "tether/internal/cpuprobe"

// Profiles for benchmarks only: see internal/cpuprobe.
func init() { cpuprobe.Start() }
