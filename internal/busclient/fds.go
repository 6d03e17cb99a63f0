// SPDX-License-Identifier: Apache-2.0

package busclient

import (
	"fmt"
	"io"
	"os"
	"syscall"
)

// maxFDs bounds the descriptors taken from one read, which may hold
// several messages; dbus-daemon passes at most 16 with one message.
const maxFDs = 64

// socketReader reads the bus socket with recvmsg, so that descriptors
// passed with the bytes (SCM_RIGHTS, the D-Bus type h) are received; they
// wait in fds until the message that carries them is read.
type socketReader struct {
	rc  syscall.RawConn
	oob []byte
	fds []*os.File
}

func newSocketReader(f *os.File) (*socketReader, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("read the bus socket: %w", err)
	}
	return &socketReader{rc: rc, oob: make([]byte, syscall.CmsgSpace(maxFDs*4))}, nil
}

func (s *socketReader) Read(p []byte) (int, error) {
	var n, oobn int
	var rerr error
	err := s.rc.Read(func(fd uintptr) bool {
		n, oobn, _, _, rerr = syscall.Recvmsg(int(fd), p, s.oob, syscall.MSG_CMSG_CLOEXEC)
		return rerr != syscall.EAGAIN
	})
	if err == nil {
		err = rerr
	}
	if oobn > 0 {
		s.keep(s.oob[:oobn])
	}
	if err != nil {
		return 0, err
	}
	if n == 0 && len(p) > 0 {
		return 0, io.EOF
	}
	return n, nil
}

// keep adopts the descriptors of the control messages in oob.
func (s *socketReader) keep(oob []byte) {
	msgs, err := syscall.ParseSocketControlMessage(oob)
	if err != nil {
		return
	}
	for _, m := range msgs {
		fds, err := syscall.ParseUnixRights(&m)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			s.fds = append(s.fds, os.NewFile(uintptr(fd), "descriptor from the bus"))
		}
	}
}

// take hands over the first n received descriptors, or as many as came:
// descriptors the kernel could not pass are lost with their message's
// bytes, and an h value without its descriptor fails to decode.
func (s *socketReader) take(n int) []*os.File {
	n = min(n, len(s.fds))
	files := s.fds[:n:n]
	s.fds = s.fds[n:]
	return files
}

func (s *socketReader) passesFDs() bool { return true }

// close closes the descriptors no message claimed.
func (s *socketReader) close() {
	closeFiles(s.fds)
	s.fds = nil
}

func closeFiles(files []*os.File) {
	for _, f := range files {
		f.Close()
	}
}
