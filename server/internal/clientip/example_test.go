// SPDX-License-Identifier: Apache-2.0

package clientip_test

import (
	"crypto/tls"
	"log"
	"net"
	"net/http"

	"tether/server/internal/clientip"
)

// A server behind an AWS NLB (PROXY protocol v2) in 10.0.0.0/16, and an
// nginx that terminates TLS at 192.0.2.10 and adds X-Forwarded-For, with a
// cap of 64 open connections and 4 sessions per client.
func Example() {
	trusted, err := clientip.ParseTrusted([]string{"10.0.0.0/16", "192.0.2.10"})
	if err != nil {
		log.Fatal(err)
	}
	raw, err := net.Listen("tcp", ":8443")
	if err != nil {
		log.Fatal(err)
	}
	ln := clientip.NewListener(raw, clientip.Config{
		Trusted: trusted,
		Conns:   clientip.NewCounter(64),
	})
	var tlsConfig *tls.Config // the server's certificate
	sessions := clientip.NewCounter(4)

	http.HandleFunc("/connect", func(w http.ResponseWriter, r *http.Request) {
		client := clientip.FromRequest(r, trusted)
		release, ok := sessions.Acquire(client)
		defer release()
		if !ok {
			http.Error(w, "too many sessions", http.StatusTooManyRequests)
			return
		}
		// ... serve the session ...
	})
	log.Fatal(http.Serve(tls.NewListener(ln, tlsConfig), nil))
}
