// SPDX-License-Identifier: Apache-2.0

// Package unixconn dials Unix stream sockets without the net package, for
// the size of tetherctl: net, with its resolver and address types, is
// about 300 KiB on ARMv7, while tetherctl and the client package only
// ever connect to a local socket (the agent's, or the D-Bus daemon's).
//
// The connection is an *os.File on a non-blocking socket, so the runtime's
// poller serves it: reads and writes block only their goroutine, and take
// deadlines.
package unixconn

import (
	"context"
	"fmt"
	"os"
	"syscall"
	"time"
)

// busyWait is how long Dial waits before trying again when the listening
// socket's backlog is full.
const busyWait = 10 * time.Millisecond

// Dial connects to the Unix stream socket at path; a path that starts with
// "@" names a socket in the abstract namespace. ctx bounds the wait while
// the listener's backlog is full. Errors read as the net package's do:
// "dial unix PATH: connect: REASON".
func Dial(ctx context.Context, path string) (*os.File, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("dial unix %s: %w", path, err)
	}
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_NONBLOCK|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("dial unix %s: %w", path, os.NewSyscallError("socket", err))
	}
	for {
		err = syscall.Connect(fd, &syscall.SockaddrUnix{Name: path})
		if err == syscall.EINTR {
			continue
		}
		if err != syscall.EAGAIN {
			break
		}
		select {
		case <-time.After(busyWait): // the listener's backlog is full
			continue
		case <-ctx.Done():
		}
		err = ctx.Err()
		break
	}
	if err != nil {
		syscall.Close(fd)
		if _, isErrno := err.(syscall.Errno); isErrno {
			err = os.NewSyscallError("connect", err)
		}
		return nil, fmt.Errorf("dial unix %s: %w", path, err)
	}
	return os.NewFile(uintptr(fd), path), nil
}
