// SPDX-License-Identifier: Apache-2.0

package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"time"

	"tether/wire"
)

// sendConfig says how a round of messages is sent: GCM's HTTP API,
// multicast in batches, a few requests at a time.
type sendConfig struct {
	// bases are the servers' http:// roots: a cluster's nodes take the
	// batches in turn.
	bases    []string
	key      string // the sender's server key
	batch    int    // registration_ids per request, at most 1000
	parallel int    // requests in flight
	payload  int    // bytes of data per message, keys and values
	// roots are the CAs trusted for an https:// base; nil means the
	// system's.
	roots *x509.CertPool
}

type sendStats struct {
	Messages int            `json:"messages"`
	Requests int            `json:"requests"`
	Accepted int            `json:"accepted"`
	Failed   int            `json:"failed"`
	Errors   map[string]int `json:"errors,omitempty"`
	// Seconds runs from the first request to the last answer.
	Seconds   float64 `json:"seconds"`
	PerSecond float64 `json:"per_second"`
}

// sentMessage is what became of the message to one token: its ID when
// the server accepted it, and when its request went out.
type sentMessage struct {
	id string
	at time.Time
}

// payloadData is a message's data: the round's name, padded with "pad" to
// size bytes as GCM counts them (keys and values).
func payloadData(round string, size int) (map[string]string, error) {
	pad := size - len(roundKey) - len(round) - len("pad")
	if pad < 0 {
		return nil, fmt.Errorf("a payload of %d bytes cannot hold the round's name; give at least %d", size, size-pad)
	}
	if size > wire.MaxDataSize {
		return nil, fmt.Errorf("a payload of %d bytes is over GCM's %d", size, wire.MaxDataSize)
	}
	return map[string]string{roundKey: round, "pad": strings.Repeat("x", pad)}, nil
}

// gcmAnswer is the part of GCM's answer to a multicast that the tool reads.
type gcmAnswer struct {
	Success int `json:"success"`
	Failure int `json:"failure"`
	Results []struct {
		MessageID string `json:"message_id"`
		Error     string `json:"error"`
	} `json:"results"`
}

// mergeSends sums the servers' stats of one round, which began at once.
func mergeSends(per []sendStats) sendStats {
	st := sendStats{Errors: map[string]int{}}
	for _, p := range per {
		st.Messages += p.Messages
		st.Requests += p.Requests
		st.Accepted += p.Accepted
		st.Failed += p.Failed
		for k, v := range p.Errors {
			st.Errors[k] += v
		}
		st.Seconds = max(st.Seconds, p.Seconds)
	}
	if st.Seconds > 0 {
		st.PerSecond = float64(st.Accepted) / st.Seconds
	}
	return st
}

// sendRound sends one message of round to every token and returns, in the
// tokens' order, what became of each, what each server took (timed from
// the round's first request), and when the first request went out.
func sendRound(ctx context.Context, c sendConfig, tokens []string, round string) ([]sentMessage, []sendStats, time.Time, error) {
	st := make([]sendStats, len(c.bases))
	for i := range st {
		st[i].Errors = map[string]int{}
	}
	// Batch b goes to server b mod the servers.
	for b, lo := 0, 0; lo < len(tokens); b, lo = b+1, lo+c.batch {
		st[b%len(st)].Messages += min(c.batch, len(tokens)-lo)
	}
	data, err := payloadData(round, c.payload)
	if err != nil {
		return nil, st, time.Time{}, err
	}
	transport := &http.Transport{
		MaxConnsPerHost: c.parallel, MaxIdleConnsPerHost: c.parallel, DisableCompression: true,
		TLSClientConfig: &tls.Config{RootCAs: c.roots},
	}
	// The server may be short of file descriptors: leave none idle.
	defer transport.CloseIdleConnections()
	client := &http.Client{Transport: transport, Timeout: 2 * time.Minute}

	out := make([]sentMessage, len(tokens))
	batches := make(chan int)
	var mu sync.Mutex
	var wg sync.WaitGroup
	start := time.Now()
	last := make([]time.Time, len(st))
	for range max(c.parallel, 1) {
		wg.Go(func() {
			for lo := range batches {
				hi := min(lo+c.batch, len(tokens))
				server := lo / c.batch % len(st)
				at := time.Now()
				ids, err := sendBatch(ctx, client, c.bases[server], c.key, tokens[lo:hi], data)
				done := time.Now()
				mu.Lock()
				s := &st[server]
				s.Requests++
				if done.After(last[server]) {
					last[server] = done
				}
				for i := lo; i < hi; i++ {
					out[i].at = at
					switch {
					case err != nil:
						s.Errors[err.Error()]++
					case ids[i-lo].err != "":
						s.Errors[ids[i-lo].err]++
					default:
						out[i].id = ids[i-lo].id
						s.Accepted++
					}
				}
				mu.Unlock()
			}
		})
	}
	for lo := 0; lo < len(tokens); lo += c.batch {
		select {
		case batches <- lo:
		case <-ctx.Done():
		}
	}
	close(batches)
	wg.Wait()
	for i := range st {
		st[i].Failed = st[i].Messages - st[i].Accepted
		if d := last[i].Sub(start); d > 0 {
			st[i].Seconds = d.Seconds()
			st[i].PerSecond = float64(st[i].Accepted) / d.Seconds()
		}
	}
	return out, st, start, ctx.Err()
}

type tokenResult struct{ id, err string }

// sendBatch posts one multicast to the server at base, with the sender's
// key; an error is the request's as a whole.
func sendBatch(ctx context.Context, client *http.Client, base, key string, tokens []string, data map[string]string) ([]tokenResult, error) {
	body, err := json.Marshal(map[string]any{"registration_ids": tokens, "data": data})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, base+"/gcm/send", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "key="+key)
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("request failed: %s", describe(err))
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
	if err != nil {
		return nil, fmt.Errorf("read answer: %s", describe(err))
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %s: %.100s", resp.Status, bytes.TrimSpace(b))
	}
	var a gcmAnswer
	if err := json.Unmarshal(b, &a); err != nil {
		return nil, fmt.Errorf("undecodable answer: %v", err)
	}
	if len(a.Results) != len(tokens) {
		return nil, fmt.Errorf("answer has %d results for %d tokens", len(a.Results), len(tokens))
	}
	out := make([]tokenResult, len(tokens))
	for i, r := range a.Results {
		switch {
		case r.Error != "":
			out[i].err = r.Error
		case r.MessageID == "":
			out[i].err = "result without message_id or error"
		default:
			out[i].id = r.MessageID
		}
	}
	return out, nil
}
