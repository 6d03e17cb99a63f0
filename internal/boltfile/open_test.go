// SPDX-License-Identifier: Apache-2.0

package boltfile_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"

	"tether/internal/boltfile"
	serverstore "tether/server/store"
	"tether/store"
)

// makeFile writes a bbolt file at path with what the stores' files have:
// buckets nested in buckets, inline buckets, enough keys for branch pages,
// a value spanning overflow pages, and freed pages.
func makeFile(t testing.TB, path string, keys int) {
	t.Helper()
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		big, err := tx.CreateBucket([]byte("big"))
		if err != nil {
			return err
		}
		for i := range keys {
			if err := big.Put(fmt.Appendf(nil, "key-%06d", i), bytes.Repeat([]byte{'v'}, 100)); err != nil {
				return err
			}
		}
		if err := big.Put([]byte("huge"), bytes.Repeat([]byte{'h'}, 20000)); err != nil {
			return err
		}
		apps, err := tx.CreateBucket([]byte("apps"))
		if err != nil {
			return err
		}
		for _, app := range []string{"com.example.a", "com.example.b"} {
			b, err := apps.CreateBucket([]byte(app))
			if err != nil {
				return err
			}
			if err := b.Put([]byte("owner"), []byte{0, 0, 3, 232}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		big := tx.Bucket([]byte("big"))
		for i := 0; i < keys; i += 3 {
			if err := big.Delete(fmt.Appendf(nil, "key-%06d", i)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// layout is where things are in a file makeFile wrote, found through
// bbolt's own API.
type layout struct {
	pageSize int
	// pages is the number of pages in use; the file may be longer.
	pages int
	// First page in use of each type, by bbolt's name for it; of the
	// leaves, the first with two entries at least.
	first map[string]int
	// Offset of an inline bucket's page in the file.
	inline int
}

func readLayout(t *testing.T, path string) layout {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	l := layout{pageSize: db.Info().PageSize, first: map[string]int{}}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	err = db.View(func(tx *bolt.Tx) error {
		for id := 2; ; id++ {
			info, err := tx.Page(id)
			if err != nil || info == nil {
				l.pages = id
				return err
			}
			p := data[id*l.pageSize:]
			if _, ok := l.first[info.Type]; !ok && boltfile.Order.Uint64(p) == uint64(id) && (info.Type != "leaf" || info.Count >= 2) {
				l.first[info.Type] = id
			}
			if info.Type == "leaf" && l.inline == 0 {
				l.inline = inlineBucket(p, id*l.pageSize)
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"branch", "leaf", "freelist"} {
		if _, ok := l.first[typ]; !ok {
			t.Fatalf("no %s page in the test file", typ)
		}
	}
	if l.inline == 0 {
		t.Fatal("no inline bucket in the test file")
	}
	return l
}

// inlineBucket returns the file offset of the page of the first inline
// bucket in leaf page p at offset off, or 0.
func inlineBucket(p []byte, off int) int {
	for i := range int(boltfile.Order.Uint16(p[10:])) {
		e := boltfile.PageHeaderSize + i*boltfile.EntrySize
		flags, pos, ksize := boltfile.Order.Uint32(p[e:]), int(boltfile.Order.Uint32(p[e+4:])), int(boltfile.Order.Uint32(p[e+8:]))
		v := e + pos + ksize
		if flags&boltfile.BucketEntry != 0 && boltfile.Order.Uint64(p[v:]) == 0 {
			return off + v + boltfile.BucketHeaderSize
		}
	}
	return 0
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	return sha256.Sum256(readFile(t, path))
}

// writeAt writes b at off in the file at path.
func writeAt(t *testing.T, path string, off int, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(b, int64(off)); err != nil {
		t.Fatal(err)
	}
}

func truncate(t *testing.T, path string, size int64) {
	t.Helper()
	if err := os.Truncate(path, size); err != nil {
		t.Fatal(err)
	}
}

// native16, native32 and native64 encode numbers as bbolt does.
func native16(n uint16) []byte { return boltfile.Order.AppendUint16(nil, n) }
func native32(n uint32) []byte { return boltfile.Order.AppendUint32(nil, n) }
func native64(n uint64) []byte { return boltfile.Order.AppendUint64(nil, n) }

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// damages are ways a bbolt file gets damaged, and what the error says.
var damages = []struct {
	name   string
	damage func(t *testing.T, path string, l layout)
	want   string
}{
	{"truncated by a page", func(t *testing.T, path string, l layout) {
		truncate(t, path, int64((l.pages-1)*l.pageSize))
	}, "cut short"},
	{"truncated to half its pages", func(t *testing.T, path string, l layout) {
		truncate(t, path, int64(l.pages/2*l.pageSize))
	}, "cut short"},
	{"truncated inside the second meta page", func(t *testing.T, path string, l layout) {
		truncate(t, path, int64(l.pageSize)+40)
	}, "too short for its two meta pages"},
	{"truncated inside the first meta page", func(t *testing.T, path string, l layout) {
		truncate(t, path, 50)
	}, "too short for a bbolt file"},
	{"zeroed header", func(t *testing.T, path string, l layout) {
		writeAt(t, path, 0, make([]byte, 2*l.pageSize))
	}, "meta page 0: not a bbolt meta page"},
	{"first meta page garbage", func(t *testing.T, path string, l layout) {
		writeAt(t, path, 0, randomBytes(l.pageSize))
	}, "meta page 0: not a bbolt meta page"},
	{"bit flip in the second meta page", func(t *testing.T, path string, l layout) {
		writeAt(t, path, l.pageSize+boltfile.PageHeaderSize+40, []byte{0x7f}) // the high-water mark
	}, "meta page 1: checksum mismatch"},
	{"random bytes", func(t *testing.T, path string, l layout) {
		writeAt(t, path, 0, randomBytes(len(readFile(t, path))))
	}, "meta page 0: not a bbolt meta page"},
	{"a text file", func(t *testing.T, path string, l layout) {
		if err := os.WriteFile(path, []byte(strings.Repeat("not a database\n", 1000)), 0o600); err != nil {
			t.Fatal(err)
		}
	}, "meta page 0: not a bbolt meta page"},
	{"leaf page overwritten with garbage", func(t *testing.T, path string, l layout) {
		writeAt(t, path, l.first["leaf"]*l.pageSize, randomBytes(l.pageSize))
	}, "says it is page"},
	{"branch entry pointing past the file", func(t *testing.T, path string, l layout) {
		writeAt(t, path, l.first["branch"]*l.pageSize+boltfile.PageHeaderSize+8, native64(1<<40))
	}, "a reference to page 1099511627776, outside the file's pages"},
	{"branch entry pointing at a meta page", func(t *testing.T, path string, l layout) {
		writeAt(t, path, l.first["branch"]*l.pageSize+boltfile.PageHeaderSize+8, native64(1))
	}, "a reference to page 1, outside"},
	{"branch entries pointing at the same page", func(t *testing.T, path string, l layout) {
		off := l.first["branch"]*l.pageSize + boltfile.PageHeaderSize
		data := readFile(t, path)
		writeAt(t, path, off+boltfile.EntrySize+8, data[off+8:off+16])
	}, "is used twice"},
	{"empty branch page", func(t *testing.T, path string, l layout) {
		writeAt(t, path, l.first["branch"]*l.pageSize+10, native16(0))
	}, "has no entries"},
	{"page of unknown type", func(t *testing.T, path string, l layout) {
		writeAt(t, path, l.first["leaf"]*l.pageSize+8, native16(0x40))
	}, "is of type 0x40"},
	{"leaf counting more entries than it holds", func(t *testing.T, path string, l layout) {
		writeAt(t, path, l.first["leaf"]*l.pageSize+10, native16(0xfff0))
	}, "more than it holds"},
	{"leaf key running off the page", func(t *testing.T, path string, l layout) {
		writeAt(t, path, l.first["leaf"]*l.pageSize+boltfile.PageHeaderSize+8, native32(1<<30))
	}, "lies outside it"},
	{"overflow running past the file", func(t *testing.T, path string, l layout) {
		writeAt(t, path, l.first["leaf"]*l.pageSize+12, native32(1<<30))
	}, "pages past the last page"},
	{"inline bucket with a damaged page", func(t *testing.T, path string, l layout) {
		writeAt(t, path, l.inline+8, native16(boltfile.BranchPage))
	}, "inline bucket in entry"},
	{"free list overwritten with garbage", func(t *testing.T, path string, l layout) {
		writeAt(t, path, l.first["freelist"]*l.pageSize, randomBytes(l.pageSize))
	}, "says it is page"},
	{"free list naming a meta page", func(t *testing.T, path string, l layout) {
		writeAt(t, path, l.first["freelist"]*l.pageSize+boltfile.PageHeaderSize, native64(0))
	}, "the free list names page 0"},
	{"free list counting more than it holds", func(t *testing.T, path string, l layout) {
		writeAt(t, path, l.first["freelist"]*l.pageSize+10, native16(0xfff0))
	}, "counts 65520 pages, more than it holds"},
	{"free list losing a page", func(t *testing.T, path string, l layout) {
		data := readFile(t, path)
		off := l.first["freelist"]*l.pageSize + 10
		writeAt(t, path, off, native16(boltfile.Order.Uint16(data[off:])-1))
	}, "consistency check failed: page"},
	{"keys out of order", func(t *testing.T, path string, l layout) {
		data := readFile(t, path)
		p := l.first["leaf"] * l.pageSize
		e := p + boltfile.PageHeaderSize + boltfile.EntrySize // the second entry
		ksize := int(boltfile.Order.Uint32(data[e+8:]))
		writeAt(t, path, e+int(boltfile.Order.Uint32(data[e+4:])), make([]byte, ksize))
	}, "consistency check failed: key[1]"},
}

// kinds are the files damaged: a bbolt file, and the agent's and the
// server's stores as they write them, each opened as its program does.
var kinds = []struct {
	name string
	// make writes a file holding n keys or messages; n is what the
	// damage tests use.
	make     func(t testing.TB, path string, n int)
	n        int
	open     func(path string) (io.Closer, error)
	sentinel error
}{
	{"bbolt file", makeFile, 3000,
		func(path string) (io.Closer, error) {
			return boltfile.Open(path, 0o600, bolt.Options{Timeout: time.Second})
		},
		boltfile.ErrDamaged},
	{"agent store", makeAgentStore, 600,
		func(path string) (io.Closer, error) { return store.Open(path) },
		store.ErrDamaged},
	{"server store", makeServerStore, 1000,
		func(path string) (io.Closer, error) { return serverstore.Open(path, serverstore.Options{}) },
		serverstore.ErrDamaged},
}

func TestOpenDamaged(t *testing.T) {
	for _, k := range kinds {
		pristine := filepath.Join(t.TempDir(), "pristine.db")
		k.make(t, pristine, k.n)
		for _, d := range damages {
			t.Run(k.name+"/"+d.name, func(t *testing.T) {
				path := filepath.Join(t.TempDir(), "test.db")
				copyFile(t, pristine, path)
				d.damage(t, path, readLayout(t, path))
				before := fileHash(t, path)

				db, err := k.open(path)
				if err == nil {
					db.Close()
					t.Fatal("Open succeeded")
				}
				if !errors.Is(err, k.sentinel) {
					t.Errorf("error %q does not wrap ErrDamaged", err)
				}
				t.Log(err)
				msg := err.Error()
				if !strings.Contains(msg, d.want) || !strings.Contains(msg, "left unchanged for inspection") {
					t.Errorf("error %q does not say %q and that the file was kept", msg, d.want)
				}
				if k.sentinel != boltfile.ErrDamaged && !strings.Contains(msg, path) {
					t.Errorf("error %q does not name the file", msg)
				}
				if fileHash(t, path) != before {
					t.Error("the damaged file changed")
				}
				// The failed open let go of the file and its lock.
				f, err := os.Open(path)
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
					t.Errorf("the file is still locked after the failed open: %v", err)
				}
			})
		}
	}
}

// makeAgentStore writes an agent store at path with credentials and n
// messages for ten apps, a third of them acked.
func makeAgentStore(t testing.TB, path string, n int) {
	t.Helper()
	s, err := store.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	check(s.SetCredentials(store.Credentials{Server: "wss://push.example", DeviceID: "dev", Secret: "secret"}))
	const apps = 10
	for a := range apps {
		app := fmt.Sprintf("com.example.app%d", a)
		check(s.Register(store.Registration{App: app, Sender: "sender", Token: "token-" + app, Owner: 1000}))
	}
	msgs := make([]store.Message, 0, n)
	acked := map[string][]string{}
	for i := range n {
		app := fmt.Sprintf("com.example.app%d", i%apps)
		id := fmt.Sprintf("msg-%d", i)
		msgs = append(msgs, store.Message{ID: id, App: app, From: "sender", Token: "token-" + app,
			Data: map[string]string{"body": strings.Repeat("x", 200)}, TTL: 86400, Received: storeTime, Expires: storeTime.Add(24 * time.Hour)})
		if i%3 == 0 {
			acked[app] = append(acked[app], id)
		}
	}
	_, _, err = s.AddMessages(msgs, store.Quota{})
	check(err)
	for app, ids := range acked {
		_, err := s.Ack(app, ids)
		check(err)
	}
}

// makeServerStore writes a server store at path with n messages queued,
// 100 for each of ten apps on each device (GCM's cap), a third of them
// acked.
func makeServerStore(t testing.TB, path string, n int) {
	ctx := context.Background()
	t.Helper()
	s, err := serverstore.Open(path, serverstore.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	check := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	key := sha256.Sum256([]byte("server key"))
	snd, err := s.AddSender(ctx, "backend", "", key[:], storeTime)
	check(err)
	const apps = 10
	var msgs []serverstore.Message
	var acks [][]string
	for d := 0; len(msgs) < n; d++ {
		secret := sha256.Sum256(fmt.Append(nil, d))
		dev, err := s.AddDevice(ctx, serverstore.Device{SecretHash: secret[:], Created: storeTime})
		check(err)
		var acked []string
		for a := range apps {
			reg, err := s.Register(ctx, dev.ID, fmt.Sprintf("com.example.app%d", a), snd.ID, "", storeTime)
			check(err)
			for i := range serverstore.MaxPendingPerApp {
				id := fmt.Sprintf("%s-%d-%d", dev.ID, a, i)
				msgs = append(msgs, serverstore.Message{ID: id, Device: dev.ID, Token: reg.Token, App: reg.App, Sender: snd.ID,
					Data: map[string]string{"body": strings.Repeat("x", 200)}, Sent: storeTime, Expiry: storeTime.Add(24 * time.Hour)})
				if i%3 == 0 {
					acked = append(acked, id)
				}
			}
		}
		acks = append(acks, acked)
	}
	_, err = s.Enqueue(ctx, msgs[:n], nil)
	check(err)
	for d, acked := range acks {
		_, _, err := s.Ack(ctx, msgs[d*apps*serverstore.MaxPendingPerApp].Device, acked, storeTime)
		check(err)
	}
}

// storeTime is when the stores' messages were sent.
var storeTime = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestOpenIntact(t *testing.T) {
	path := filepath.Join(t.TempDir(), "test.db")
	makeFile(t, path, 3000)
	db, err := boltfile.Open(path, 0o600, bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		if v := tx.Bucket([]byte("big")).Get([]byte("key-000001")); len(v) != 100 {
			return fmt.Errorf("key-000001 is %q", v)
		}
		if v := tx.Bucket([]byte("apps")).Bucket([]byte("com.example.b")).Get([]byte("owner")); len(v) != 4 {
			return fmt.Errorf("owner is %q", v)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func TestOpenNew(t *testing.T) {
	for _, name := range []string{"missing", "empty"} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "test.db")
			if name == "empty" {
				if err := os.WriteFile(path, nil, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			db, err := boltfile.Open(path, 0o600, bolt.Options{Timeout: time.Second})
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(func(tx *bolt.Tx) error { _, err := tx.CreateBucket([]byte("b")); return err }); err != nil {
				t.Fatal(err)
			}
			db.Close()
			db, err = boltfile.Open(path, 0o600, bolt.Options{Timeout: time.Second})
			if err != nil {
				t.Fatalf("reopen: %v", err)
			}
			db.Close()
		})
	}
}

// A file another writer holds is busy, not damaged, and not read.
func TestOpenLocked(t *testing.T) {
	path := filepath.Join(t.TempDir(), "test.db")
	makeFile(t, path, 10)
	db, err := boltfile.Open(path, 0o600, bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_, err = boltfile.Open(path, 0o600, bolt.Options{Timeout: 50 * time.Millisecond})
	if !errors.Is(err, berrors.ErrTimeout) || errors.Is(err, boltfile.ErrDamaged) {
		t.Fatalf("second Open: %v, want a timeout", err)
	}
}

// FuzzOpen damages a small file at random: Open must either refuse it as
// damaged or open it so that reading everything and writing works. A crash
// here is a fault bbolt would have hit.
func FuzzOpen(f *testing.F) {
	dir := f.TempDir()
	makeFile(f, filepath.Join(dir, "seed.db"), 200)
	seed, err := os.ReadFile(filepath.Join(dir, "seed.db"))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(uint32(0), []byte{1})
	f.Add(uint32(4096*3+16+8), native64(1<<40))
	f.Add(uint32(4096*4+10), native16(0xffff))
	f.Add(uint32(4096*5+20), randomBytes(64))
	f.Fuzz(func(t *testing.T, off uint32, b []byte) {
		data := bytes.Clone(seed)
		copy(data[int(off)%len(data):], b)
		path := filepath.Join(t.TempDir(), "test.db")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		db, err := boltfile.Open(path, 0o600, bolt.Options{Timeout: time.Second})
		if err != nil {
			if !errors.Is(err, boltfile.ErrDamaged) {
				t.Fatalf("error %q does not wrap ErrDamaged", err)
			}
			return
		}
		defer db.Close()
		if err := db.View(func(tx *bolt.Tx) error { return readAll(tx.Cursor(), tx.Bucket) }); err != nil {
			t.Fatal(err)
		}
		err = db.Update(func(tx *bolt.Tx) error {
			b, err := tx.CreateBucketIfNotExists([]byte("big"))
			if err != nil {
				return err
			}
			return b.Put([]byte("new"), bytes.Repeat([]byte{'n'}, 5000))
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// readAll reads every key and value under c, into buckets too.
func readAll(c *bolt.Cursor, bucket func([]byte) *bolt.Bucket) error {
	for k, v := c.First(); k != nil; k, v = c.Next() {
		// Touch every byte: a value bbolt placed outside the file
		// would fault here.
		_ = bytes.Count(k, []byte{0}) + bytes.Count(v, []byte{0})
		if v != nil {
			continue
		}
		if b := bucket(k); b != nil {
			if err := readAll(b.Cursor(), b.Bucket); err != nil {
				return err
			}
		}
	}
	return nil
}
