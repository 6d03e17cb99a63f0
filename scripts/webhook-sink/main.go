// SPDX-License-Identifier: Apache-2.0

// Command webhook-sink is the app server in Tether's demo: it receives the
// connection server's upstream webhook POSTs and prints each body on a line.
package main

import (
	"bytes"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"time"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	addrFile := flag.String("addr-file", "", "write the bound address to this file")
	flag.Parse()

	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("webhook-sink: %v", err)
	}
	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte(ln.Addr().String()), 0o644); err != nil {
			log.Fatalf("webhook-sink: %v", err)
		}
	}
	srv := &http.Server{
		ReadHeaderTimeout: 5 * time.Second,
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			var compact bytes.Buffer
			if json.Compact(&compact, body) != nil {
				compact.Reset()
				compact.Write(body)
			}
			fmt.Printf("webhook %s %s\n", r.URL.Path, compact.String())
			w.WriteHeader(http.StatusOK)
		}),
	}
	log.Fatal(srv.Serve(ln))
}
