// SPDX-License-Identifier: Apache-2.0

package server

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"tether/server/store"
)

// The benchmarks run the real server on loopback with its store on disk
// (every accepted message is committed with fsync before its answer) and
// report accepted messages per second; the devices are offline, so the
// figures are what the server takes in, not what it pushes out. Run them
// with make bench-server; docs/server-api.md has figures.

// benchServer starts a quiet server for a benchmark.
func benchServer(b *testing.B, mod func(*Config)) *testServer {
	b.Helper()
	return startServer(b, func(c *Config) {
		c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		if mod != nil {
			mod(c)
		}
	})
}

// benchTokens registers n apps, one per device, for sender and returns
// their tokens. Registrations come from many goroutines, as from many
// devices, so that they share commits.
func benchTokens(b *testing.B, st store.Backend, sender string, n int) []string {
	b.Helper()
	tokens := make([]string, n)
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for range 64 {
		wg.Go(func() {
			for i := int(next.Add(1)) - 1; i < n; i = int(next.Add(1)) - 1 {
				dev, err := st.AddDevice(context.Background(), store.Device{SecretHash: make([]byte, 32), Created: time.Now()})
				if err != nil {
					failed.Store(err)
					return
				}
				reg, err := st.Register(context.Background(), dev.ID, "com.example.bench", sender, "", time.Now())
				if err != nil {
					failed.Store(err)
					return
				}
				tokens[i] = reg.Token
			}
		})
	}
	wg.Wait()
	if err := failed.Load(); err != nil {
		b.Fatal(err)
	}
	return tokens
}

func benchPost(b *testing.B, client *http.Client, url, key string, body []byte) []byte {
	return benchPostAuth(b, client, url, "key="+key, body)
}

// benchPostAuth is benchPost with the Authorization header auth.
func benchPostAuth(b *testing.B, client *http.Client, url, auth string, body []byte) []byte {
	req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
	req.Header.Set("Authorization", auth)
	req.Header.Set("Content-Type", "application/json")
	return benchDo(b, client, req, http.StatusOK)
}

// benchDo makes req and returns the answer's body, failing b on an error
// or a status other than want.
func benchDo(b *testing.B, client *http.Client, req *http.Request, want int) []byte {
	resp, err := client.Do(req)
	if err != nil {
		b.Error(err)
		return nil
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != want {
		b.Errorf("%s %s: %d %s, want %d", req.Method, req.URL.Path, resp.StatusCode, out, want)
	}
	return out
}

// benchParallel runs b.N requests from parallelism goroutines per CPU over
// one client that keeps its connections, do(client, i) making the i-th,
// and reports how many went a second, in unit.
func benchParallel(b *testing.B, parallelism int, unit string, do func(client *http.Client, i int)) {
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 64}}
	var n atomic.Int64
	b.SetParallelism(parallelism)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			do(client, int(n.Add(1)))
		}
	})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), unit)
}

// BenchmarkSend: single-token sends from 16 concurrent app server
// connections, round robin over 1000 offline devices.
func BenchmarkSend(b *testing.B) {
	ts := benchServer(b, nil)
	snd := ts.addSender("")
	tokens := benchTokens(b, ts.store, snd.ID, 1000)
	bodies := make([][]byte, len(tokens))
	for i, tok := range tokens {
		bodies[i], _ = json.Marshal(map[string]any{"to": tok, "time_to_live": 3600,
			"data": map[string]string{"temperature": "21.5", "unit": "C", "room": "kitchen"}})
	}
	benchSends(b, ts.base+"/gcm/send", "key="+snd.ServerKey, bodies, `"success":1`)
}

// benchSends posts bodies to url in turn from 16 concurrent connections
// with the Authorization header auth, each answer holding want, and
// reports the sends per second.
func benchSends(b *testing.B, url, auth string, bodies [][]byte, want string) {
	benchParallel(b, 8, "msgs/s", func(client *http.Client, i int) {
		out := benchPostAuth(b, client, url, auth, bodies[i%len(bodies)])
		if !bytes.Contains(out, []byte(want)) {
			b.Errorf("send answered %s", out)
		}
	})
}

// BenchmarkMulticast: multicasts of 1000 tokens (GCM's most) from one
// app server connection, over 10,000 offline devices.
func BenchmarkMulticast(b *testing.B) {
	ts := benchServer(b, nil)
	snd := ts.addSender("")
	tokens := benchTokens(b, ts.store, snd.ID, 10_000)
	var bodies [][]byte
	for i := 0; i < len(tokens); i += maxRegistrationIDs {
		body, _ := json.Marshal(map[string]any{"registration_ids": tokens[i : i+maxRegistrationIDs], "time_to_live": 3600,
			"data": map[string]string{"temperature": "21.5", "unit": "C", "room": "kitchen"}})
		bodies = append(bodies, body)
	}
	client := &http.Client{}
	b.ResetTimer()
	for i := range b.N {
		out := benchPost(b, client, ts.base+"/gcm/send", snd.ServerKey, bodies[i%len(bodies)])
		if !bytes.Contains(out, []byte(`"success":1000,`)) {
			b.Fatalf("multicast answered %.200s", out)
		}
	}
	b.ReportMetric(float64(b.N*maxRegistrationIDs)/b.Elapsed().Seconds(), "msgs/s")
}

func BenchmarkTopicFanout10k(b *testing.B)  { benchTopicFanOut(b, 10_000) }
func BenchmarkTopicFanout100k(b *testing.B) { benchTopicFanOut(b, 100_000) }

// benchTopicFanOut times a topic send from the request until every
// subscriber's copy is in its queue.
func benchTopicFanOut(b *testing.B, subscribers int) {
	done := make(chan int, 1)
	ts := benchServer(b, func(c *Config) {
		c.fanOutDone = func(_ store.TopicMessage, copies int) { done <- copies }
	})
	snd := ts.addSender("")
	tokens := benchTokens(b, ts.store, snd.ID, subscribers)
	for i := 0; i < len(tokens); i += maxRegistrationIDs {
		if _, err := ts.store.ChangeSubscriptions(context.Background(), snd.ID, "bench", tokens[i:min(i+maxRegistrationIDs, len(tokens))], true, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
	body, _ := json.Marshal(map[string]any{"to": "/topics/bench", "time_to_live": 3600,
		"data": map[string]string{"alert": "storm", "level": "3"}})
	client := &http.Client{}
	b.ResetTimer()
	for range b.N {
		benchPost(b, client, ts.base+"/gcm/send", snd.ServerKey, body)
		if copies := <-done; copies != subscribers {
			b.Fatalf("%d copies, want %d", copies, subscribers)
		}
	}
	b.ReportMetric(float64(b.N*subscribers)/b.Elapsed().Seconds(), "copies/s")
}
