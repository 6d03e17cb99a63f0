// SPDX-License-Identifier: Apache-2.0

//go:build !linux

package ipc

import (
	"errors"
	"net"

	"tether/ipc"
)

// peerCaller needs SO_PEERCRED, which only Linux has; elsewhere the socket
// door refuses every connection rather than guess who is calling.
func peerCaller(*net.UnixConn) (ipc.Caller, error) {
	return ipc.Caller{}, errors.New("read peer credentials: SO_PEERCRED is only available on Linux")
}
