package store

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// BenchmarkOpen measures opening a store holding n queued messages:
// "open" is Open as the server does it, the file checked whole;
// "unchecked" is opening the bbolt file without the check, for comparison.
// The page cache is warm, as after a restart of the server alone.
func BenchmarkOpen(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		path := filepath.Join(b.TempDir(), "server.db")
		fillStore(b, path, n)
		fi, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		mb := float64(fi.Size()) / (1 << 20)
		b.Run(fmt.Sprintf("messages=%d/open", n), func(b *testing.B) {
			for b.Loop() {
				s, err := Open(path, Options{})
				if err != nil {
					b.Fatal(err)
				}
				s.Close()
			}
			b.ReportMetric(mb, "MiB")
		})
		b.Run(fmt.Sprintf("messages=%d/unchecked", n), func(b *testing.B) {
			for b.Loop() {
				db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
				if err != nil {
					b.Fatal(err)
				}
				db.Close()
			}
			b.ReportMetric(mb, "MiB")
		})
	}
}

// fillStore writes a store at path with n messages queued, 100 for each
// app on each device (GCM's cap), and a third of them acked.
func fillStore(b *testing.B, path string, n int) {
	b.Helper()
	s, err := Open(path, Options{})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	snd, err := s.AddSender("backend", "", hash("key"), t0)
	if err != nil {
		b.Fatal(err)
	}
	const apps = 10
	body := strings.Repeat("x", 200)
	var msgs []Message
	var acks [][]string
	for d := 0; len(msgs) < n; d++ {
		dev, err := s.AddDevice(hash(fmt.Sprint(d)), t0)
		if err != nil {
			b.Fatal(err)
		}
		var acked []string
		for a := range apps {
			reg, err := s.Register(dev.ID, fmt.Sprintf("com.example.app%d", a), snd.ID, t0)
			if err != nil {
				b.Fatal(err)
			}
			for i := range MaxPendingPerApp {
				id := fmt.Sprintf("%s-%d-%d", dev.ID, a, i)
				msgs = append(msgs, Message{ID: id, Device: dev.ID, Token: reg.Token, App: reg.App, Sender: snd.ID,
					Data: map[string]string{"body": body}, Sent: t0, Expiry: t0.Add(24 * time.Hour)})
				if i%3 == 0 {
					acked = append(acked, id)
				}
			}
		}
		acks = append(acks, acked)
	}
	if _, err := s.Enqueue(msgs[:n]); err != nil {
		b.Fatal(err)
	}
	for d, acked := range acks {
		if _, _, err := s.Ack(msgs[d*apps*MaxPendingPerApp].Device, acked, t0); err != nil {
			b.Fatal(err)
		}
	}
}
