// SPDX-License-Identifier: Apache-2.0

// Package proxyenv chooses the HTTP proxy of a connection by the rules Go's
// net/http follows for HTTPS_PROXY, HTTP_PROXY and NO_PROXY (those of
// golang.org/x/net/http/httpproxy), so that the agent goes the way every
// Go program on the device goes, without linking net/http or its IDNA
// tables, which would cost the device's flash more than this package's
// rules do.
//
// One difference: host names are compared as they are written, in ASCII,
// so a NO_PROXY entry matches a server named in Unicode only when both
// are written in their xn-- form. And where Go quietly goes direct past a
// proxy URL it cannot use, Func refuses it, so that a device does not
// connect around the proxy its network requires.
package proxyenv

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strings"
)

// Config holds the proxy settings in the form of the environment
// variables.
type Config struct {
	// HTTPProxy is the proxy for ws:// and http:// URLs:
	// http://[user:password@]host[:port], or host[:port] meaning the
	// same; the port is 80 unless given. Empty means none.
	HTTPProxy string
	// HTTPSProxy is the proxy for wss:// and https:// URLs, in the same
	// form: a tunnel through it carries TLS end to end.
	HTTPSProxy string
	// NoProxy lists, separated by commas, the hosts reached directly: IP
	// addresses (1.2.3.4, with a port 1.2.3.4:8443, [::1]:8443), CIDR
	// prefixes (10.0.0.0/8), domain names, which match themselves and
	// every name under them (example.com), domain names with a leading
	// dot or "*.", which match only the names under them (.example.com),
	// or "*" for every host. localhost and loopback addresses are always
	// reached directly.
	NoProxy string
}

// FromEnvironment reads the variables of Config with getenv: of each, the
// lower-case name (https_proxy) when it is set, else the upper-case one
// (HTTPS_PROXY), as Go does.
func FromEnvironment(getenv func(string) string) Config {
	either := func(name string) string {
		if v := getenv(strings.ToLower(name)); v != "" {
			return v
		}
		return getenv(name)
	}
	return Config{
		HTTPProxy:  either("HTTP_PROXY"),
		HTTPSProxy: either("HTTPS_PROXY"),
		NoProxy:    either("NO_PROXY"),
	}
}

// ErrBadProxy is returned by Func for a proxy URL it cannot use.
var ErrBadProxy = errors.New("bad proxy URL")

// Func returns the function that gives the proxy to reach a URL through,
// nil for a direct connection: http:// and ws:// URLs go through
// HTTPProxy, https:// and wss:// ones through HTTPSProxy, unless NoProxy
// names their host. It refuses a proxy URL it cannot dial: unparsable,
// with no host, or of another scheme than http (this package's users
// speak HTTP CONNECT to a proxy in the clear, not TLS or SOCKS).
func (c Config) Func() (func(*url.URL) *url.URL, error) {
	httpProxy, err := ParseURL(c.HTTPProxy)
	if err != nil {
		return nil, fmt.Errorf("http proxy: %w", err)
	}
	httpsProxy, err := ParseURL(c.HTTPSProxy)
	if err != nil {
		return nil, fmt.Errorf("https proxy: %w", err)
	}
	direct := parseNoProxy(c.NoProxy)
	return func(u *url.URL) *url.URL {
		proxy, port := httpProxy, "80"
		switch u.Scheme {
		case "https", "wss":
			proxy, port = httpsProxy, "443"
		case "http", "ws":
		default:
			return nil
		}
		if proxy == nil {
			return nil
		}
		if u.Port() != "" {
			port = u.Port()
		}
		if direct.match(u.Hostname(), port) {
			return nil
		}
		return proxy
	}, nil
}

