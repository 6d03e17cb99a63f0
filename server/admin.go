// SPDX-License-Identifier: Apache-2.0

package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"tether/server/store"
)

var (
	// ErrNoSender is returned when removing a sender that does not exist.
	ErrNoSender = errors.New("no such sender")
	// ErrNoStore is returned by OpenAdmin when the data directory has no
	// store and Create is not set.
	ErrNoStore = errors.New("no server store in the data directory")
	// ErrNoToken is returned when rotating a token that is not an active
	// registration.
	ErrNoToken = errors.New("no active registration has this token")
	// ErrNotServing is returned for what only a running server can do,
	// such as draining its XMPP connections, when none runs.
	ErrNotServing = errors.New("no server is running on the data directory")
	// ErrNoXMPP is returned when draining a server that has no XMPP
	// endpoint.
	ErrNoXMPP = errors.New("the server has no XMPP endpoint")
	// ErrPerNode is returned for what one node does for itself, such as
	// draining its XMPP connections, when asked of a whole cluster: name
	// the node's data directory instead.
	ErrPerNode = errors.New("this is done node by node: give the data directory of the node")
	// errBadSender marks a name or webhook that is not acceptable.
	errBadSender = errors.New("bad sender")
	// errBadGrace marks a grace period out of range.
	errBadGrace = errors.New("bad grace period")
)

// Grace periods of rotated tokens.
const (
	// DefaultTokenGrace is how long a rotated token keeps working when no
	// grace period is given: as long as a message may wait for its device.
	DefaultTokenGrace = 28 * 24 * time.Hour
	// MaxTokenGrace bounds the grace period.
	MaxTokenGrace = 366 * 24 * time.Hour
)

// RotatedToken is the outcome of a token rotation. Token is the new
// registration token, a secret; the old one works until GraceUntil.
type RotatedToken struct {
	Token      string    `json:"token"`
	GraceUntil time.Time `json:"grace_until"`
}

// SenderInfo describes a sender. It never carries the server key.
type SenderInfo struct {
	ID      string    `json:"sender_id"`
	Name    string    `json:"name"`
	Webhook string    `json:"webhook,omitempty"`
	Created time.Time `json:"created"`
}

// NewSender is a sender just created, or given a new key, with its server
// key. Only a hash of the key is stored: this is the one time it is shown.
type NewSender struct {
	ID        string `json:"sender_id"`
	ServerKey string `json:"server_key"`
	// WebhookSecret, for a sender just created, is the secret its webhook
	// POSTs are signed with (Tether-Signature).
	WebhookSecret string `json:"webhook_secret,omitempty"`
	// OldKeyUntil is when the replaced key stops working, after a key
	// rotation with a grace period.
	OldKeyUntil time.Time `json:"old_key_until,omitzero"`
}

// MaxKeyGrace bounds how long a replaced server key keeps working.
const MaxKeyGrace = 30 * 24 * time.Hour

// maxSenderName bounds a sender's name.
const maxSenderName = 200

func addSender(ctx context.Context, st store.Backend, name, webhook string, now time.Time) (NewSender, error) {
	if name == "" || len(name) > maxSenderName || !utf8.ValidString(name) || strings.IndexFunc(name, unicode.IsControl) >= 0 {
		return NewSender{}, fmt.Errorf("%w: the name must be 1 to %d bytes of text", errBadSender, maxSenderName)
	}
	if err := checkWebhook(webhook); err != nil {
		return NewSender{}, err
	}
	key := newSecret(32)
	snd, err := st.AddSender(ctx, name, webhook, hashSecret(key), now)
	if err != nil {
		return NewSender{}, err
	}
	return NewSender{ID: snd.ID, ServerKey: key, WebhookSecret: snd.WebhookSecret}, nil
}

// checkWebhook accepts an absolute http or https URL, or none.
func checkWebhook(webhook string) error {
	if webhook == "" {
		return nil
	}
	u, err := url.Parse(webhook)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("%w: the webhook must be an absolute http or https URL", errBadSender)
	}
	return nil
}

