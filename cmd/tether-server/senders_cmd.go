// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"time"
)

func senderUpdate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("sender update", stderr)
	tgt := targetFlags(fs)
	id := fs.String("id", "", "sender `ID` to change")
	webhook := fs.String("webhook", "", "`URL` that upstream messages are POSTed to from now on (\"\" for none)")
	asJSON := fs.Bool("json", false, `print {"sender_id": ..., "name": ..., "webhook": ..., "created": ...}`)
	if err := parse(fs, args, "id"); err != nil {
		return err
	}
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "webhook" })
	if !given {
		fmt.Fprintf(stderr, "%s: give --webhook URL, or --webhook \"\" to remove it\n", fs.Name())
		return errUsage
	}
	if err := tgt.check(fs); err != nil {
		return err
	}
	admin, err := openAdmin(ctx, tgt, false)
	if err != nil {
		return err
	}
	defer admin.Close()
	info, err := admin.SetSenderWebhook(ctx, *id, *webhook)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(info)
	}
	fmt.Fprintf(stdout, "sender %s webhook %s\n", info.ID, dashIfEmpty(info.Webhook))
	return nil
}

func senderRotateWebhookSecret(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("sender rotate-webhook-secret", stderr)
	tgt := targetFlags(fs)
	id := fs.String("id", "", "sender `ID` whose webhook secret to replace")
	grace := fs.Duration("grace", 24*time.Hour, "how long the old secret keeps signing beside the new one (`duration`, 0 to stop it at once)")
	asJSON := fs.Bool("json", false, `print {"sender_id": ..., "webhook_secret": ..., "old_secret_until": ...}`)
	admin, err := tgt.open(ctx, fs, args, false, "id")
	if err != nil {
		return err
	}
	defer admin.Close()
	rotated, err := admin.RotateWebhookSecret(ctx, *id, *grace)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(rotated)
	}
	fmt.Fprintf(stdout, "sender_id      %s\nwebhook_secret %s\n", rotated.ID, rotated.WebhookSecret)
	if !rotated.OldSecretUntil.IsZero() {
		fmt.Fprintf(stdout, "old secret signs until %s\n", rotated.OldSecretUntil.Local().Format(time.DateTime))
	}
	fmt.Fprintln(stderr, "Keep the webhook secret safe: it is shown only this once.")
	return nil
}
