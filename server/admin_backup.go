// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"tether/server/store"
)

// Backups and compaction of a single machine's store. A cluster's state
// is backed up with JetStream's own tools (docs/backup.md).

var (
	// ErrClusterBackup is returned when backing up a cluster's state,
	// which JetStream's own tools do.
	ErrClusterBackup = errors.New("a cluster's state is in JetStream: back it up with nats stream backup or the NATS servers' own backups (docs/backup.md)")
	// ErrServing is returned for what needs the store to itself, such as
	// compaction, while a server runs on it.
	ErrServing = errors.New("a server is running on the data directory: stop it first")
)

// BackupResult describes a backup written.
type BackupResult struct {
	Path  string `json:"path"`
	Bytes int64  `json:"bytes"`
	// Online says the running server made it, while it served.
	Online bool `json:"online"`
}

// adminBackupRoutes adds the backup request to the admin socket's mux.
func (s *Server) adminBackupRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /backup", func(w http.ResponseWriter, r *http.Request) {
		st, ok := s.store.(*store.Store)
		if !ok {
			http.Error(w, ErrClusterBackup.Error(), http.StatusConflict)
			return
		}
		began := time.Now()
		n, err := st.Backup(func(size int64) io.Writer {
			w.Header().Set("Content-Type", "application/octet-stream")
			// The length lets the client tell a copy cut short.
			w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
			w.WriteHeader(http.StatusOK)
			return deadlineWriter{w, http.NewResponseController(w)}
		})
		if err != nil {
			// The answer has begun: the client sees it end short.
			s.log.Error("admin: back up store", "bytes", n, "err", err)
			return
		}
		s.log.Info("store backed up", "bytes", n, "took", time.Since(began).Round(time.Millisecond))
	})
}

// backupWriteTimeout bounds each write of a backup to the admin socket: a
// client that stops reading would otherwise hold the copy's read
// transaction, and bbolt could not reuse the pages freed meanwhile.
const backupWriteTimeout = 30 * time.Second

// deadlineWriter gives each write its own deadline.
type deadlineWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (d deadlineWriter) Write(p []byte) (int, error) {
	if err := d.rc.SetWriteDeadline(time.Now().Add(backupWriteTimeout)); err != nil {
		return 0, err
	}
	return d.w.Write(p)
}

// Backup writes a consistent copy of the store to out, with mode 0600:
// through the running server, which goes on serving, or from the store
// directly when none runs. The copy is checked as the server checks its
// store before it opens it, and only then put at out, atomically. It wraps
// ErrClusterBackup for a cluster.
func (a *Admin) Backup(ctx context.Context, dataDir, out string) (BackupResult, error) {
	if a.cluster != nil {
		return BackupResult{}, fmt.Errorf("back up: %w", ErrClusterBackup)
	}
	if same, err := sameFile(out, filepath.Join(dataDir, storeFile)); err != nil || same {
		if err == nil {
			err = errors.New("it is the store itself: give a path outside the data directory's server.db")
		}
		return BackupResult{}, fmt.Errorf("back up to %s: %w", out, err)
	}
	copyTo := a.backupThroughSocket
	if a.store != nil {
		copyTo = func(_ context.Context, w io.Writer) (int64, error) {
			st, ok := a.store.(*store.Store)
			if !ok {
				return 0, ErrClusterBackup
			}
			return st.Backup(func(int64) io.Writer { return w })
		}
	}
	var n int64
	err := store.ReplaceFile(out, func(tmp string) error {
		f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		n, err = copyTo(ctx, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		return store.CheckFile(tmp)
	})
	if err != nil {
		return BackupResult{}, fmt.Errorf("back up to %s: %w", out, err)
	}
	return BackupResult{Path: out, Bytes: n, Online: a.client != nil}, nil
}

// backupThroughSocket copies the running server's store to w.
func (a *Admin) backupThroughSocket(ctx context.Context, w io.Writer) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://tether-server/backup", nil)
	if err != nil {
		return 0, err
	}
	// No overall timeout: a large store takes as long as it takes; ctx
	// ends it.
	client := &http.Client{Transport: a.client.Transport}
	resp, err := client.Do(req)
	if err != nil {
		return 0, fmt.Errorf("admin socket: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		if resp.StatusCode == http.StatusConflict {
			return 0, ErrClusterBackup
		}
		return 0, fmt.Errorf("server answered %s: %s", resp.Status, msg)
	}
	n, err := io.Copy(w, resp.Body)
	if err != nil {
		return n, fmt.Errorf("copy from the server: %w", err)
	}
	if resp.ContentLength >= 0 && n != resp.ContentLength {
		return n, fmt.Errorf("copy from the server: %d bytes of %d", n, resp.ContentLength)
	}
	return n, nil
}

// sameFile reports whether paths a and b name one file; a missing file is
// no other.
func sameFile(a, b string) (bool, error) {
	fa, err := os.Stat(a)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	fb, err := os.Stat(b)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	return err == nil && os.SameFile(fa, fb), err
}

// CompactResult gives a store file's size before and after compaction.
type CompactResult struct {
	Before int64 `json:"bytes_before"`
	After  int64 `json:"bytes_after"`
}

// Compact rewrites the store in dataDir without the space that deletions
// freed, which bbolt reuses but never gives back to the file system. It
// needs the store to itself: it wraps ErrServing when a server runs on it,
// and ErrNoStore when there is none.
func Compact(ctx context.Context, dataDir string) (CompactResult, error) {
	var dialer net.Dialer
	if conn, err := dialer.DialContext(ctx, "unix", filepath.Join(dataDir, adminSocketFile)); err == nil {
		conn.Close()
		return CompactResult{}, fmt.Errorf("compact: %w", ErrServing)
	}
	path := filepath.Join(dataDir, storeFile)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return CompactResult{}, fmt.Errorf("compact: %s: %w", dataDir, ErrNoStore)
	}
	before, after, err := store.Compact(path)
	if errors.Is(err, store.ErrLocked) {
		return CompactResult{}, fmt.Errorf("compact: %w: %w", ErrServing, err)
	}
	if err != nil {
		return CompactResult{}, err
	}
	return CompactResult{Before: before, After: after}, nil
}