// rotateSenderKey gives sender id a new server key; the old one works for
// grace more.
func rotateSenderKey(ctx context.Context, st store.Backend, id string, grace time.Duration, now time.Time) (NewSender, error) {
	if grace < 0 || grace > MaxKeyGrace {
		return NewSender{}, fmt.Errorf("%w: %v, want 0 to %v", errBadGrace, grace, MaxKeyGrace)
	}
	key := newSecret(32)
	snd, err := st.RotateSenderKey(ctx, id, hashSecret(key), grace, now)
	if errors.Is(err, store.ErrNotFound) {
		return NewSender{}, fmt.Errorf("rotate key of sender %s: %w", id, ErrNoSender)
	}
	if err != nil {
		return NewSender{}, err
	}
	return NewSender{ID: snd.ID, ServerKey: key, OldKeyUntil: snd.OldKeyUntil}, nil
}

func listSenders(ctx context.Context, st store.Backend) ([]SenderInfo, error) {
	senders, err := st.Senders(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]SenderInfo, 0, len(senders))
	for _, snd := range senders {
		out = append(out, SenderInfo{ID: snd.ID, Name: snd.Name, Webhook: snd.Webhook, Created: snd.Created})
	}
	return out, nil
}

func removeSender(ctx context.Context, st store.Backend, id string) error {
	err := st.RemoveSender(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("remove sender %s: %w", id, ErrNoSender)
	}
	return err
}

// rotateToken gives the registration of token a new token; the device
// learns it with a token_refresh frame in its next (or current) session.
func rotateToken(ctx context.Context, st store.Backend, token string, grace time.Duration, now time.Time) (store.Registration, RotatedToken, error) {
	if grace < 0 || grace > MaxTokenGrace {
		return store.Registration{}, RotatedToken{}, fmt.Errorf("%w: %v, want 0 to %v", errBadGrace, grace, MaxTokenGrace)
	}
	reg, err := st.RotateToken(ctx, token, grace, now)
	if errors.Is(err, store.ErrNotFound) {
		return store.Registration{}, RotatedToken{}, fmt.Errorf("rotate token: %w", ErrNoToken)
	}
	if err != nil {
		return store.Registration{}, RotatedToken{}, err
	}
	return reg, RotatedToken{Token: reg.Token, GraceUntil: now.Add(grace).UTC()}, nil
}

// listenAdmin listens on the admin socket with mode 0600. A socket file
// left by a server that died is removed: the caller holds the store's lock,
// so no other server is using it.
func listenAdmin(path string) (net.Listener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	return ln, nil
}

