// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"strings"
	"testing"

	"tether/internal/proxyenv"
)

// TestProxySettings: proxy and no_proxy, in the file or as flags, win
// over the environment's variables, each over its own.
func TestProxySettings(t *testing.T) {
	env := map[string]string{"HTTPS_PROXY": "http://env:1", "http_proxy": "env:2", "NO_PROXY": ".lan"}
	tests := []struct {
		name  string
		doc   string
		flags []string
		env   map[string]string
		want  proxyenv.Config
	}{
		{"none", "", nil, nil, proxyenv.Config{}},
		{"the environment", "", nil, env, proxyenv.Config{HTTPSProxy: "http://env:1", HTTPProxy: "env:2", NoProxy: ".lan"}},
		{"the file's proxy, the environment's no_proxy", `proxy = "http://file:3128"`, nil, env,
			proxyenv.Config{HTTPSProxy: "http://file:3128", HTTPProxy: "http://file:3128", NoProxy: ".lan"}},
		{"the file's no_proxy", "no_proxy = \"10.0.0.0/8, .corp\"", nil, env,
			proxyenv.Config{HTTPSProxy: "http://env:1", HTTPProxy: "env:2", NoProxy: "10.0.0.0/8, .corp"}},
		{"an empty no_proxy clears the environment's", `no_proxy = ""`, nil, env,
			proxyenv.Config{HTTPSProxy: "http://env:1", HTTPProxy: "env:2"}},
		{"direct", `proxy = "direct"`, nil, env, proxyenv.Config{NoProxy: ".lan"}},
		{"the flag wins", `proxy = "http://file:3128"`, []string{"--proxy", "http://flag:8080", "--no-proxy", "push.example"}, env,
			proxyenv.Config{HTTPSProxy: "http://flag:8080", HTTPProxy: "http://flag:8080", NoProxy: "push.example"}},
		{"a flag says direct", `proxy = "http://file:3128"`, []string{"--proxy", "direct"}, nil, proxyenv.Config{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := append([]string{"--config", writeConfig(t, "server = \"wss://push.example\"\n"+tt.doc+"\n")}, tt.flags...)
			o, err := parseArgs(args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if err := o.resolveProxy(func(k string) string { return tt.env[k] }); err != nil {
				t.Fatal(err)
			}
			if o.proxyRules != tt.want || o.proxy == nil {
				t.Errorf("proxy settings %#v, want %#v", o.proxyRules, tt.want)
			}
		})
	}
}

// TestProxyRefused is what config check says of proxies it cannot use,
// never with their passwords.
func TestProxyRefused(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		args []string
		env  map[string]string
		mode os.FileMode
		want string
	}{
		{name: "empty", doc: `proxy = ""`, want: `:2: proxy: empty proxy: want an http:// URL, or "direct" for none`},
		{name: "https", doc: `proxy = "https://alice:pw@p:443"`, want: `:2: proxy: bad proxy URL https://alice:xxxxx@p:443: want an http:// proxy`},
		{name: "not a string", doc: `proxy = 3128`, want: `:2: proxy: want a string, got the integer 3128`},
		{name: "a flag", args: []string{"--proxy", "socks5://p"}, want: `invalid value "socks5://p" for flag -proxy: bad proxy URL socks5://p`},
		{name: "the environment", env: map[string]string{"https_proxy": "socks5://alice:pw@p:1080"},
			want: `the environment's HTTPS_PROXY or HTTP_PROXY (proxy = "direct" in the config file ignores them): https proxy: bad proxy URL socks5://alice:xxxxx@p:1080`},
		{name: "a password in a file others read", doc: `proxy = "http://alice:pw@p:3128"`, mode: 0o640,
			want: `config file holding the proxy's password, FILE has mode 0640, which gives its group or others access: make it the owner's alone with chmod 600 FILE`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := writeConfig(t, "server = \"wss://push.example\"\n"+tt.doc+"\n")
			if tt.mode != 0 {
				if err := os.Chmod(path, tt.mode); err != nil {
					t.Fatal(err)
				}
			}
			var stderr bytes.Buffer
			code := run(context.Background(), append([]string{"config", "check", "--config", path}, tt.args...),
				environ{stdout: io.Discard, stderr: &stderr, getenv: func(k string) string { return tt.env[k] }})
			want := strings.ReplaceAll(tt.want, "FILE", path)
			if code != 2 || !strings.Contains(stderr.String(), want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit 2 and %q", code, stderr.String(), want)
			}
			if strings.Contains(stderr.String(), ":pw@") {
				t.Errorf("stderr shows the password:\n%s", stderr.String())
			}
		})
	}

	// The owner's alone, the file may hold the password.
	path := writeConfig(t, "server = \"wss://push.example\"\nproxy = \"http://alice:pw@p:3128\"\n")
	if err := os.Chmod(path, 0o600); err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"config", "check", "--config", path}, environ{stdout: io.Discard, stderr: &stderr, getenv: noEnv}); code != 0 {
		t.Errorf("a private file with the proxy's password: exit %d: %s", code, stderr.String())
	}
}
