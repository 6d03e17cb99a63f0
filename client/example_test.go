// SPDX-License-Identifier: Apache-2.0

package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"time"

	"tether/client"
	"tether/ipc"
)

// An app registers with its app server's sender ID, then listens for its
// messages, handling and acking each. TestMain runs an agent's socket door
// for the examples, at $TETHER_SOCKET, with a message waiting for the app.
func Example() {
	ctx := context.Background()
	agent, err := client.New(client.Config{}) // $TETHER_SOCKET, else /run/tether/tetherd.sock
	if err != nil {
		log.Fatal(err)
	}
	token, err := agent.Register(ctx, "com.example.weather", "123456")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("hand the token to the app server:", token != "")

	l, err := agent.Listen(ctx, "com.example.weather")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	ev, err := l.Next(ctx)
	if err != nil {
		log.Fatal(err)
	}
	if ev.Event == ipc.EventMessage {
		m := ev.Message
		fmt.Printf("message %s from %s: temp=%s\n", m.ID, m.From, m.Data["temp"])
		// Handled: it never comes again once Ack returns.
		if err := l.Ack(ctx, m.ID); err != nil {
			log.Fatal(err)
		}
	}
	// Output:
	// hand the token to the app server: true
	// message 0:1%example from 123456: temp=21
}

// A listener that lives as long as the app: it listens again when the
// agent restarts, and what it had not acked comes again.
func ExampleListener_Next() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	agent, err := client.New(client.Config{})
	if err != nil {
		log.Fatal(err)
	}
	handle := func(m *client.Message) { fmt.Println("handled", m.ID) }
	for ctx.Err() == nil {
		l, err := agent.Listen(ctx, "com.example.thermo")
		if errors.Is(err, client.ErrUnreachable) {
			time.Sleep(time.Second) // the agent is starting or stopped
			continue
		} else if err != nil {
			log.Fatal(err)
		}
		for {
			ev, err := l.Next(ctx)
			if err != nil {
				break // ErrDisconnected: listen again. ErrReplaced: another listener has the app.
			}
			if ev.Event == ipc.EventMessage {
				handle(ev.Message)
				if err := l.Ack(ctx, ev.Message.ID); err != nil {
					break
				}
				cancel() // the example ends here
			}
		}
		l.Close()
	}
	// Output:
	// handled 0:2%example
}

func ExampleClient_Send() {
	ctx := context.Background()
	agent, err := client.New(client.Config{})
	if err != nil {
		log.Fatal(err)
	}
	ttl := int64(3600)
	id, err := agent.Send(ctx, client.SendRequest{
		App: "com.example.weather", To: "123456", ID: "reading-42", TTL: &ttl,
		Data: map[string]string{"temp": "21"},
	})
	var refused *client.AgentError
	switch {
	case errors.As(err, &refused) && refused.Code == ipc.CodeTooManyMessages:
		fmt.Println("20 messages wait already: send again later")
	case err != nil:
		log.Fatal(err)
	default:
		fmt.Println("stored as", id)
	}
	// Output: stored as reading-42
}

func ExampleClient_Status() {
	agent, err := client.New(client.Config{})
	if err != nil {
		log.Fatal(err)
	}
	st, err := agent.Status(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("connected:", st.Connected, "device:", st.DeviceID)
	// Output: connected: true device: device-example
}