// adminHandler serves the admin socket: a small HTTP API over a Unix
// socket that only the server's user can open.
func (s *Server) adminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /senders", func(w http.ResponseWriter, r *http.Request) {
		list, err := listSenders(r.Context(), s.store)
		if err != nil {
			s.failAdmin(w, "list senders", err)
			return
		}
		writeJSON(w, http.StatusOK, list)
	})
	mux.HandleFunc("POST /senders", func(w http.ResponseWriter, r *http.Request) {
		var req struct{ Name, Webhook string }
		if !decodeAdminRequest(w, r, &req) {
			return
		}
		snd, err := addSender(r.Context(), s.store, req.Name, req.Webhook, s.now())
		if err != nil {
			s.failAdmin(w, "add sender", err)
			return
		}
		s.log.Info("sender added", "sender", snd.ID, "name", req.Name, "webhook", req.Webhook != "")
		writeJSON(w, http.StatusCreated, snd)
	})
	mux.HandleFunc("DELETE /senders/{id}", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := removeSender(r.Context(), s.store, id); err != nil {
			s.failAdmin(w, "remove sender", err, "sender", id)
			return
		}
		s.log.Info("sender removed", "sender", id)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /senders/{id}/key", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		var req struct {
			GraceSeconds int64 `json:"grace_seconds"`
		}
		if !decodeAdminRequest(w, r, &req) {
			return
		}
		snd, err := rotateSenderKey(r.Context(), s.store, id, secondsDuration(req.GraceSeconds), s.now())
		if err != nil {
			s.failAdmin(w, "rotate sender key", err, "sender", id)
			return
		}
		s.log.Info("sender key rotated", "sender", id, "old_key_until", snd.OldKeyUntil)
		writeJSON(w, http.StatusOK, snd)
	})
	s.adminWebhookRoutes(mux)
	s.adminServiceKeyRoutes(mux)
	s.adminBackupRoutes(mux)
	s.adminDrainRoutes(mux)
	mux.HandleFunc("POST /tokens/rotate", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Token        string `json:"token"`
			GraceSeconds int64  `json:"grace_seconds"`
		}
		if !decodeAdminRequest(w, r, &req) {
			return
		}
		reg, rotated, err := rotateToken(r.Context(), s.store, req.Token, secondsDuration(req.GraceSeconds), s.now())
		if err != nil {
			s.failAdmin(w, "rotate token", err)
			return
		}
		s.log.Info("token rotated", "device", reg.Device, "app", reg.App, "sender", reg.Sender, "grace_until", rotated.GraceUntil)
		s.hub.notify(reg.Device)
		writeJSON(w, http.StatusOK, rotated)
	})
	mux.HandleFunc("POST /xmpp/drain", func(w http.ResponseWriter, r *http.Request) {
		if s.ccs == nil {
			http.Error(w, ErrNoXMPP.Error(), http.StatusConflict)
			return
		}
		n := s.ccs.drain(s.cfg.XMPPDrainTimeout, false)
		s.log.Info("xmpp connections drained", "count", n)
		writeJSON(w, http.StatusOK, DrainResult{Drained: n})
	})
	s.adminDeviceRoutes(mux)
	return mux
}

// decodeAdminRequest reads an admin request's JSON body into v; false
// means the body was bad and the request has its 400.
func decodeAdminRequest(w http.ResponseWriter, r *http.Request, v any) bool {
	if err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(v); err != nil {
		http.Error(w, "decode request: "+err.Error(), http.StatusBadRequest)
		return false
	}
	return true
}

// failAdmin answers an admin request that failed while doing what: 404
// for a sender or token that does not exist, 400 for a bad argument, and
// 500, logged with attrs, for the rest.
func (s *Server) failAdmin(w http.ResponseWriter, what string, err error, attrs ...any) {
	status := http.StatusInternalServerError
	switch {
	case errors.Is(err, ErrNoSender), errors.Is(err, ErrNoToken), errors.Is(err, ErrNoDevice), errors.Is(err, ErrNoEnrollKey), errors.Is(err, ErrNoServiceKey):
		status = http.StatusNotFound
	case errors.Is(err, errBadSender), errors.Is(err, errBadGrace), errors.Is(err, errBadEnrollKey), errors.Is(err, errBadServiceKey):
		status = http.StatusBadRequest
	default:
		s.log.Error("admin: "+what, append(attrs, "err", err)...)
	}
	http.Error(w, err.Error(), status)
}

