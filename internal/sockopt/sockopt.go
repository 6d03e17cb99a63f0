// SPDX-License-Identifier: Apache-2.0

// Package sockopt reads socket options off live connections, so that tests
// can check what the kernel was told (for example that no TCP keepalive
// probes will wake a device's radio). It changes nothing.
package sockopt

import (
	"fmt"
	"net"
	"syscall"
)

// KeepAlive reports whether SO_KEEPALIVE is on for c's socket.
func KeepAlive(c net.Conn) (bool, error) {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false, fmt.Errorf("read SO_KEEPALIVE: %T has no socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false, fmt.Errorf("read SO_KEEPALIVE: %w", err)
	}
	var on int
	var sockErr error
	if err := raw.Control(func(fd uintptr) {
		on, sockErr = syscall.GetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_KEEPALIVE)
	}); err != nil {
		return false, fmt.Errorf("read SO_KEEPALIVE: %w", err)
	}
	if sockErr != nil {
		return false, fmt.Errorf("read SO_KEEPALIVE: %w", sockErr)
	}
	return on != 0, nil
}
