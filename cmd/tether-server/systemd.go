// SPDX-License-Identifier: Apache-2.0

package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"tether/platform/service"
	"tether/server"
)

// serveNotifying serves like srv.Serve and tells systemd about it when it
// runs as a Type=notify unit (packaging/systemd/tether-server.service):
// READY=1 once the listeners are open, so that units ordered after it
// start only when devices and app servers can connect, and STOPPING=1
// when the shutdown begins, so that systemctl status says why sessions are
// closing during the shutdown spread. Outside such a unit it only serves.
func serveNotifying(ctx context.Context, srv *server.Server, log *slog.Logger) error {
	notify, err := service.NewNotifier(os.Getenv, os.Getpid())
	if err != nil {
		log.Warn("not notifying systemd", "err", err)
	}
	if err := srv.Listen(); err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	// Connections made between here and Serve wait in the listen backlog,
	// so ready now is not too early.
	if err := notify.Ready("listening on " + srv.Addr().String()); err != nil {
		log.Warn("not notifying systemd", "err", err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ctx) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	if err := notify.Stopping(); err != nil {
		log.Warn("not notifying systemd", "err", err)
	}
	return <-served
}
