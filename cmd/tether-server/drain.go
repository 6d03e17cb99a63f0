package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"tether/server"
)

func deviceDrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("device drain", stderr)
	data := fs.String("data", "", "data `directory` of the running server (node) to drain")
	to := fs.String("to", "", "`URL` of the node devices go to next (wss://host:port); default on a cluster: another live node")
	over := fs.Duration("over", time.Minute, "spread the sessions' goaways over this `duration`, so that the other nodes take them in a stream")
	retryAfter := fs.Duration("retry-after", time.Minute, "wait asked of devices with no node to go to (`duration`, spread ±50%)")
	asJSON := fs.Bool("json", false, `print {"sessions": ...}`)
	if err := parse(fs, args, "data"); err != nil {
		return err
	}
	a, err := server.OpenAdmin(ctx, server.AdminConfig{DataDir: *data})
	if err != nil {
		return err
	}
	defer a.Close()
	res, err := a.DrainDevices(ctx, server.DeviceDrain{To: *to, Over: *over, RetryAfter: *retryAfter})
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(res)
	}
	fmt.Fprintf(stdout, "draining %d device sessions over %v; the server takes no new ones until it restarts\n", res.Sessions, *over)
	return nil
}
