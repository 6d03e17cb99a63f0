// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"

	"tether/server"
)

func deviceDrain(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("device drain", stderr)
	to := fs.String("to", "", "`URL` of the node devices go to next (wss://host:port); default on a cluster: another live node")
	over := fs.Duration("over", time.Minute, "spread the sessions' goaways over this `duration`, so that the other nodes take them in a stream")
	retryAfter := fs.Duration("retry-after", time.Minute, "wait asked of devices with no node to go to (`duration`, spread ±50%)")
	asJSON := fs.Bool("json", false, `print {"sessions": ...}`)
	a, _, err := openNode(ctx, fs, args, "data `directory` of the running server (node) to drain")
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

// openNode adds --data, described by usage, to fs, parses args, with the
// flags named in required beside it, and opens the admin of the server in
// that data directory, which it returns.
func openNode(ctx context.Context, fs *flag.FlagSet, args []string, usage string, required ...string) (*server.Admin, string, error) {
	data := fs.String("data", "", usage)
	if err := parse(fs, args, append([]string{"data"}, required...)...); err != nil {
		return nil, "", err
	}
	a, err := server.OpenAdmin(ctx, server.AdminConfig{DataDir: *data})
	if err != nil {
		return nil, "", err
	}
	return a, *data, nil
}
