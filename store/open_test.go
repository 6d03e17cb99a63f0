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

// BenchmarkOpen measures opening a store holding n downstream messages
// (held or seen): "open" is Open as tetherd does it, the file checked
// whole; "unchecked" is opening the bbolt file without the check, for
// comparison. An agent holds messages only until its apps read them, so n
// is far below the server's counts in practice.
func BenchmarkOpen(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		path := filepath.Join(b.TempDir(), "agent.db")
		fillStore(b, path, n)
		fi, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		mb := float64(fi.Size()) / (1 << 20)
		b.Run(fmt.Sprintf("messages=%d/open", n), func(b *testing.B) {
			for b.Loop() {
				s, err := Open(path)
				if err != nil {
					b.Fatal(err)
				}
				s.Close()
			}
			b.ReportMetric(mb, "MiB")
		})
		b.Run(fmt.Sprintf("messages=%d/unchecked", n), func(b *testing.B) {
			for b.Loop() {
				db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: lockTimeout})
				if err != nil {
					b.Fatal(err)
				}
				db.Close()
			}
			b.ReportMetric(mb, "MiB")
		})
	}
}

// fillStore writes a store at path holding n messages for ten apps, a
// third of them acked.
func fillStore(b *testing.B, path string, n int) {
	b.Helper()
	s, err := Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	const apps = 10
	for a := range apps {
		app := fmt.Sprintf("com.example.app%d", a)
		if err := s.Register(Registration{App: app, Sender: "sender", Token: "token-" + app, Owner: 1000}); err != nil {
			b.Fatal(err)
		}
	}
	body := strings.Repeat("x", 200)
	msgs := make([]Message, 0, n)
	acked := map[string][]string{}
	for i := range n {
		app := fmt.Sprintf("com.example.app%d", i%apps)
		id := fmt.Sprintf("msg-%d", i)
		msgs = append(msgs, Message{ID: id, App: app, From: "sender", Token: "token-" + app,
			Data: map[string]string{"body": body}, TTL: 86400, Received: t0, Expires: t0.Add(24 * time.Hour)})
		if i%3 == 0 {
			acked[app] = append(acked[app], id)
		}
	}
	if _, err := s.AddMessages(msgs); err != nil {
		b.Fatal(err)
	}
	for app, ids := range acked {
		if _, err := s.Ack(app, ids); err != nil {
			b.Fatal(err)
		}
	}
}
