// SPDX-License-Identifier: Apache-2.0

package e2e

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"tether/internal/natstest"
	"tether/internal/testpki"
	"tether/internal/testwait"
)

// cluster is three tether-server processes on a three-server NATS
// JetStream cluster of processes, over TLS.
type cluster struct {
	t     *testing.T
	nats  *natstest.Processes
	nodes []*server
	ca    string
}

// startCluster starts the NATS servers and the nodes; extra[i] are more
// flags of node i.
func startCluster(t *testing.T, extra map[int][]string) *cluster {
	t.Helper()
	c := &cluster{t: t, nats: natstest.StartProcesses(t, natstest.ProcConfig{Bin: natsBin, Dir: t.TempDir()})}
	pki, err := testpki.Write(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c.ca = pki.CA
	for i := range 3 {
		s := newServer(t)
		s.args = append([]string{"--tls-cert", pki.Cert, "--tls-key", pki.Key, "--nats", c.nats.URL(),
			"--public-url", "wss://" + s.addr, "--shards", "4"}, extra[i]...)
		s.scheme = "https"
		s.client = &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pki.Pool}}}
		c.nodes = append(c.nodes, s)
	}
	// The first node creates the state; the others find it.
	c.nodes[0].start()
	for _, s := range c.nodes[1:] {
		s.start()
	}
	return c
}

// urls are the nodes' URLs for an agent's --server.
func (c *cluster) urls() string {
	var urls []string
	for _, s := range c.nodes {
		urls = append(urls, "wss://"+s.addr)
	}
	return strings.Join(urls, ",")
}

// admin runs a tether-server admin command against the cluster, with no
// node involved, and returns its output.
func (c *cluster) admin(args ...string) []byte {
	c.t.Helper()
	out, err := exec.Command(filepath.Join(binDir, "tether-server"), append(args, "--nats", c.nats.URL())...).Output()
	if err != nil {
		c.t.Fatalf("tether-server %s: %v: %s", strings.Join(args, " "), err, exitStderr(err))
	}
	return out
}

func (c *cluster) addSender(name, webhook string) (id, key string) {
	c.t.Helper()
	var snd struct {
		SenderID  string `json:"sender_id"`
		ServerKey string `json:"server_key"`
	}
	out := c.admin("sender", "add", "--name", name, "--webhook", webhook, "--json")
	if err := json.Unmarshal(out, &snd); err != nil || snd.SenderID == "" {
		c.t.Fatalf("sender add printed %q: %v", out, err)
	}
	return snd.SenderID, snd.ServerKey
}

// connectedTo is the node an agent's session is on.
func (c *cluster) connectedTo(a *agent) int {
	c.t.Helper()
	out, err := a.ctl("--json", "status")
	if err != nil {
		c.t.Fatal(err)
	}
	var st struct {
		Server string `json:"server"`
	}
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		c.t.Fatal(err)
	}
	for i, s := range c.nodes {
		if strings.Contains(st.Server, s.addr) {
			return i
		}
	}
	c.t.Fatalf("agent on %q, not a node", st.Server)
	return -1
}

// TestClusterEndToEnd runs three nodes with agents spread over them: a
// message sent through each node reaches a device on each other node,
// upstream reaches the webhook exactly once, an XMPP connection on the
// first node receives upstream from a device on the third, and an agent
// whose node dies reaches another.
func TestClusterEndToEnd(t *testing.T) {
	xmppAddr := freeAddr(t)
	c := startCluster(t, map[int][]string{0: {"--xmpp-listen", xmppAddr}})
	hook := startWebhook(t)
	sender, key := c.addSender("thermo-backend", hook.url())

	agents := make([]*agent, 3)
	tokens := make([]string, 3)
	streams := make([]<-chan delivered, 3)
	for i, s := range c.nodes {
		agents[i] = startAgent(t, "https://"+s.addr, "--ca-file", c.ca)
		tokens[i] = agents[i].register(app, sender)
		streams[i], _ = agents[i].listen(app)
	}
	for via, s := range c.nodes {
		for to := range agents {
			if to == via {
				continue
			}
			id := s.mustSend(key, map[string]any{"to": tokens[to], "data": map[string]string{"via": fmt.Sprint(via)}})
			if d := next(t, streams[to]); d.MessageID != id || d.Data["via"] != fmt.Sprint(via) {
				t.Fatalf("device on node %d got %+v, want %s sent through node %d", to, d, id, via)
			}
		}
	}

	for i, a := range agents {
		if _, err := a.ctl("send", "--app", app, "--to", sender, "--id", fmt.Sprint("up-", i), "--wait", "n=1"); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	for range agents {
		ids = append(ids, hook.next(t)["message_id"].(string))
	}
	slices.Sort(ids)
	if want := []string{"up-0", "up-1", "up-2"}; !slices.Equal(ids, want) {
		t.Fatalf("webhook got %v, want %v", ids, want)
	}

	x := startXMPPAppServer(t, "xmpps://"+xmppAddr, c.ca, sender, key)
	x.next("online", func(ev map[string]any) bool { return ev["event"] == "online" })
	if _, err := agents[2].ctl("send", "--app", app, "--to", sender, "--id", "up-xmpp", "--wait", "n=2"); err != nil {
		t.Fatal(err)
	}
	if up := x.stanza("", "up-xmpp"); up["from"] != tokens[2] {
		t.Errorf("upstream stanza %v, want from the third device", up)
	}
	x.next("the upstream message's ack", func(ev map[string]any) bool { return ev["event"] == "acked" && ev["message_id"] == "up-xmpp" })
	x.command(map[string]any{"op": "stop"})

	// An agent that knows every node outlives the death of its own.
	roaming := startAgent(t, c.urls(), "--ca-file", c.ca, "--min-backoff", "1s", "--max-backoff", "2s")
	token := roaming.register("com.example.roaming", sender)
	msgs, _ := roaming.listen("com.example.roaming")
	dead := c.connectedTo(roaming)
	c.nodes[dead].p.kill()
	testwait.For(t, "the agent to reach another node", 30*time.Second, func() error {
		if c.connectedTo(roaming) == dead {
			return errors.New("still on the dead node")
		}
		return nil
	})
	roaming.waitConnected()
	alive := c.nodes[(dead+1)%3]
	id := alive.mustSend(key, map[string]any{"to": token, "data": map[string]string{"after": "death"}})
	if d := next(t, msgs); d.MessageID != id {
		t.Fatalf("after its node died the agent got %+v, want %s", d, id)
	}

	hook.mu.Lock()
	defer hook.mu.Unlock()
	if len(hook.got) != 3 {
		t.Errorf("the webhook got %d requests, want 3: none twice, none of the XMPP one", len(hook.got))
	}
}
