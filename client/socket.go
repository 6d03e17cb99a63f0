// SPDX-License-Identifier: Apache-2.0

package client

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"

	"tether/internal/unixconn"
	"tether/ipc"
)

// writeTimeout bounds each request write; the agent reads promptly, and
// drops an app that does not.
const writeTimeout = 10 * time.Second

// socketConn is one connection to the agent's socket.
type socketConn struct {
	nc     *os.File
	r      *bufio.Reader
	nextID int
	// partial is a line cut short by the end of a read's context; the
	// next read goes on with it.
	partial []byte
}

func dialSocket(ctx context.Context, path string) (*socketConn, error) {
	nc, err := unixconn.Dial(ctx, path)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnreachable, err)
	}
	return &socketConn{nc: nc, r: bufio.NewReader(nc)}, nil
}

func (c *socketConn) close() { c.nc.Close() }

// send writes a request with a fresh id and returns that id.
func (c *socketConn) send(req ipc.Request) (string, error) {
	c.nextID++
	id := strconv.Itoa(c.nextID)
	req.ID = json.RawMessage(id)
	line, err := json.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("encode request: %w", err)
	}
	c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := c.nc.Write(append(line, '\n')); err != nil {
		return "", fmt.Errorf("%w: write: %w", ErrDisconnected, err)
	}
	return id, nil
}

// read returns the next line from the agent, a response or an event. When
// ctx ends first, it returns ctx's error and keeps what it had read of
// the line for the next read.
func (c *socketConn) read(ctx context.Context) (*ipc.Response, *ipc.Event, error) {
	c.nc.SetReadDeadline(time.Time{})
	fired := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		c.nc.SetReadDeadline(time.Unix(1, 0)) // ends the read in progress
		close(fired)
	})
	line, err := c.r.ReadBytes('\n')
	if !stop() {
		<-fired
	}
	c.partial = append(c.partial, line...)
	if err != nil {
		if ctx.Err() != nil {
			return nil, nil, ctx.Err()
		}
		if len(c.partial) == 0 {
			return nil, nil, fmt.Errorf("%w: it closed the connection", ErrDisconnected)
		}
		return nil, nil, fmt.Errorf("%w: read: %w", ErrDisconnected, err)
	}
	line, c.partial = c.partial, nil
	var ev ipc.Event
	if err := json.Unmarshal(line, &ev); err == nil && ev.Event != "" {
		return nil, &ev, nil
	}
	var resp ipc.Response
	if err := json.Unmarshal(line, &resp); err != nil {
		return nil, nil, fmt.Errorf("the agent sent %q: %w", line, err)
	}
	return &resp, nil, nil
}

// call sends req and waits for its response; events that come meanwhile
// are not meant for a connection that does not listen. A failed request
// returns the response as well as its *AgentError.
func (c *socketConn) call(ctx context.Context, req ipc.Request) (ipc.Response, error) {
	id, err := c.send(req)
	if err != nil {
		return ipc.Response{}, err
	}
	for {
		resp, ev, err := c.read(ctx)
		if err != nil {
			return ipc.Response{}, err
		}
		if ev != nil || string(resp.ID) != id {
			continue
		}
		if resp.Error != nil {
			return *resp, resp.Error
		}
		if !resp.OK {
			return *resp, fmt.Errorf("the agent answered %q with neither ok nor an error", req.Op)
		}
		return *resp, nil
	}
}

// socketStream is a listening socket connection. Acks go on a second
// connection (docs/ipc.md allows any), so that an ack's answer is never
// queued behind the events the app has not read yet.
type socketStream struct {
	listening *socketConn
	path      string
	app       string

	mu    sync.Mutex // guards acker, and orders the acks
	acker *socketConn
}

func listenSocket(ctx context.Context, path, app string) (*socketStream, error) {
	conn, err := dialSocket(ctx, path)
	if err != nil {
		return nil, err
	}
	if _, err := conn.call(ctx, ipc.Request{Op: "listen", App: app}); err != nil {
		conn.close()
		return nil, err
	}
	return &socketStream{listening: conn, path: path, app: app}, nil
}

func (s *socketStream) next(ctx context.Context) (*ipc.Event, error) {
	resp, ev, err := s.listening.read(ctx)
	if err != nil {
		return nil, err
	}
	if resp != nil {
		return nil, fmt.Errorf("unexpected response from the agent: %+v", resp)
	}
	return ev, nil
}

func (s *socketStream) ack(ctx context.Context, ids []string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.acker == nil {
		conn, err := dialSocket(ctx, s.path)
		if err != nil {
			return err
		}
		s.acker = conn
	}
	_, err := s.acker.call(ctx, ipc.Request{Op: "ack", App: s.app, IDs: ids})
	var refused *AgentError
	if err != nil && !errors.As(err, &refused) {
		// The connection is in an unknown state: the next ack dials anew.
		s.acker.close()
		s.acker = nil
	}
	return err
}

func (s *socketStream) close() {
	s.listening.close()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.acker != nil {
		s.acker.close()
		s.acker = nil
	}
}
