// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"time"
)

// The chaos test's local app is this test binary run again with
// chaosAppEnv set (TestMain hands over to runChaosApp): a process of its
// own, which the test kills with SIGKILL as it kills tetherd and
// tether-server. What it received and acked survives it in its records.
const (
	// chaosAppEnv names the file the app writes its records to; it must
	// not exist yet.
	chaosAppEnv = "TETHER_CHAOS_APP_RECORDS"
	// chaosAppSocketEnv is the agent's socket.
	chaosAppSocketEnv = "TETHER_CHAOS_APP_SOCKET"
	// maxHandling bounds the time the app takes to handle a message.
	maxHandling = 150 * time.Millisecond
)

// Ops of the app's records.
const (
	recStart     = "start"      // an instance of the app began
	recGot       = "got"        // a message was delivered to the app
	recAcked     = "acked"      // the agent confirmed the app's ack of the message
	recDeleted   = "deleted"    // a deleted_messages event
	recSendError = "send_error" // an upstream message was given up
)

// appRecord is one line of the app's records, written and fsynced before
// the app acts on what it records.
type appRecord struct {
	Op    string `json:"op"`
	ID    string `json:"id,omitempty"`
	Seq   int    `json:"seq"`
	Kind  string `json:"kind,omitempty"`
	Count int    `json:"count,omitempty"`
	Error string `json:"error,omitempty"`
}

type chaosApp struct {
	records *os.File
	log     *slog.Logger
}

// runChaosApp listens for app's messages on the agent's socket, through
// the agent's restarts, until it is killed or the test process is gone:
// it records each message, acks it, and records the ack once the agent
// confirmed it.
func runChaosApp() int {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	path, sock := os.Getenv(chaosAppEnv), os.Getenv(chaosAppSocketEnv)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		log.Error("open the records", "err", err)
		return 1
	}
	a := &chaosApp{records: f, log: log}
	if err := a.record(appRecord{Op: recStart}); err != nil {
		log.Error("record", "err", err)
		return 1
	}
	// The test holds the write end of stdin: when the test process ends,
	// however it ends, so does the app.
	go func() {
		io.Copy(io.Discard, os.Stdin)
		log.Info("the test is gone; exiting")
		os.Exit(0)
	}()
	for {
		err := a.listen(sock)
		var storage *recordError
		if errors.As(err, &storage) {
			log.Error("records cannot be written; exiting", "err", err)
			return 1
		}
		log.Info("not listening; listening again", "err", err)
		time.Sleep(100 * time.Millisecond) // the agent is down or restarting
	}
}

// recordError is a failure to write the records: the app cannot go on
// honestly.
type recordError struct{ err error }

func (e *recordError) Error() string { return "write the records: " + e.err.Error() }
func (e *recordError) Unwrap() error { return e.err }

// record appends r to the records and makes it durable.
func (a *chaosApp) record(r appRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return &recordError{err}
	}
	if _, err := a.records.Write(append(b, '\n')); err != nil {
		return &recordError{err}
	}
	if err := a.records.Sync(); err != nil {
		return &recordError{err}
	}
	return nil
}

// listen is one listening connection, until it ends.
func (a *chaosApp) listen(sock string) error {
	c, err := dialApp(sock)
	if err != nil {
		return err
	}
	defer c.close()
	if _, err := c.call(map[string]any{"op": "listen", "app": app}); err != nil {
		return fmt.Errorf("listen: %w", err)
	}
	a.log.Info("listening")
	queued := c.events // lines that came before the listen's answer
	acks := map[int]string{}
	for {
		var line []byte
		if len(queued) > 0 {
			line, queued = queued[0], queued[1:]
		} else if line, err = c.readLine(5 * time.Minute); err != nil {
			return fmt.Errorf("read: %w", err)
		}
		var in struct {
			ID      *int   `json:"id"`
			OK      bool   `json:"ok"`
			Event   string `json:"event"`
			Count   int    `json:"count"`
			Error   any    `json:"error"`
			UpID    string `json:"message_id"`
			Message struct {
				ID   string            `json:"message_id"`
				Data map[string]string `json:"data"`
			} `json:"message"`
		}
		if err := json.Unmarshal(line, &in); err != nil {
			return fmt.Errorf("the agent sent a line that is not JSON: %q", line)
		}
		switch {
		case in.Event == "message":
			id := in.Message.ID
			seq, err := strconv.Atoi(in.Message.Data["seq"])
			if err != nil {
				seq = -1
			}
			if err := a.record(appRecord{Op: recGot, ID: id, Seq: seq, Kind: in.Message.Data["kind"]}); err != nil {
				return err
			}
			// Handling takes a while, as in a real app, so that kills land
			// between deliveries and their acks.
			time.Sleep(rand.N(maxHandling))
			c.seq++
			acks[c.seq] = id
			ack, _ := json.Marshal(map[string]any{"id": c.seq, "op": "ack", "app": app, "ids": []string{id}})
			if err := c.writeLine(ack); err != nil {
				return fmt.Errorf("ack %s: %w", id, err)
			}
		case in.Event == "deleted_messages":
			if err := a.record(appRecord{Op: recDeleted, Count: in.Count}); err != nil {
				return err
			}
		case in.Event == "send_error":
			if err := a.record(appRecord{Op: recSendError, ID: in.UpID, Error: fmt.Sprint(in.Error)}); err != nil {
				return err
			}
		case in.Event == "replaced":
			return errors.New("another listener replaced this one")
		case in.Event != "":
			// sent, token_refreshed: nothing to account for
		case in.ID != nil:
			id, ok := acks[*in.ID]
			if !ok {
				return fmt.Errorf("an answer to no request: %q", line)
			}
			delete(acks, *in.ID)
			if !in.OK {
				a.log.Warn("ack refused", "message_id", id, "answer", string(line))
				continue
			}
			if err := a.record(appRecord{Op: recAcked, ID: id}); err != nil {
				return err
			}
		}
	}
}

// readAppRecords reads the records of the app's instances, in the order
// they ran. An instance killed in the middle of a write may leave its
// last line torn; such a line is skipped.
func readAppRecords(paths []string) ([]appRecord, error) {
	var out []appRecord
	for _, path := range paths {
		b, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			continue // killed before it wrote anything
		}
		if err != nil {
			return nil, err
		}
		lines := bytes.SplitAfter(b, []byte("\n"))
		for i, line := range lines {
			if len(line) == 0 || line[len(line)-1] != '\n' {
				continue // the torn last line of a killed instance
			}
			var r appRecord
			if err := json.Unmarshal(line, &r); err != nil {
				return nil, fmt.Errorf("%s line %d: %w", path, i+1, err)
			}
			out = append(out, r)
		}
	}
	return out, nil
}
