// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"time"
)

// minAddrShare is the least time one address of a host gets before the
// next is tried, when the time left is too short to share among them all
// (Go's own dialer keeps the same floor).
const minAddrShare = 2 * time.Second

// hostDialer dials a host name that stands for several nodes: it resolves
// the name itself and tries the addresses in a random order, so that a
// fleet spreads over them and a dead node costs each device one failed
// address, not the attempt. Go's dialer would try them in the resolver's
// order, sending every device to the first.
type hostDialer struct {
	net *net.Dialer
	// lookup resolves a host name to its addresses; tests replace the
	// system's resolver, since they cannot serve DNS.
	lookup func(ctx context.Context, host string) ([]string, error)
}

func newHostDialer(d *net.Dialer) *hostDialer {
	return &hostDialer{net: d, lookup: net.DefaultResolver.LookupHost}
}

// DialContext dials addr, host:port, trying each address of the host in
// turn, each with an equal share of the time ctx leaves. An IP address is
// dialled as it is. TLS, when the URL asks for it, is the caller's: it
// verifies the host name, whatever address answered.
func (d *hostDialer) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", addr, err)
	}
	if net.ParseIP(host) != nil {
		return d.net.DialContext(ctx, network, addr)
	}
	ips, err := d.lookup(ctx, host)
	if err != nil {
		return nil, err
	}
	if len(ips) == 0 {
		return nil, fmt.Errorf("dial %s: the name has no address", host)
	}
	rand.Shuffle(len(ips), func(i, j int) { ips[i], ips[j] = ips[j], ips[i] })
	var errs []error
	for i, ip := range ips {
		conn, err := d.dialShare(ctx, network, net.JoinHostPort(ip, port), len(ips)-i)
		if err == nil {
			return conn, nil
		}
		errs = append(errs, err)
		if ctx.Err() != nil {
			break
		}
	}
	return nil, fmt.Errorf("dial %s: %w", host, errors.Join(errs...))
}

// dialShare dials one of left addresses still to try, within its share of
// the time left, so that one that does not answer leaves time for the
// others.
func (d *hostDialer) dialShare(ctx context.Context, network, addr string, left int) (net.Conn, error) {
	if deadline, ok := ctx.Deadline(); ok && left > 1 {
		remaining := time.Until(deadline)
		share := max(remaining/time.Duration(left), min(minAddrShare, remaining))
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, share)
		defer cancel()
	}
	return d.net.DialContext(ctx, network, addr)
}
