// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"tether/internal/netnstest"
	"tether/internal/testpki"
	"tether/internal/testwait"
)

// The proxy test's network: a namespace of its own in which the server
// listens on an address that is not loopback (Go's proxy rules, and so
// the agent's, never send loopback through a proxy), and tinyproxy, a
// real CONNECT proxy wanting credentials, on loopback.
const (
	proxyServerIP   = "10.78.0.1"
	proxyServerAddr = proxyServerIP + ":8443"
	proxyAddr       = "127.0.0.1:8888"
	proxyUser       = "alice"
	proxyPassword   = "s3cret-pr0xy"
)

// TestProxy runs tetherd processes in the namespace against a wss://
// server there: through tinyproxy with HTTPS_PROXY (a message goes end to
// end, and tinyproxy saw the tunnel), past it with NO_PROXY, through the
// proxy agent.toml names in place of the environment's, and refused by it
// for a wrong password, with the proxy's status line in the log. No
// password ever reaches tetherd's log.
func TestProxy(t *testing.T) {
	tinyproxy, err := exec.LookPath("tinyproxy")
	if err != nil {
		t.Skip("tinyproxy is not installed (Debian's tinyproxy-bin): ", err)
	}
	ns := netnstest.New(t)
	ns.IP(t, "link", "set", "lo", "up")
	ns.IP(t, "addr", "add", proxyServerIP+"/32", "dev", "lo")
	// A default route, without which the agent holds its dialling.
	ns.IP(t, "route", "add", "default", "dev", "lo")

	pki, err := testpki.WriteFor(t.TempDir(), net.ParseIP(proxyServerIP))
	if err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, "--tls-cert", pki.Cert, "--tls-key", pki.Key)
	srv.netns, srv.addr, srv.scheme = ns.Name, proxyServerAddr, "https"
	srv.startListening()
	sender, key := srv.addSender("proxied", "")
	proxy := startTinyproxy(t, tinyproxy, ns.Name)
	tunnels := func() int { return strings.Count(proxy.log(), "CONNECT "+proxyServerAddr) }

	wss := "wss://" + proxyServerAddr
	through := "http://" + proxyUser + ":" + proxyPassword + "@" + proxyAddr
	inNS := func(a *agent, env ...string) *agent {
		a.netns, a.env = ns.Name, env
		return a
	}

	t.Run("NO_PROXY goes past the proxy", func(t *testing.T) {
		a := inNS(newAgent(t, wss, "--ca-file", pki.CA, "--dbus", "off"), "HTTPS_PROXY="+through, "NO_PROXY=example.com, 10.78.0.0/16")
		a.start()
		if n := tunnels(); n != 0 {
			t.Fatalf("tinyproxy saw %d tunnels to the server, want none:\n%s", n, proxy.log())
		}
	})

	t.Run("HTTPS_PROXY", func(t *testing.T) {
		a := inNS(newAgent(t, wss, "--ca-file", pki.CA, "--dbus", "off"), "HTTPS_PROXY="+through, "NO_PROXY=example.com")
		a.start()
		if n := tunnels(); n != 1 {
			t.Fatalf("tinyproxy saw %d tunnels to the server, want the agent's one:\n%s", n, proxy.log())
		}
		token := a.register(app, sender)
		msgs, _ := a.listen(app)
		id := sendInNS(t, ns.Name, pki.CA, key, token)
		if d := next(t, msgs); d.MessageID != id || d.Data["via"] != "proxy" {
			t.Fatalf("delivered %+v, want %s", d, id)
		}
		logged := a.p.log()
		if want := "https_proxy=http://" + proxyUser + ":xxxxx@" + proxyAddr; !strings.Contains(logged, want) {
			t.Errorf("tetherd's log does not show the proxy as %s:\n%s", want, logged)
		}
		if strings.Contains(logged, proxyPassword) {
			t.Errorf("tetherd's log shows the proxy's password:\n%s", logged)
		}
	})

	t.Run("proxy in agent.toml wins over the environment", func(t *testing.T) {
		dir := t.TempDir()
		enrollKey := filepath.Join(dir, "enroll-key")
		if err := os.WriteFile(enrollKey, []byte(e2eEnrollKey), 0o600); err != nil {
			t.Fatal(err)
		}
		config := filepath.Join(dir, "agent.toml")
		doc := fmt.Sprintf("proxy = %q\nenroll_key_file = %q\n", through, enrollKey)
		if err := os.WriteFile(config, []byte(doc), 0o600); err != nil {
			t.Fatal(err)
		}
		before := tunnels()
		// Nothing listens at the environment's proxy.
		a := inNS(newAgent(t, wss, "--config", config, "--ca-file", pki.CA, "--dbus", "off"), "HTTPS_PROXY=http://127.0.0.1:9")
		a.start()
		if n := tunnels() - before; n != 1 {
			t.Fatalf("tinyproxy saw %d more tunnels, want the agent's one:\n%s", n, proxy.log())
		}
	})

	t.Run("a wrong password", func(t *testing.T) {
		a := inNS(newAgent(t, wss, "--ca-file", pki.CA, "--dbus", "off"), "HTTPS_PROXY=http://"+proxyUser+":wrong-password@"+proxyAddr)
		a.launch()
		// tinyproxy answers a CONNECT without the right credentials 401,
		// other proxies 407.
		refused := regexp.MustCompile(`the proxy refused the tunnel: http://` + proxyUser + `:xxxxx@` + regexp.QuoteMeta(proxyAddr) +
			` answered CONNECT ` + regexp.QuoteMeta(proxyServerAddr) + ` with 40[17] `)
		testwait.For(t, "tetherd to log the proxy's refusal", 30*time.Second, func() error {
			if !refused.MatchString(a.p.log()) {
				return errors.New("no refusal logged yet")
			}
			return nil
		})
		if st, err := a.status(); err != nil || st.Connected {
			t.Errorf("status %+v, %v: connected past a proxy that refused it", st, err)
		}
		if strings.Contains(a.p.log(), "wrong-password") {
			t.Errorf("tetherd's log shows the proxy's password:\n%s", a.p.log())
		}
	})
}

