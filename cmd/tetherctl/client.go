package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"strconv"
	"time"

	"tether/ipc"
)

// writeTimeout bounds each request write; the agent reads promptly.
const writeTimeout = 10 * time.Second

// conn is one connection to the agent's socket.
type conn struct {
	nc     net.Conn
	r      *bufio.Reader
	stop   func() bool
	nextID int
}

// dial connects to the agent. When ctx ends the connection is closed, which
// ends any read in progress.
func dial(ctx context.Context, path string) (*conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("cannot reach the agent: %w", err)
	}
	return &conn{
		nc:   nc,
		r:    bufio.NewReader(nc),
		stop: context.AfterFunc(ctx, func() { nc.Close() }),
	}, nil
}

func (c *conn) close() {
	c.stop()
	c.nc.Close()
}

// send writes a request with a fresh id and returns that id.
func (c *conn) send(req ipc.Request) (string, error) {
	c.nextID++
	id := strconv.Itoa(c.nextID)
	req.ID = json.RawMessage(id)
	line, err := json.Marshal(req)
	if err != nil {
		return "", fmt.Errorf("encode request: %w", err)
	}
	c.nc.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := c.nc.Write(append(line, '\n')); err != nil {
		return "", fmt.Errorf("write to the agent: %w", err)
	}
	return id, nil
}

// read returns the next line from the agent: a response or an event.
func (c *conn) read() (*ipc.Response, *ipc.Event, error) {
	line, err := c.r.ReadBytes('\n')
	if err != nil {
		if len(line) == 0 {
			return nil, nil, fmt.Errorf("the agent closed the connection")
		}
		return nil, nil, fmt.Errorf("read from the agent: %w", err)
	}
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

// call sends req and waits for its response. A failed request returns the
// response as well as its *ipc.ResponseError.
func (c *conn) call(req ipc.Request) (ipc.Response, error) {
	id, err := c.send(req)
	if err != nil {
		return ipc.Response{}, err
	}
	for {
		resp, ev, err := c.read()
		if err != nil {
			return ipc.Response{}, err
		}
		if ev != nil || string(resp.ID) != id {
			continue // not listening: nothing else is meant for this call
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

// call makes one request on a connection of its own, to the socket or,
// with --dbus, on the bus.
func (c *cli) call(ctx context.Context, req ipc.Request) (ipc.Response, error) {
	var resp ipc.Response
	var err error
	if c.bus != "" {
		resp, err = callBus(ctx, c.bus, c.getenv, req)
	} else {
		var conn *conn
		if conn, err = dial(ctx, c.socket); err != nil {
			return ipc.Response{}, err
		}
		defer conn.close()
		resp, err = conn.call(req)
	}
	if err != nil && ctx.Err() != nil {
		return resp, fmt.Errorf("interrupted")
	}
	return resp, err
}

// listener is an app's subscription through either door.
type listener interface {
	// next returns the app's next event, or nil when what came was the
	// answer to an ack.
	next() (*ipc.Event, error)
	// ack acknowledges a message; its failure may come from a later next.
	ack(id string) error
	// pendingAcks counts the acks not answered yet.
	pendingAcks() int
	close()
}

// listen makes a new connection the app's listener.
func (c *cli) listen(ctx context.Context, app string) (listener, error) {
	if c.bus != "" {
		return listenBus(ctx, c.bus, c.getenv, app)
	}
	conn, err := dial(ctx, c.socket)
	if err != nil {
		return nil, err
	}
	if _, err := conn.call(ipc.Request{Op: "listen", App: app}); err != nil {
		conn.close()
		return nil, err
	}
	return &socketListener{conn: conn, app: app, acks: make(map[string]string)}, nil
}

// socketListener is a listening socket connection. Acks are pipelined:
// their answers come between the events.
type socketListener struct {
	conn *conn
	app  string
	acks map[string]string // request id → message id, until answered
}

func (l *socketListener) next() (*ipc.Event, error) {
	resp, ev, err := l.conn.read()
	if err != nil {
		return nil, err
	}
	if resp == nil {
		return ev, nil
	}
	msgID, ok := l.acks[string(resp.ID)]
	if !ok {
		return nil, fmt.Errorf("unexpected response from the agent: %+v", resp)
	}
	delete(l.acks, string(resp.ID))
	if resp.Error != nil {
		return nil, fmt.Errorf("ack %s: %w", msgID, resp.Error)
	}
	return nil, nil
}

func (l *socketListener) ack(id string) error {
	reqID, err := l.conn.send(ipc.Request{Op: "ack", App: l.app, IDs: []string{id}})
	if err != nil {
		return err
	}
	l.acks[reqID] = id
	return nil
}

func (l *socketListener) pendingAcks() int { return len(l.acks) }
func (l *socketListener) close()           { l.conn.close() }
