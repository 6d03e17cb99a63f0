// SPDX-License-Identifier: Apache-2.0

package network

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

const (
	// requestTimeout bounds one request and its answer.
	requestTimeout = 10 * time.Second
	// answerSize holds any answer: the kernel sizes dump datagrams to the
	// reader's buffer, up to 32 KiB, and a link's description without
	// its virtual functions is far smaller.
	answerSize = 32 << 10
	// notificationSize is enough for most notifications; a longer one is
	// cut short, which does no harm as only its arrival counts.
	notificationSize = 8 << 10
	// watchGroups are the notifications that can change the default
	// route: a link going down or losing its carrier, an address going
	// (which takes its routes along), a route coming or going.
	watchGroups = unix.RTMGRP_LINK | unix.RTMGRP_IPV4_IFADDR | unix.RTMGRP_IPV6_IFADDR |
		unix.RTMGRP_IPV4_ROUTE | unix.RTMGRP_IPV6_ROUTE
)

// errNotifications: the kernel dropped notifications because the
// socket's buffer overflowed.
var errNotifications = errors.New("rtnetlink notifications lost")

// rtnl is one NETLINK_ROUTE socket: non-blocking, so that it joins the
// runtime's poller and a deadline can interrupt a read.
type rtnl struct {
	f   *os.File
	raw syscall.RawConn
	buf []byte
	// partial: datagrams cut short by the buffer are good enough.
	partial bool
	seq     uint32
}

// openSockets opens the notification socket, subscribed to watchGroups,
// and a socket for requests, both in the network namespace at netnsPath
// ("" for the caller's own).
func openSockets(netnsPath string) (events, requests *rtnl, err error) {
	fds := [2]int{-1, -1}
	open := func() error {
		for i, groups := range []uint32{watchGroups, 0} {
			fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_ROUTE)
			if err != nil {
				return fmt.Errorf("open rtnetlink socket: %w", err)
			}
			fds[i] = fd
			if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: groups}); err != nil {
				return fmt.Errorf("bind rtnetlink socket: %w", err)
			}
		}
		return nil
	}
	if netnsPath == "" {
		err = open()
	} else {
		err = inNetns(netnsPath, open)
	}
	if err != nil {
		for _, fd := range fds {
			if fd >= 0 {
				unix.Close(fd)
			}
		}
		return nil, nil, err
	}
	events, err = newRTNL(fds[0], "rtnetlink notifications", notificationSize)
	if err != nil {
		unix.Close(fds[1])
		return nil, nil, err
	}
	requests, err = newRTNL(fds[1], "rtnetlink requests", answerSize)
	if err != nil {
		events.close()
		return nil, nil, err
	}
	events.partial = true
	return events, requests, nil
}

func newRTNL(fd int, name string, size int) (*rtnl, error) {
	f := os.NewFile(uintptr(fd), name)
	raw, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	return &rtnl{f: f, raw: raw, buf: make([]byte, size)}, nil
}

func (c *rtnl) close() { c.f.Close() }

// inNetns runs fn on a thread that has entered the network namespace at
// path; sockets fn opens stay in that namespace. The thread is never
// given back to the runtime, which ends it when its goroutine returns, so
// no other goroutine ever runs in the namespace.
func inNetns(path string, fn func() error) error {
	ns, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open network namespace %s: %w", path, err)
	}
	defer unix.Close(ns)
	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Setns(ns, unix.CLONE_NEWNET); err != nil {
			done <- fmt.Errorf("enter network namespace %s: %w", path, err)
			return
		}
		done <- fn()
	}()
	return <-done
}

// recv reads one datagram from the kernel, waiting until ctx is done or
// the deadline passes, or not at all if wait is false (then it returns
// unix.EAGAIN when there is nothing to read). Datagrams from anyone but
// the kernel are dropped.
func (c *rtnl) recv(ctx context.Context, deadline time.Time, wait bool) ([]byte, error) {
	c.f.SetReadDeadline(deadline)
	defer interruptOnDone(ctx, c.f)()
	for {
		var (
			n, flags int
			from     unix.Sockaddr
			recvErr  error
		)
		err := c.raw.Read(func(fd uintptr) bool {
			n, _, flags, from, recvErr = unix.Recvmsg(int(fd), c.buf, nil, unix.MSG_DONTWAIT)
			return !wait || recvErr != unix.EAGAIN
		})
		switch {
		case ctx.Err() != nil:
			return nil, ctx.Err()
		case err != nil:
			return nil, err
		case recvErr == unix.ENOBUFS:
			return nil, errNotifications
		case recvErr != nil:
			return nil, recvErr
		case flags&unix.MSG_TRUNC != 0 && !c.partial:
			return nil, fmt.Errorf("netlink datagram larger than %d bytes", len(c.buf))
		}
		if nl, ok := from.(*unix.SockaddrNetlink); ok && nl.Pid == 0 {
			return c.buf[:n], nil
		}
	}
}

// interruptOnDone makes a read of f fail once ctx is done. The returned
// function undoes it and must be called before f's deadline is set
// again.
func interruptOnDone(ctx context.Context, f *os.File) (stop func()) {
	fired := make(chan struct{})
	stopAfter := context.AfterFunc(ctx, func() {
		f.SetReadDeadline(time.Unix(1, 0))
		close(fired)
	})
	return func() {
		if !stopAfter() {
			<-fired
		}
	}
}

// waitChange blocks until the kernel announces a change, then reads every
// notification already queued, so that a burst (a link coming up with its
// addresses and routes) is one change.
func (c *rtnl) waitChange(ctx context.Context) error {
	if _, err := c.recv(ctx, time.Time{}, true); err != nil && !errors.Is(err, errNotifications) {
		return err
	}
	for {
		_, err := c.recv(ctx, time.Time{}, false)
		switch {
		case errors.Is(err, unix.EAGAIN):
			return nil
		case err != nil && !errors.Is(err, errNotifications):
			return err
		}
	}
}

// errInterrupted: a dump's contents changed while it was read.
var errInterrupted = errors.New("rtnetlink dump interrupted by a change")

// query sends the request build makes for a sequence number and calls
// each with every message of the answer until it is complete: at
// NLMSG_DONE for a dump, after the one answer otherwise. Stale answers, to
// requests that timed out, are skipped.
func (c *rtnl) query(ctx context.Context, dump bool, build func(seq uint32) []byte, each func(message) error) error {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	deadline, _ := ctx.Deadline()
	c.seq++
	seq := c.seq
	req := build(seq)
	var sendErr error
	err := c.raw.Write(func(fd uintptr) bool {
		sendErr = unix.Sendto(int(fd), req, 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK})
		return sendErr != unix.EAGAIN
	})
	if err == nil {
		err = sendErr
	}
	if err != nil {
		return fmt.Errorf("send request: %w", err)
	}
	interrupted := false
	for {
		b, err := c.recv(ctx, deadline, true)
		if err != nil {
			return fmt.Errorf("read answer: %w", err)
		}
		msgs, err := parseMessages(b)
		if err != nil {
			return err
		}
		for _, m := range msgs {
			if m.seq != seq {
				continue
			}
			if m.flags&unix.NLM_F_DUMP_INTR != 0 {
				interrupted = true
			}
			switch m.typ {
			case unix.NLMSG_DONE:
				if interrupted {
					return errInterrupted
				}
				return nil
			case unix.NLMSG_ERROR:
				return parseError(m.data)
			}
			if err := each(m); err != nil {
				return err
			}
			if !dump {
				return nil
			}
		}
	}
}