// startTinyproxy runs tinyproxy in the network namespace netns on
// proxyAddr, letting through CONNECT to port 8443 with the credentials of
// proxyUser alone, and logging each request.
func startTinyproxy(t *testing.T, bin, netns string) *proc {
	t.Helper()
	dir := t.TempDir()
	host, port, _ := net.SplitHostPort(proxyAddr)
	conf := filepath.Join(dir, "tinyproxy.conf")
	doc := fmt.Sprintf("Port %s\nListen %s\nTimeout 3600\nLogLevel Info\nMaxClients 20\nConnectPort 8443\nBasicAuth %s %s\n",
		port, host, proxyUser, proxyPassword)
	if err := os.WriteFile(conf, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "tinyproxy.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	p := startCmd(t, "tinyproxy", exec.Command("ip", "netns", "exec", netns, bin, "-d", "-c", conf), logPath, logFile, nil)
	testwait.For(t, "tinyproxy to listen", 30*time.Second, func() error {
		if p.exited() {
			t.Fatalf("tinyproxy exited: %v\n%s", p.err, p.log())
		}
		if !strings.Contains(p.log(), "Accepting connections") {
			return errors.New("not accepting yet")
		}
		return nil
	})
	return p
}

// sendInNS sends a message to token as an app server inside the network
// namespace would, with curl there, and returns its message ID.
func sendInNS(t *testing.T, netns, caFile, key, token string) string {
	t.Helper()
	body, _ := json.Marshal(map[string]any{"to": token, "data": map[string]string{"via": "proxy"}})
	out, err := exec.Command("ip", "netns", "exec", netns, "curl", "-sS", "--fail-with-body", "--max-time", "30",
		"--cacert", caFile, "-H", "Authorization: key="+key, "-H", "Content-Type: application/json",
		"--data-binary", string(body), "https://"+proxyServerAddr+"/gcm/send").CombinedOutput()
	if err != nil {
		t.Fatalf("curl /gcm/send in the namespace: %v: %s", err, out)
	}
	var r sendResponse
	if err := json.Unmarshal(out, &r); err != nil || r.Success != 1 || len(r.Results) != 1 {
		t.Fatalf("send answered %s: %v", out, err)
	}
	return r.Results[0].MessageID
}
