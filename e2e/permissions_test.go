// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// ctlAs runs tetherctl as another Unix user against the agent.
func (a *agent) ctlAs(uid uint32, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(binDir, "tetherctl"), append([]string{"--socket", a.sock}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestAppsBelongToTheirUser runs local apps as different Unix users: the
// agent learns who they are from the kernel (SO_PEERCRED), binds an app ID
// to the user that first registered it, and lets no other user but root
// act for it.
func TestAppsBelongToTheirUser(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run apps as other users")
	}
	const alice, bob = 50001, 50002
	f := newFleet(t)
	// Let other users reach the binaries and the socket's directory.
	for _, dir := range []string{binDir, filepath.Dir(f.agent.sock), filepath.Dir(filepath.Dir(f.agent.sock))} {
		if err := os.Chmod(dir, 0o755); err != nil {
			t.Fatal(err)
		}
	}

	aliceApp := "com.example.alice"
	out, err := f.agent.ctlAs(alice, "register", "--app", aliceApp, "--sender", f.sender)
	aliceToken := strings.TrimSpace(out)
	if err != nil || len(aliceToken) < 32 {
		t.Fatalf("alice registers her app: %v: %s", err, out)
	}
	cases := []struct {
		who  string
		uid  uint32
		args []string
	}{
		{"bob listens to alice's app", bob, []string{"listen", "--app", aliceApp, "--count", "1"}},
		{"bob registers alice's app for another sender", bob, []string{"register", "--app", aliceApp, "--sender", "123"}},
		{"bob sends as alice's app", bob, []string{"send", "--app", aliceApp, "--to", f.sender, "k=v"}},
		{"bob unregisters alice's app", bob, []string{"unregister", "--app", aliceApp, "--sender", f.sender}},
		{"alice listens to root's app", alice, []string{"listen", "--app", app, "--count", "1"}},
	}
	for _, tc := range cases {
		t.Run(tc.who, func(t *testing.T) {
			out, err := f.agent.ctlAs(tc.uid, tc.args...)
			if err == nil || !strings.Contains(out, "PermissionDenied") {
				t.Fatalf("%s: %v: %q, want a PermissionDenied error", tc.who, err, out)
			}
			if strings.Contains(out, f.token) {
				t.Fatalf("the permission error shows a token: %q", out)
			}
		})
	}

	// Alice gets her own messages; root may act for any app.
	id := f.srv.mustSend(f.key, map[string]any{"to": aliceToken, "data": map[string]string{"for": "alice"}})
	got, err := f.agent.ctlAs(alice, "listen", "--app", aliceApp, "--count", "1", "--json")
	if err != nil || !strings.Contains(got, id) {
		t.Fatalf("alice listening to her app: %v: %s, want message %s", err, got, id)
	}
	if _, err := f.agent.ctl("send", "--app", aliceApp, "--to", f.sender, "from=root"); err != nil {
		t.Fatalf("root sends for alice's app: %v", err)
	}
}