// DrainResult says how many XMPP connections a drain closed.
type DrainResult struct {
	Drained int `json:"drained"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// AdminConfig configures OpenAdmin.
type AdminConfig struct {
	DataDir string
	// NATS, in place of DataDir, manages a cluster's state: no node needs
	// to run, and what concerns a device reaches its session on whichever
	// node holds it.
	NATS *NATSConfig
	// Create makes the data directory and the store when there are none,
	// so that senders can be added before the server first runs.
	Create bool
	// Now is the clock for creation times; default time.Now.
	Now func() time.Time
}

// Admin manages the senders of a data directory: through the admin socket
// of the server running on it, or in its store directly when none runs; or
// those of a cluster, in its state.
type Admin struct {
	client *http.Client  // through the socket, or nil
	store  store.Backend // directly, or nil
	// cluster, with NATS, tells the node holding a device's session of a
	// change, and closes the connection with Close.
	cluster *adminCluster
	now     func() time.Time
}

// OpenAdmin connects to the server running on cfg.DataDir or, when its
// admin socket does not answer, opens the store itself. A store locked by
// a server that does not answer fails within a second.
func OpenAdmin(ctx context.Context, cfg AdminConfig) (*Admin, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.NATS != nil {
		c, err := openAdminCluster(ctx, *cfg.NATS)
		if err != nil {
			return nil, fmt.Errorf("open admin: %w", err)
		}
		return &Admin{store: c.st, cluster: c, now: cfg.Now}, nil
	}
	sock := filepath.Join(cfg.DataDir, adminSocketFile)
	var dialer net.Dialer
	if conn, err := dialer.DialContext(ctx, "unix", sock); err == nil {
		conn.Close()
		transport := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", sock)
		}}
		return &Admin{client: &http.Client{Transport: transport, Timeout: 30 * time.Second}, now: cfg.Now}, nil
	}
	path := filepath.Join(cfg.DataDir, storeFile)
	if cfg.Create {
		if err := prepareDataDir(cfg.DataDir); err != nil {
			return nil, fmt.Errorf("open admin: %w", err)
		}
	} else if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("open admin: %s: %w", cfg.DataDir, ErrNoStore)
	}
	st, err := store.Open(path, store.Options{LockTimeout: 500 * time.Millisecond})
	if errors.Is(err, store.ErrLocked) {
		return nil, fmt.Errorf("open admin: a server holds %s but does not answer on %s: %w", path, sock, err)
	}
	if err != nil {
		return nil, fmt.Errorf("open admin: %w", err)
	}
	return &Admin{store: st, now: cfg.Now}, nil
}

// Close releases the store or the socket connections.
func (a *Admin) Close() error {
	if a.cluster != nil {
		a.cluster.close()
		return nil
	}
	if a.store != nil {
		return a.store.Close()
	}
	a.client.CloseIdleConnections()
	return nil
}

// ViaSocket reports whether a running server handles the requests.
func (a *Admin) ViaSocket() bool { return a.client != nil }

// ReachesSessions reports whether a change to a device reaches its live
// session at once: through a running server, or through a cluster.
func (a *Admin) ReachesSessions() bool { return a.client != nil || a.cluster != nil }

// AddSender creates a sender with a new ID and server key. webhook may be
// empty.
func (a *Admin) AddSender(ctx context.Context, name, webhook string) (NewSender, error) {
	if a.store != nil {
		snd, err := addSender(ctx, a.store, name, webhook, a.now())
		if err != nil {
			return NewSender{}, fmt.Errorf("add sender: %w", err)
		}
		return snd, nil
	}
	body, _ := json.Marshal(map[string]string{"name": name, "webhook": webhook})
	var snd NewSender
	if err := a.call(ctx, http.MethodPost, "/senders", body, http.StatusCreated, &snd); err != nil {
		return NewSender{}, fmt.Errorf("add sender: %w", err)
	}
	return snd, nil
}

// Senders lists the senders ordered by ID.
func (a *Admin) Senders(ctx context.Context) ([]SenderInfo, error) {
	if a.store != nil {
		return listSenders(ctx, a.store)
	}
	var list []SenderInfo
	if err := a.call(ctx, http.MethodGet, "/senders", nil, http.StatusOK, &list); err != nil {
		return nil, fmt.Errorf("list senders: %w", err)
	}
	return list, nil
}

// RemoveSender deletes a sender; its key stops working at once. It wraps
// ErrNoSender when there is no such sender.
func (a *Admin) RemoveSender(ctx context.Context, id string) error {
	if a.store != nil {
		return removeSender(ctx, a.store, id)
	}
	err := a.call(ctx, http.MethodDelete, "/senders/"+url.PathEscape(id), nil, http.StatusNoContent, nil)
	if err != nil {
		return fmt.Errorf("remove sender %s: %w", id, err)
	}
	return nil
}

// RotateToken replaces the registration token token with a new one; the
// old one keeps working for grace, answered with the new one as its
// canonical ID. The device is told at once when it is connected to a
// running server, else when it next connects. It wraps ErrNoToken when
// token is not an active registration.
func (a *Admin) RotateToken(ctx context.Context, token string, grace time.Duration) (RotatedToken, error) {
	if a.store != nil {
		reg, rotated, err := rotateToken(ctx, a.store, token, grace, a.now())
		if err == nil && a.cluster != nil {
			a.cluster.devices.Kick(reg.Device)
		}
		return rotated, err
	}
	body, _ := json.Marshal(map[string]any{"token": token, "grace_seconds": int64(grace / time.Second)})
	var rotated RotatedToken
	if err := a.call(ctx, http.MethodPost, "/tokens/rotate", body, http.StatusOK, &rotated); err != nil {
		return RotatedToken{}, fmt.Errorf("rotate token: %w", err)
	}
	return rotated, nil
}

// RotateSenderKey gives sender id a new server key and returns it; the
// old key keeps working for grace (0: it stops at once). It wraps
// ErrNoSender when there is no such sender.
func (a *Admin) RotateSenderKey(ctx context.Context, id string, grace time.Duration) (NewSender, error) {
	if a.store != nil {
		return rotateSenderKey(ctx, a.store, id, grace, a.now())
	}
	body, _ := json.Marshal(map[string]any{"grace_seconds": int64(grace / time.Second)})
	var snd NewSender
	if err := a.call(ctx, http.MethodPost, "/senders/"+url.PathEscape(id)+"/key", body, http.StatusOK, &snd); err != nil {
		return NewSender{}, fmt.Errorf("rotate key of sender %s: %w", id, err)
	}
	return snd, nil
}

// DrainXMPP sends every XMPP connection of the running server a
// CONNECTION_DRAINING control message and closes each once the app server
// has answered what is outstanding on it. App servers reconnect; the
// endpoint keeps taking new connections.
func (a *Admin) DrainXMPP(ctx context.Context) (DrainResult, error) {
	if a.cluster != nil {
		return DrainResult{}, fmt.Errorf("drain xmpp connections: %w", ErrPerNode)
	}
	if a.store != nil {
		return DrainResult{}, fmt.Errorf("drain xmpp connections: %w", ErrNotServing)
	}
	var res DrainResult
	if err := a.call(ctx, http.MethodPost, "/xmpp/drain", nil, http.StatusOK, &res); err != nil {
		return DrainResult{}, fmt.Errorf("drain xmpp connections: %w", err)
	}
	return res, nil
}

// notFound is what a 404 of the admin socket means, by the path asked.
var notFound = []struct {
	path string
	err  error
}{{"/senders/", ErrNoSender}, {"/tokens/rotate", ErrNoToken}, {"/devices/", ErrNoDevice}, {"/enroll-keys/", ErrNoEnrollKey}}

// call makes one request on the admin socket.
func (a *Admin) call(ctx context.Context, method, path string, body []byte, want int, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, "http://tether-server"+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := a.client.Do(req)
	if err != nil {
		return fmt.Errorf("admin socket: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != want {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
		text := strings.TrimSpace(string(msg))
		if resp.StatusCode == http.StatusNotFound {
			if strings.Contains(text, ErrNoServiceKey.Error()) {
				return ErrNoServiceKey
			}
			for _, nf := range notFound {
				if strings.HasPrefix(path, nf.path) {
					return nf.err
				}
			}
		}
		if resp.StatusCode == http.StatusConflict && path == "/xmpp/drain" {
			return ErrNoXMPP
		}
		return fmt.Errorf("server answered %s: %s", resp.Status, text)
	}
	if out != nil {
		if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
			return fmt.Errorf("decode server answer: %w", err)
		}
	}
	return nil
}
