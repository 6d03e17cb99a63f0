// SPDX-License-Identifier: Apache-2.0

package proxyenv

import (
	"errors"
	"net"
	"net/url"
	"strings"
	"testing"
	"unicode/utf8"

	"golang.org/x/net/http/httpproxy"
)

func TestFromEnvironment(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want Config
	}{
		{"none", nil, Config{}},
		{"upper case", map[string]string{"HTTPS_PROXY": "p:1", "HTTP_PROXY": "p:2", "NO_PROXY": "a"},
			Config{HTTPSProxy: "p:1", HTTPProxy: "p:2", NoProxy: "a"}},
		{"lower case wins", map[string]string{"HTTPS_PROXY": "p:1", "https_proxy": "q:1", "NO_PROXY": "a", "no_proxy": "b"},
			Config{HTTPSProxy: "q:1", NoProxy: "b"}},
		{"lower case alone", map[string]string{"http_proxy": "q:2"}, Config{HTTPProxy: "q:2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := FromEnvironment(func(k string) string { return tt.env[k] }); got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestFunc(t *testing.T) {
	const proxy = "http://alice:s3cret@proxy.example:3128"
	tests := []struct {
		name    string
		cfg     Config
		url     string
		want    string // "" for direct
		wantErr string
	}{
		{"wss through the https proxy", Config{HTTPSProxy: proxy, HTTPProxy: "other:1"}, "wss://push.example:8443/x", proxy, ""},
		{"ws through the http proxy", Config{HTTPSProxy: proxy, HTTPProxy: "other:1"}, "ws://push.example", "http://other:1", ""},
		{"https like wss", Config{HTTPSProxy: proxy}, "https://push.example", proxy, ""},
		{"no proxy for the scheme", Config{HTTPSProxy: proxy}, "ws://push.example", "", ""},
		{"another scheme", Config{HTTPSProxy: proxy}, "ftp://push.example", "", ""},
		{"localhost", Config{HTTPSProxy: proxy}, "wss://localhost:8443", "", ""},
		{"loopback v4", Config{HTTPSProxy: proxy}, "wss://127.0.0.2:8443", "", ""},
		{"loopback v6", Config{HTTPSProxy: proxy}, "wss://[::1]:8443", "", ""},
		{"no_proxy *", Config{HTTPSProxy: proxy, NoProxy: "*"}, "wss://push.example", "", ""},
		{"no_proxy domain", Config{HTTPSProxy: proxy, NoProxy: "x, example"}, "wss://push.example", "", ""},
		{"no_proxy domain itself", Config{HTTPSProxy: proxy, NoProxy: "push.example"}, "wss://push.example", "", ""},
		{"no_proxy domain in upper case", Config{HTTPSProxy: proxy, NoProxy: "PUSH.Example"}, "wss://Push.EXAMPLE", "", ""},
		{"no_proxy dot: subdomains only", Config{HTTPSProxy: proxy, NoProxy: ".push.example"}, "wss://push.example", proxy, ""},
		{"no_proxy star dot: subdomains", Config{HTTPSProxy: proxy, NoProxy: "*.example"}, "wss://push.example", "", ""},
		{"no_proxy another domain", Config{HTTPSProxy: proxy, NoProxy: "ush.example"}, "wss://push.example", proxy, ""},
		{"no_proxy port", Config{HTTPSProxy: proxy, NoProxy: "push.example:8443"}, "wss://push.example:8443", "", ""},
		{"no_proxy other port", Config{HTTPSProxy: proxy, NoProxy: "push.example:8443"}, "wss://push.example", proxy, ""},
		{"no_proxy default port", Config{HTTPSProxy: proxy, NoProxy: "push.example:443"}, "wss://push.example", "", ""},
		{"no_proxy ip", Config{HTTPSProxy: proxy, NoProxy: "10.1.2.3"}, "wss://10.1.2.3:8443", "", ""},
		{"no_proxy ip and port", Config{HTTPSProxy: proxy, NoProxy: "10.1.2.3:8443"}, "wss://10.1.2.3:8443", "", ""},
		{"no_proxy ip, other port", Config{HTTPSProxy: proxy, NoProxy: "10.1.2.3:443"}, "wss://10.1.2.3:8443", proxy, ""},
		{"no_proxy cidr", Config{HTTPSProxy: proxy, NoProxy: "10.0.0.0/8"}, "wss://10.1.2.3:8443", "", ""},
		{"no_proxy cidr outside", Config{HTTPSProxy: proxy, NoProxy: "10.0.0.0/8"}, "wss://11.1.2.3:8443", proxy, ""},
		{"no_proxy v6", Config{HTTPSProxy: proxy, NoProxy: "[2001:db8::1]:8443"}, "wss://[2001:db8::1]:8443", "", ""},
		{"no_proxy domain is no ip", Config{HTTPSProxy: proxy, NoProxy: "3"}, "wss://10.1.2.3", proxy, ""},
		{"host:port means http", Config{HTTPSProxy: "proxy.example:3128"}, "wss://push.example", "http://proxy.example:3128", ""},
		{"https proxy refused", Config{HTTPSProxy: "https://proxy.example"}, "", "", "want an http:// proxy"},
		{"socks refused", Config{HTTPProxy: "socks5://u:pw@proxy.example"}, "", "", "socks5://u:xxxxx@proxy.example: want an http:// proxy"},
		{"no host", Config{HTTPSProxy: "http://:3128"}, "", "", "no host"},
		{"not a URL, password kept out", Config{HTTPSProxy: "http://u:pw%zz@p"}, "", "", "it is not a URL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f, err := tt.cfg.Func()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrBadProxy) {
					t.Fatalf("error %v, want ErrBadProxy saying %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "pw") {
					t.Errorf("the error shows the password: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			u, err := url.Parse(tt.url)
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if p := f(u); p != nil {
				got = p.String()
			}
			if got != tt.want {
				t.Errorf("proxy for %s: %q, want %q", tt.url, got, tt.want)
			}
		})
	}
}

// FuzzFunc holds the rules to Go's own (x/net/http/httpproxy, as net/http
// applies them) on any configuration and URL they both take: the same
// proxy, or the same direct connection.
func FuzzFunc(f *testing.F) {
	f.Add("proxy:3128", "http://u:p@proxy:8080", "example.com,.b.org,10.0.0.0/8,1.2.3.4:443,[::2]:80", "https://a.example.com/x")
	f.Add("proxy:3128", "", "*", "http://localhost:80")
	f.Add("", "proxy", "*.example.com:443", "https://EXAMPLE.com:443")
	f.Add("", "proxy", "fe80::1", "https://[fe80::1%25eth0]:1")
	f.Add("", "proxy", "[", "wss://[::ffff:10.1.2.3]")
	f.Fuzz(func(t *testing.T, httpProxy, httpsProxy, noProxy, rawURL string) {
		for _, s := range []string{httpProxy, httpsProxy, noProxy, rawURL} {
			if !isASCII(s) {
				t.Skip("host names are compared in ASCII only (package doc)")
			}
		}
		u, err := url.Parse(rawURL)
		if err != nil {
			return
		}
		if _, _, err := net.SplitHostPort(net.JoinHostPort(u.Hostname(), "1")); err != nil {
			return // no host a dialer could dial ("https://]"): Go goes direct, and so does the dial's error
		}
		cfg := Config{HTTPProxy: httpProxy, HTTPSProxy: httpsProxy, NoProxy: noProxy}
		f, err := cfg.Func()
		if err != nil {
			return // Go would go direct past such a proxy; this package refuses it
		}
		goFunc := (&httpproxy.Config{HTTPProxy: httpProxy, HTTPSProxy: httpsProxy, NoProxy: noProxy}).ProxyFunc()
		// Go's rules name http and https; ws and wss go the same ways.
		goURL := *u
		goURL.Scheme = map[string]string{"ws": "http", "wss": "https"}[u.Scheme]
		if goURL.Scheme == "" {
			goURL.Scheme = u.Scheme
		}
		want, err := goFunc(&goURL)
		if err != nil {
			t.Fatalf("httpproxy: %v", err)
		}
		if got := f(u); str(got) != str(want) {
			t.Errorf("%+v for %q: proxy %v, Go's rules say %v", cfg, rawURL, got, want)
		}
	})
}

func str(u *url.URL) string {
	if u == nil {
		return "direct"
	}
	return u.String()
}

func isASCII(s string) bool {
	for i := range len(s) {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

func TestString(t *testing.T) {
	tests := []struct {
		cfg  Config
		want string
	}{
		{Config{}, "none"},
		{Config{NoProxy: "*"}, "no_proxy=*"},
		{Config{HTTPSProxy: "http://alice:s3cret@p:3128", HTTPProxy: "p:80", NoProxy: ".lan"},
			"https_proxy=http://alice:xxxxx@p:3128 http_proxy=http://p:80 no_proxy=.lan"},
		{Config{HTTPSProxy: "socks5://alice:s3cret@p"}, "https_proxy=(unusable)"},
	}
	for _, tt := range tests {
		if got := tt.cfg.String(); got != tt.want {
			t.Errorf("%#v: %q, want %q", tt.cfg, got, tt.want)
		}
	}
}
