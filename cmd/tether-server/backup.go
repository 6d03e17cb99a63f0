// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"tether/server"
)

func backup(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("backup", stderr)
	out := fs.String("out", "", "`file` to write the copy to (mode 0600), replaced atomically")
	asJSON := fs.Bool("json", false, `print {"path": ..., "bytes": ..., "online": ...}`)
	a, data, err := openNode(ctx, fs, args, "data `directory` of the server, running or stopped", "out")
	if err != nil {
		return err
	}
	defer a.Close()
	res, err := a.Backup(ctx, data, *out)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(res)
	}
	how := "from the stopped store"
	if res.Online {
		how = "from the running server"
	}
	fmt.Fprintf(stdout, "backed up %d bytes to %s, %s; the copy checked whole\n", res.Bytes, res.Path, how)
	return nil
}

func compact(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("compact", stderr)
	data := fs.String("data", "", "data `directory` of the stopped server")
	asJSON := fs.Bool("json", false, `print {"bytes_before": ..., "bytes_after": ...}`)
	if err := parse(fs, args, "data"); err != nil {
		return err
	}
	res, err := server.Compact(ctx, *data)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(res)
	}
	fmt.Fprintf(stdout, "compacted the store from %d to %d bytes\n", res.Before, res.After)
	return nil
}
