// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"time"
)

// defaultHealthURL is /healthz on serve's default --listen address.
const defaultHealthURL = "http://127.0.0.1:8080/healthz"

// healthcheck asks a running server's /healthz whether it serves, for a
// container's HEALTHCHECK or a load balancer's probe script: the image
// has no shell and no curl, so the binary probes itself.
func healthcheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flags("healthcheck", stderr)
	url := fs.String("url", defaultHealthURL, "`URL` of the server's /healthz (https:// when it serves TLS)")
	timeout := fs.Duration("timeout", 5*time.Second, "longest wait for the answer (`duration`)")
	if err := parse(fs, args, "url"); err != nil {
		return err
	}
	if *timeout <= 0 {
		fmt.Fprintln(stderr, "tether-server healthcheck: --timeout must be positive")
		return errUsage
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, *url, nil)
	if err != nil {
		fmt.Fprintf(stderr, "tether-server healthcheck: --url: %v\n", err)
		return errUsage
	}
	client := &http.Client{
		// No proxy from the environment: the probe asks this server, not
		// whatever the host's HTTP_PROXY reaches. The certificate is not
		// verified because the probe dials an address (127.0.0.1) its
		// name is not for; it sends nothing secret and believes only a
		// 200.
		Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}},
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health check: %s answered %s", *url, resp.Status)
	}
	fmt.Fprintln(stdout, "ok")
	return nil
}