// ParseURL reads a proxy URL, nil for none, and refuses one Func would
// refuse. host[:port] without a scheme means http://host[:port], as Go
// takes it. Its errors show the URL without its password, which must not
// reach a log.
func ParseURL(s string) (*url.URL, error) {
	if s == "" {
		return nil, nil
	}
	u, err := url.Parse(s)
	if err != nil || u.Scheme == "" || u.Host == "" {
		if u2, err2 := url.Parse("http://" + s); err2 == nil {
			u, err = u2, nil
		}
	}
	switch {
	case err != nil:
		// url.Parse's error quotes the URL, password and all.
		return nil, fmt.Errorf("%w: it is not a URL", ErrBadProxy)
	case u.Scheme != "http":
		return nil, fmt.Errorf("%w %s: want an http:// proxy, the only kind tetherd dials (HTTP CONNECT)", ErrBadProxy, u.Redacted())
	case u.Hostname() == "":
		return nil, fmt.Errorf("%w %s: no host", ErrBadProxy, u.Redacted())
	}
	return u, nil
}

// noProxy is a parsed NO_PROXY list.
type noProxy struct {
	all     bool
	nets    []*net.IPNet
	ips     []ipEntry
	domains []domainEntry
}

// ipEntry is an IP address, with a port or "" for any.
type ipEntry struct {
	ip   net.IP
	port string
}

// domainEntry matches the names that end with suffix (".example.com"),
// and the name suffix names when exact is set, on port or any if "".
type domainEntry struct {
	suffix string
	exact  bool
	port   string
}

// parseNoProxy reads NO_PROXY. As in Go, an entry it cannot read matches
// nothing, rather than stopping the device: a proxy too many is safer
// than none.
func parseNoProxy(list string) noProxy {
	var n noProxy
	for e := range strings.SplitSeq(list, ",") {
		e = strings.ToLower(strings.TrimSpace(e))
		if e == "" {
			continue
		}
		if e == "*" {
			return noProxy{all: true}
		}
		if _, cidr, err := net.ParseCIDR(e); err == nil {
			n.nets = append(n.nets, cidr)
			continue
		}
		host, port, err := net.SplitHostPort(e)
		if err != nil {
			host, port = e, ""
		} else if host == "" {
			continue
		}
		if len(host) > 1 && host[0] == '[' && host[len(host)-1] == ']' {
			host = host[1 : len(host)-1]
		}
		if ip := net.ParseIP(host); ip != nil {
			n.ips = append(n.ips, ipEntry{ip, port})
			continue
		}
		if host == "" {
			continue
		}
		if strings.HasPrefix(host, "*.") {
			host = host[1:]
		}
		exact := host[0] != '.'
		if exact {
			host = "." + host
		}
		n.domains = append(n.domains, domainEntry{host, exact, port})
	}
	return n
}

// match reports whether host on port is to be reached directly.
func (n noProxy) match(host, port string) bool {
	if host == "localhost" {
		return true
	}
	var ip net.IP
	if a, err := netip.ParseAddr(host); err == nil {
		// Go's rules take an address with a zone (fe80::1%eth0) too.
		ip = net.IP(a.AsSlice())
	}
	if ip.IsLoopback() || n.all {
		return true
	}
	host = strings.ToLower(host)
	if ip != nil {
		for _, cidr := range n.nets {
			if cidr.Contains(ip) {
				return true
			}
		}
		for _, e := range n.ips {
			if e.ip.Equal(ip) && (e.port == "" || e.port == port) {
				return true
			}
		}
		return false
	}
	for _, e := range n.domains {
		if (strings.HasSuffix(host, e.suffix) || e.exact && host == e.suffix[1:]) && (e.port == "" || e.port == port) {
			return true
		}
	}
	return false
}

// String shows the settings in the form of the environment variables
// that are set, each proxy without its password, for logs; "none" when
// none is.
func (c Config) String() string {
	var parts []string
	for _, v := range []struct{ name, value string }{
		{"https_proxy", c.HTTPSProxy}, {"http_proxy", c.HTTPProxy}, {"no_proxy", c.NoProxy},
	} {
		switch {
		case v.value == "":
			continue
		case v.name != "no_proxy":
			if u, err := ParseURL(v.value); err == nil {
				v.value = u.Redacted()
			} else {
				v.value = "(unusable)"
			}
		}
		parts = append(parts, v.name+"="+v.value)
	}
	if parts == nil {
		return "none"
	}
	return strings.Join(parts, " ")
}
