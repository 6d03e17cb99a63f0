// SPDX-License-Identifier: Apache-2.0

package client_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"tether/ipc"
	"tether/ipc/ipctest"
	"tether/ipc/socketdoor"
)

// TestMain serves the examples an agent's socket door, over a backend with
// a message waiting for each example app, at $TETHER_SOCKET.
func TestMain(m *testing.M) {
	os.Exit(runWithDoor(m))
}

func runWithDoor(m *testing.M) int {
	dir, err := os.MkdirTemp("", "tether-client")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	b := ipctest.New("push.example.test:443", "device-example")
	b.Push(ipc.Message{ID: "0:1%example", App: "com.example.weather", From: "123456", Data: map[string]string{"temp": "21"}})
	b.Push(ipc.Message{ID: "0:2%example", App: "com.example.thermo", From: "123456", Data: map[string]string{"setpoint": "19"}})
	if _, err := b.Register(context.Background(), ipc.Caller{UID: uint32(os.Getuid())}, ipc.RegisterRequest{App: "com.example.thermo", Sender: "123456"}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	socket := filepath.Join(dir, "tetherd.sock")
	door, err := socketdoor.New(socketdoor.Config{Path: socket, Backend: b, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	served := make(chan error, 1)
	go func() { served <- door.Serve(context.Background()) }()
	defer func() {
		door.Close()
		<-served
	}()
	os.Setenv("TETHER_SOCKET", socket)
	return m.Run()
}
