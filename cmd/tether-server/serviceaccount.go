// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"text/tabwriter"
	"time"

	"tether/server"
)

// senderServiceAccount serves `sender service-account`: with no verb it
// makes a service-account file; `list` and `revoke` manage the keys.
func senderServiceAccount(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "list" {
		return serviceAccountList(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "revoke" {
		return serviceAccountRevoke(ctx, args[1:], stdout, stderr)
	}
	fs := flags("sender service-account", stderr)
	tgt := targetFlags(fs)
	id := fs.String("id", "", "sender `ID` the service account sends for (its project_id)")
	publicURL := fs.String("public-url", "", "the `URL` app servers reach the server at, as serve's --public-url: the file's token_uri is under it")
	out := fs.String("out", "", "service-account `file` to write, mode 0600; it must not exist")
	admin, err := tgt.open(ctx, fs, args, false, "id", "public-url", "out")
	if err != nil {
		return err
	}
	defer admin.Close()
	// The file is made first, so that a key is never stored for a file
	// that cannot be written.
	f, err := os.OpenFile(*out, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return fmt.Errorf("create service-account file: %w", err)
	}
	account, err := admin.AddServiceAccount(ctx, *id, *publicURL)
	if err == nil {
		err = writeServiceAccount(f, account)
	}
	if err != nil {
		f.Close()
		os.Remove(*out)
		if account.PrivateKeyID != "" {
			err = fmt.Errorf("%w (revoke key %s)", err, account.PrivateKeyID)
		}
		return err
	}
	fmt.Fprintf(stdout, "service account %s\nprivate_key_id  %s\ntoken_uri       %s\nwritten to      %s\n", account.ClientEmail, account.PrivateKeyID, account.TokenURI, *out)
	fmt.Fprintln(stderr, "Keep the service-account file safe: its private key exists nowhere else.")
	return nil
}

// writeServiceAccount writes the file, synced, and closes it.
func writeServiceAccount(f *os.File, account server.ServiceAccount) error {
	enc := json.NewEncoder(f)
	enc.SetIndent("", "  ")
	err := enc.Encode(account)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write service-account file: %w", err)
	}
	return nil
}

func serviceAccountList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("sender service-account list", stderr)
	tgt := targetFlags(fs)
	id := fs.String("id", "", "sender `ID` whose service-account keys to list")
	asJSON := fs.Bool("json", false, "print a JSON array")
	admin, err := tgt.open(ctx, fs, args, false, "id")
	if err != nil {
		return err
	}
	defer admin.Close()
	list, err := admin.ServiceKeys(ctx, *id)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PRIVATE KEY ID\tCLIENT EMAIL\tTOKEN URI\tCREATED")
	for _, k := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", k.ID, k.Email, k.TokenURI, k.Created.Local().Format(time.DateTime))
	}
	return tw.Flush()
}

func serviceAccountRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("sender service-account revoke", stderr)
	tgt := targetFlags(fs)
	id := fs.String("id", "", "sender `ID` the key belongs to")
	key := fs.String("key", "", "`private_key_id` of the key to revoke")
	admin, err := tgt.open(ctx, fs, args, false, "id", "key")
	if err != nil {
		return err
	}
	defer admin.Close()
	if err := admin.RevokeServiceKey(ctx, *id, *key); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked service-account key %s of sender %s\n", *key, *id)
	return nil
}
