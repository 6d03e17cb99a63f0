// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"tether/server"
)

// readSecretFile reads a key from a file that only its owner may read: a
// key others can read is everyone's key.
func readSecretFile(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if mode := fi.Mode().Perm(); mode&0o077 != 0 {
		return "", fmt.Errorf("%s has mode %04o: others can read it; chmod 600 %s", path, mode, path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	key := strings.TrimSpace(string(b))
	if key == "" {
		return "", fmt.Errorf("%s is empty", path)
	}
	return key, nil
}

func enrollCreate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("enroll create", stderr)
	tgt := targetFlags(fs)
	uses := fs.Int("uses", 1, "how many `devices` the key enrolls; 1 for one device")
	expires := fs.Duration("expires", 0, "the key ends after this `duration` (0: when its uses are spent)")
	asJSON := fs.Bool("json", false, `print {"id": ..., "key": ...}`)
	if err := parse(fs, args); err != nil {
		return err
	}
	if err := tgt.check(fs); err != nil {
		return err
	}
	if *uses < 1 || *uses > server.MaxEnrollKeyUses || *expires < 0 {
		fmt.Fprintf(stderr, "tether-server enroll create: --uses is 1 to %d and --expires cannot be negative\n", server.MaxEnrollKeyUses)
		return errUsage
	}
	admin, err := openAdmin(ctx, tgt, true)
	if err != nil {
		return err
	}
	defer admin.Close()
	k, err := admin.CreateEnrollKey(ctx, *uses, *expires)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(struct {
			ID  string `json:"id"`
			Key string `json:"key"`
		}{k.ID, k.Key})
	}
	fmt.Fprintf(stdout, "id  %s\nkey %s\n", k.ID, k.Key)
	fmt.Fprintln(stderr, "Keep the key safe: it is shown only this once.")
	return nil
}

func enrollList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("enroll list", stderr)
	tgt := targetFlags(fs)
	asJSON := fs.Bool("json", false, "print a JSON array")
	admin, err := tgt.open(ctx, fs, args, false)
	if err != nil {
		return err
	}
	defer admin.Close()
	list, err := admin.EnrollKeys(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tUSED\tCREATED\tEXPIRES\tSTATE")
	for _, k := range list {
		state := "usable"
		switch {
		case !k.Revoked.IsZero():
			state = "revoked"
		case !k.Usable:
			state = "spent or expired"
		}
		fmt.Fprintf(tw, "%s\t%d/%d\t%s\t%s\t%s\n", k.ID, k.Used, k.Uses, k.Created.Local().Format(time.DateTime), orDash(k.Expires), state)
	}
	return tw.Flush()
}

func enrollRevoke(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("enroll revoke", stderr)
	tgt := targetFlags(fs)
	id := fs.String("id", "", "`ID` of the enrollment key to revoke")
	admin, err := tgt.open(ctx, fs, args, false, "id")
	if err != nil {
		return err
	}
	defer admin.Close()
	if err := admin.RevokeEnrollKey(ctx, *id); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "revoked enrollment key %s; the devices it enrolled stay\n", *id)
	return nil
}

func deviceList(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("device list", stderr)
	tgt := targetFlags(fs)
	asJSON := fs.Bool("json", false, "print a JSON array")
	admin, err := tgt.open(ctx, fs, args, false)
	if err != nil {
		return err
	}
	defer admin.Close()
	list, err := admin.Devices(ctx)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(list)
	}
	return printDevices(stdout, list...)
}

// printDevices shows devices as a table, with the fields of list --json.
func printDevices(w io.Writer, devices ...server.DeviceInfo) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tCREATED\tLAST SEEN\tAGENT\tPOWER MODE\tREGISTRATIONS\tREVOKED")
	for _, d := range devices {
		revoked := "no"
		if d.Revoked {
			revoked = d.RevokedAt.Local().Format(time.DateTime)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d\t%s\n", d.ID, d.Created.Local().Format(time.DateTime), orDash(d.LastSeen),
			dashIfEmpty(d.Agent), dashIfEmpty(d.PowerMode), d.Registrations, revoked)
	}
	return tw.Flush()
}

func deviceShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("device show", stderr)
	tgt := targetFlags(fs)
	id := fs.String("id", "", "`ID` of the device")
	asJSON := fs.Bool("json", false, "print a JSON object")
	admin, err := tgt.open(ctx, fs, args, false, "id")
	if err != nil {
		return err
	}
	defer admin.Close()
	d, err := admin.Device(ctx, *id)
	if err != nil {
		return err
	}
	if *asJSON {
		return json.NewEncoder(stdout).Encode(d)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	for _, row := range [][2]string{
		{"id", d.ID}, {"created", d.Created.Local().Format(time.DateTime)}, {"last_seen", orDash(d.LastSeen)},
		{"agent", dashIfEmpty(d.Agent)}, {"power_mode", dashIfEmpty(d.PowerMode)}, {"registrations", fmt.Sprint(d.Registrations)},
		{"revoked", orDash(d.RevokedAt)}, {"enrolled_by", dashIfEmpty(d.EnrolledBy)}, {"cert_id", dashIfEmpty(d.CertID)},
	} {
		fmt.Fprintf(tw, "%s\t%s\n", row[0], row[1])
	}
	return tw.Flush()
}

// deviceEnd revokes or removes a device, as verb says.
func deviceEnd(ctx context.Context, verb string, args []string, stdout, stderr io.Writer) error {
	fs := flags("device "+verb, stderr)
	tgt := targetFlags(fs)
	id := fs.String("id", "", "`ID` of the device to "+verb)
	admin, err := tgt.open(ctx, fs, args, false, "id")
	if err != nil {
		return err
	}
	defer admin.Close()
	end := admin.RevokeDevice
	if verb == "remove" {
		end = admin.RemoveDevice
	}
	if err := end(ctx, *id); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%sd device %s; its tokens answer NotRegistered\n", verb, *id)
	return nil
}

func orDash(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.Local().Format(time.DateTime)
}

func dashIfEmpty(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
