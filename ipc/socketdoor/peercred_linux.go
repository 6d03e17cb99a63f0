// SPDX-License-Identifier: Apache-2.0

package socketdoor

import (
	"fmt"
	"net"
	"syscall"

	"tether/ipc"
)

// peerCaller asks the kernel who is on the other end of a Unix socket
// connection (SO_PEERCRED: the credentials the peer had when it connected).
func peerCaller(conn *net.UnixConn) (ipc.Caller, error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return ipc.Caller{}, fmt.Errorf("read peer credentials: %w", err)
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return ipc.Caller{}, fmt.Errorf("read peer credentials: %w", err)
	}
	if credErr != nil {
		return ipc.Caller{}, fmt.Errorf("read peer credentials: %w", credErr)
	}
	return ipc.Caller{UID: cred.Uid, GID: cred.Gid, PID: cred.Pid}, nil
}
