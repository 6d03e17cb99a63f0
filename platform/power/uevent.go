// SPDX-License-Identifier: Apache-2.0

package power

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

const powerSupplySubsystem = "power_supply"

// ErrUeventsLost is returned by a UeventSource when events were dropped
// (the kernel's socket buffer overflowed); the watcher then reads sysfs
// again rather than trusting what it knows.
var ErrUeventsLost = errors.New("kernel uevents lost")

// Uevent is one kernel uevent.
type Uevent struct {
	Action    string // "add", "remove", "change", ...
	DevPath   string // the device's path under /sys
	Subsystem string // SUBSYSTEM, e.g. "power_supply"
	// Env holds every KEY=VALUE pair, SUBSYSTEM and ACTION included.
	Env map[string]string
}

// UeventSource yields kernel uevents.
type UeventSource interface {
	// Receive blocks until the next uevent, until ctx is done (returning
	// ctx's error) or until the source fails. ErrUeventsLost is not a
	// failure: Receive may be called again.
	Receive(ctx context.Context) (Uevent, error)
}

// ParseUevent decodes a uevent as the kernel broadcasts it:
// "action@devpath" and then KEY=VALUE fields, each ending in a NUL byte.
func ParseUevent(b []byte) (Uevent, error) {
	fields := bytes.Split(bytes.TrimSuffix(b, []byte{0}), []byte{0})
	header := string(fields[0])
	action, devpath, ok := strings.Cut(header, "@")
	if !ok || action == "" || devpath == "" {
		return Uevent{}, fmt.Errorf("parse uevent: header %q is not action@devpath", truncate(header))
	}
	ev := Uevent{Action: action, DevPath: devpath, Env: make(map[string]string, len(fields)-1)}
	for _, f := range fields[1:] {
		key, value, ok := strings.Cut(string(f), "=")
		if !ok || key == "" {
			return Uevent{}, fmt.Errorf("parse uevent %s: field %q is not KEY=VALUE", truncate(header), truncate(string(f)))
		}
		ev.Env[key] = value
	}
	ev.Subsystem = ev.Env["SUBSYSTEM"]
	return ev, nil
}

// truncate shortens s for an error message.
func truncate(s string) string {
	const limit = 64
	if len(s) <= limit {
		return s
	}
	return s[:limit] + "..."
}

// Sizes for the uevent socket: the kernel never sends a uevent larger
// than 2048 bytes (UEVENT_BUFFER_SIZE); the receive buffer absorbs a
// burst, such as every device announcing itself on a coldplug.
const (
	ueventMaxSize   = 4096
	ueventRecvBytes = 256 << 10
	kernelUeventGrp = 1 // the kernel's group; 2 is udev's re-broadcast
)

// UeventSocket is the kernel's uevent broadcast: a NETLINK_KOBJECT_UEVENT
// socket bound to the kernel's multicast group. It needs no privilege.
type UeventSocket struct {
	f   *os.File
	buf []byte
}

// ListenUevents opens the kernel's uevent socket.
func ListenUevents() (*UeventSocket, error) {
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("open uevent socket: %w", err)
	}
	// A larger buffer only helps; without CAP_NET_ADMIN the kernel caps it.
	_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, ueventRecvBytes)
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: kernelUeventGrp}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("bind uevent socket: %w", err)
	}
	// A non-blocking descriptor joins the runtime's poller, so a deadline
	// can interrupt a read.
	return &UeventSocket{f: os.NewFile(uintptr(fd), "uevent"), buf: make([]byte, ueventMaxSize)}, nil
}

// Receive returns the next uevent from the kernel. Messages that are not
// from the kernel or do not parse are skipped.
func (s *UeventSocket) Receive(ctx context.Context) (Uevent, error) {
	raw, err := s.f.SyscallConn()
	if err != nil {
		return Uevent{}, fmt.Errorf("receive uevent: %w", err)
	}
	// A cancelled context interrupts the read with a deadline in the
	// past; it is undone before the next Receive sets none.
	s.f.SetReadDeadline(time.Time{})
	interrupted := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		s.f.SetReadDeadline(time.Unix(1, 0))
		close(interrupted)
	})
	defer func() {
		if !stop() {
			<-interrupted
		}
	}()
	for {
		var (
			n       int
			from    unix.Sockaddr
			recvErr error
		)
		err := raw.Read(func(fd uintptr) bool {
			n, from, recvErr = unix.Recvfrom(int(fd), s.buf, 0)
			return recvErr != unix.EAGAIN
		})
		switch {
		case ctx.Err() != nil:
			return Uevent{}, ctx.Err()
		case err != nil:
			return Uevent{}, fmt.Errorf("receive uevent: %w", err)
		case recvErr == unix.ENOBUFS:
			return Uevent{}, ErrUeventsLost
		case recvErr != nil:
			return Uevent{}, fmt.Errorf("receive uevent: %w", recvErr)
		}
		if nl, ok := from.(*unix.SockaddrNetlink); !ok || nl.Pid != 0 {
			continue // only the kernel's word counts
		}
		ev, err := ParseUevent(s.buf[:n])
		if err != nil {
			continue
		}
		return ev, nil
	}
}

// Close closes the socket.
func (s *UeventSocket) Close() error { return s.f.Close() }
