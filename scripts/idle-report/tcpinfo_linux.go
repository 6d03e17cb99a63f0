// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/binary"
	"fmt"
	"net"
	"syscall"
	"unsafe"
)

// Offsets of tcpi_segs_out and tcpi_segs_in in Linux's struct tcp_info
// (include/uapi/linux/tcp.h, since Linux 4.2).
const (
	tcpiSegsOut = 136
	tcpiSegsIn  = 140
)

// tcpSegments reads the TCP segments c has sent and received, as the
// kernel counts them (data, pure ACKs, SYN and FIN alike).
func tcpSegments(c *net.TCPConn) (out, in uint32, err error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var info [256]byte
	size := uint32(len(info))
	var errno syscall.Errno
	err = raw.Control(func(fd uintptr) {
		_, _, errno = syscall.Syscall6(syscall.SYS_GETSOCKOPT, fd, syscall.IPPROTO_TCP, syscall.TCP_INFO,
			uintptr(unsafe.Pointer(&info[0])), uintptr(unsafe.Pointer(&size)), 0)
	})
	switch {
	case err != nil:
		return 0, 0, err
	case errno != 0:
		return 0, 0, fmt.Errorf("getsockopt TCP_INFO: %w", errno)
	case size < tcpiSegsIn+4:
		return 0, 0, errNoTCPInfo
	}
	return binary.NativeEndian.Uint32(info[tcpiSegsOut:]), binary.NativeEndian.Uint32(info[tcpiSegsIn:]), nil
}
