// SPDX-License-Identifier: Apache-2.0

package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// cmdCase is a command and what it must answer.
type cmdCase struct {
	name     string
	args     []string
	code     int
	contains string // in stdout, or stderr on failure
}

// runCmdCase runs tc's command with cmd and checks its exit code and
// output.
func runCmdCase(t *testing.T, cmd func(args ...string) (int, string, string), tc cmdCase) (code int, stdout, stderr string) {
	t.Helper()
	code, stdout, stderr = cmd(tc.args...)
	out := stdout
	if code != 0 {
		out = stderr
	}
	if code != tc.code || !strings.Contains(out, tc.contains) {
		t.Errorf("%s: %d %q %q, want %d and %q", tc.name, code, stdout, stderr, tc.code, tc.contains)
	}
	return code, stdout, stderr
}

// testWebhookCommands changes the webhook of sender id and rotates its
// webhook secret, which was secret, with cmd.
func testWebhookCommands(t *testing.T, cmd func(args ...string) (int, string, string), id, secret string) {
	t.Helper()
	for _, tc := range []cmdCase{
		{"update without --webhook", []string{"sender", "update", "--id", id}, 2, "--webhook"},
		{"update to no URL", []string{"sender", "update", "--id", id, "--webhook", "not a url"}, 1, "absolute http or https URL"},
		{"update of no sender", []string{"sender", "update", "--id", "999999999999", "--webhook", "https://c.example/up"}, 1, "no such sender"},
		{"update", []string{"sender", "update", "--id", id, "--webhook", "https://c.example/up"}, 0, "https://c.example/up"},
		{"list after update", []string{"sender", "list"}, 0, "https://c.example/up"},
		{"rotate of no sender", []string{"sender", "rotate-webhook-secret", "--id", "999999999999"}, 1, "no such sender"},
		{"rotate with too long a grace", []string{"sender", "rotate-webhook-secret", "--id", id, "--grace", "1000h"}, 1, "grace"},
		{"rotate", []string{"sender", "rotate-webhook-secret", "--id", id, "--grace", "0"}, 0, "webhook_secret whsec_"},
	} {
		_, stdout, stderr := runCmdCase(t, cmd, tc)
		if strings.Contains(stdout+stderr, secret) {
			t.Errorf("%s: the webhook secret shown again", tc.name)
		}
	}
	code, stdout, stderr := cmd("sender", "rotate-webhook-secret", "--id", id, "--grace", "2h", "--json")
	var rotated map[string]any
	if err := json.Unmarshal([]byte(stdout), &rotated); code != 0 || err != nil || rotated["sender_id"] != id ||
		!strings.HasPrefix(rotated["webhook_secret"].(string), "whsec_") || rotated["old_secret_until"] == nil {
		t.Errorf("rotate-webhook-secret --json: %d %q %q %v", code, stdout, stderr, err)
	}
}
