// SPDX-License-Identifier: Apache-2.0

package websocket

import (
	"bufio"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"net/url"
)

// ErrProxyRefused is returned when the proxy answers CONNECT with another
// status than 2xx: 407 when it wants other credentials, 403 when it does
// not let the device reach the server.
var ErrProxyRefused = errors.New("websocket: the proxy refused the tunnel")

// dialAddr is the address to dial for addr: the proxy's, when there is one.
func dialAddr(addr string, proxy *url.URL) string {
	if proxy == nil {
		return addr
	}
	if proxy.Port() == "" {
		return net.JoinHostPort(proxy.Hostname(), "80")
	}
	return proxy.Host
}

// tunnel asks the proxy at the other end of nc for a tunnel to addr (HTTP
// CONNECT, RFC 9110 section 9.3.6). Its errors name the proxy without
// its password.
func tunnel(nc net.Conn, proxy *url.URL, addr string) error {
	req := "CONNECT " + addr + " HTTP/1.1\r\nHost: " + addr + "\r\n"
	if proxy.User != nil {
		password, _ := proxy.User.Password()
		req += "Proxy-Authorization: Basic " +
			base64.StdEncoding.EncodeToString([]byte(proxy.User.Username()+":"+password)) + "\r\n"
	}
	if _, err := nc.Write([]byte(req + "\r\n")); err != nil {
		return fmt.Errorf("websocket: proxy %s: send CONNECT: %w", proxy.Redacted(), err)
	}
	// Small: the answer is a status line and a few fields.
	br := bufio.NewReaderSize(nc, 512)
	resp, err := readResponse(br)
	if err != nil {
		return fmt.Errorf("websocket: proxy %s: read the answer to CONNECT %s: %w", proxy.Redacted(), addr, err)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("%w: %s answered CONNECT %s with %s", ErrProxyRefused, proxy.Redacted(), addr, resp.Status)
	}
	// The server speaks only after the client (TLS's hello, the
	// WebSocket request), so nothing may follow the answer yet.
	if n := br.Buffered(); n > 0 {
		return fmt.Errorf("websocket: proxy %s: %d bytes came after the answer to CONNECT, before anything was sent through the tunnel", proxy.Redacted(), n)
	}
	return nil
}
