// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"

	"tether/server/store"
)

// The administration of devices and of the enrollment keys they check in
// with: the same operations through the admin socket of a running server,
// in a stopped server's store, or in a cluster's state.

var (
	// ErrNoDevice is returned for a device that does not exist.
	ErrNoDevice = errors.New("no such device")
	// ErrNoEnrollKey is returned for an enrollment key that does not
	// exist.
	ErrNoEnrollKey = errors.New("no such enrollment key")
	// errBadEnrollKey marks uses or a lifetime out of range.
	errBadEnrollKey = errors.New("bad enrollment key")
)

// MaxEnrollKeyUses bounds the devices one enrollment key may enroll.
const MaxEnrollKeyUses = 1_000_000

// NewEnrollKey is an enrollment key just made, with the key itself: only
// its hash is stored, and this is the one time it is shown.
type NewEnrollKey struct {
	ID      string    `json:"id"`
	Key     string    `json:"key"`
	Uses    int       `json:"uses"`
	Expires time.Time `json:"expires,omitzero"`
}

// EnrollKeyInfo describes an enrollment key, never the key itself.
type EnrollKeyInfo struct {
	ID      string    `json:"id"`
	Uses    int       `json:"uses"`
	Used    int       `json:"used"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires,omitzero"`
	// Usable says whether it still enrolls a device: not spent, expired
	// or revoked.
	Usable  bool      `json:"usable"`
	Revoked time.Time `json:"revoked,omitzero"`
}

// DeviceInfo describes a device: never its secret, nor its tokens.
type DeviceInfo struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	// LastSeen is when a session of it was last noted, to within the
	// server's SeenInterval.
	LastSeen      time.Time `json:"last_seen"`
	Agent         string    `json:"agent"`
	PowerMode     string    `json:"power_mode"`
	Registrations int       `json:"registrations"`
	Revoked       bool      `json:"revoked"`
	RevokedAt     time.Time `json:"revoked_at,omitzero"`
	// EnrolledBy is how it checked in: "key:ID", "fleet", "cert" or
	// "open".
	EnrolledBy string `json:"enrolled_by,omitempty"`
	// CertID is the certificate identity it is bound to.
	CertID string `json:"cert_id,omitempty"`
}

func deviceInfo(d store.DeviceInfo) DeviceInfo {
	return DeviceInfo{
		ID: d.ID, Created: d.Created, LastSeen: d.SeenAt(), Agent: d.Agent, PowerMode: d.PowerMode,
		Registrations: d.Registrations, Revoked: !d.Revoked.IsZero(), RevokedAt: d.Revoked,
		EnrolledBy: d.EnrolledBy, CertID: d.CertID,
	}
}

func addEnrollKey(ctx context.Context, st store.Backend, uses int, lifetime time.Duration, now time.Time) (NewEnrollKey, error) {
	if uses < 1 || uses > MaxEnrollKeyUses {
		return NewEnrollKey{}, fmt.Errorf("%w: %d uses, want 1 to %d", errBadEnrollKey, uses, MaxEnrollKeyUses)
	}
	if lifetime < 0 {
		return NewEnrollKey{}, fmt.Errorf("%w: a negative lifetime", errBadEnrollKey)
	}
	key := newSecret(32)
	k := store.EnrollKey{Hash: hashSecret(key), Uses: uses, Created: now.UTC()}
	if lifetime > 0 {
		k.Expires = now.Add(lifetime).UTC()
	}
	k, err := st.AddEnrollKey(ctx, k)
	if err != nil {
		return NewEnrollKey{}, err
	}
	return NewEnrollKey{ID: k.ID, Key: key, Uses: k.Uses, Expires: k.Expires}, nil
}

func listEnrollKeys(ctx context.Context, st store.Backend, now time.Time) ([]EnrollKeyInfo, error) {
	keys, err := st.EnrollKeys(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]EnrollKeyInfo, 0, len(keys))
	for _, k := range keys {
		out = append(out, EnrollKeyInfo{ID: k.ID, Uses: k.Uses, Used: k.Used, Created: k.Created, Expires: k.Expires, Usable: k.Usable(now), Revoked: k.Revoked})
	}
	return out, nil
}

func revokeEnrollKey(ctx context.Context, st store.Backend, id string, now time.Time) error {
	err := st.RevokeEnrollKey(ctx, id, now)
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("revoke enrollment key %.40s: %w", id, ErrNoEnrollKey)
	}
	return err
}

func listDevices(ctx context.Context, st store.Backend) ([]DeviceInfo, error) {
	devices, err := st.Devices(ctx)
	if err != nil {
		return nil, err
	}
	out := make([]DeviceInfo, 0, len(devices))
	for _, d := range devices {
		out = append(out, deviceInfo(d))
	}
	return out, nil
}

func showDevice(ctx context.Context, st store.Backend, id string) (DeviceInfo, error) {
	d, err := st.DeviceInfo(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return DeviceInfo{}, fmt.Errorf("device %.40s: %w", id, ErrNoDevice)
	}
	if err != nil {
		return DeviceInfo{}, err
	}
	return deviceInfo(d), nil
}

// endDevice revokes (remove false) or removes a device in the store.
func endDevice(ctx context.Context, st store.Backend, id string, remove bool, now time.Time) error {
	var err error
	if remove {
		_, err = st.RemoveDevice(ctx, id, now)
	} else {
		_, err = st.RevokeDevice(ctx, id, now)
	}
	if errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("device %.40s: %w", id, ErrNoDevice)
	}
	return err
}

// adminDeviceRoutes adds the device and enrollment key requests to the
// admin socket's mux.
func (s *Server) adminDeviceRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /enroll-keys", func(w http.ResponseWriter, r *http.Request) {
		list, err := listEnrollKeys(r.Context(), s.store, s.now())
		if err != nil {
			s.failAdmin(w, "list enrollment keys", err)
			return
		}
		writeJSON(w, http.StatusOK, list)
	})
	mux.HandleFunc("POST /enroll-keys", func(w http.ResponseWriter, r *http.Request) {
		var req enrollKeyRequest
		if !decodeAdminRequest(w, r, &req) {
			return
		}
		k, err := addEnrollKey(r.Context(), s.store, req.Uses, secondsDuration(req.ExpiresSeconds), s.now())
		if err != nil {
			s.failAdmin(w, "create enrollment key", err)
			return
		}
		s.log.Info("enrollment key created", "key", k.ID, "uses", k.Uses, "expires", k.Expires)
		writeJSON(w, http.StatusCreated, k)
	})
	mux.HandleFunc("POST /enroll-keys/{id}/revoke", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		if err := revokeEnrollKey(r.Context(), s.store, id, s.now()); err != nil {
			s.failAdmin(w, "revoke enrollment key", err, "key", id)
			return
		}
		s.log.Info("enrollment key revoked", "key", id)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("GET /devices", func(w http.ResponseWriter, r *http.Request) {
		list, err := listDevices(r.Context(), s.store)
		if err != nil {
			s.failAdmin(w, "list devices", err)
			return
		}
		writeJSON(w, http.StatusOK, list)
	})
	mux.HandleFunc("GET /devices/{id}", func(w http.ResponseWriter, r *http.Request) {
		d, err := showDevice(r.Context(), s.store, r.PathValue("id"))
		if err != nil {
			s.failAdmin(w, "show device", err)
			return
		}
		writeJSON(w, http.StatusOK, d)
	})
	for _, op := range []struct {
		pattern, done string
		remove        bool
	}{{"POST /devices/{id}/revoke", "device revoked", false}, {"DELETE /devices/{id}", "device removed", true}} {
		mux.HandleFunc(op.pattern, func(w http.ResponseWriter, r *http.Request) {
			id := r.PathValue("id")
			if err := endDevice(r.Context(), s.store, id, op.remove, s.now()); err != nil {
				s.failAdmin(w, op.done, err, "device", id)
				return
			}
			s.hub.end(id)
			s.log.Info(op.done, "device", id)
			w.WriteHeader(http.StatusNoContent)
		})
	}
}

type enrollKeyRequest struct {
	Uses           int   `json:"uses"`
	ExpiresSeconds int64 `json:"expires_seconds"`
}

// CreateEnrollKey makes an enrollment key for uses devices, which ends
// after lifetime unless that is 0.
func (a *Admin) CreateEnrollKey(ctx context.Context, uses int, lifetime time.Duration) (NewEnrollKey, error) {
	if a.store != nil {
		k, err := addEnrollKey(ctx, a.store, uses, lifetime, a.now())
		if err != nil {
			return NewEnrollKey{}, fmt.Errorf("create enrollment key: %w", err)
		}
		return k, nil
	}
	body, _ := json.Marshal(enrollKeyRequest{Uses: uses, ExpiresSeconds: int64(lifetime / time.Second)})
	var k NewEnrollKey
	if err := a.call(ctx, http.MethodPost, "/enroll-keys", body, http.StatusCreated, &k); err != nil {
		return NewEnrollKey{}, fmt.Errorf("create enrollment key: %w", err)
	}
	return k, nil
}

// EnrollKeys lists the enrollment keys ordered by ID.
func (a *Admin) EnrollKeys(ctx context.Context) ([]EnrollKeyInfo, error) {
	if a.store != nil {
		return listEnrollKeys(ctx, a.store, a.now())
	}
	var list []EnrollKeyInfo
	if err := a.call(ctx, http.MethodGet, "/enroll-keys", nil, http.StatusOK, &list); err != nil {
		return nil, fmt.Errorf("list enrollment keys: %w", err)
	}
	return list, nil
}

// RevokeEnrollKey ends an enrollment key; the devices it enrolled stay.
// It wraps ErrNoEnrollKey when there is no such key.
func (a *Admin) RevokeEnrollKey(ctx context.Context, id string) error {
	if a.store != nil {
		return revokeEnrollKey(ctx, a.store, id, a.now())
	}
	if err := a.call(ctx, http.MethodPost, "/enroll-keys/"+url.PathEscape(id)+"/revoke", nil, http.StatusNoContent, nil); err != nil {
		return fmt.Errorf("revoke enrollment key %.40s: %w", id, err)
	}
	return nil
}

// Devices lists the devices ordered by ID.
func (a *Admin) Devices(ctx context.Context) ([]DeviceInfo, error) {
	if a.store != nil {
		return listDevices(ctx, a.store)
	}
	var list []DeviceInfo
	if err := a.call(ctx, http.MethodGet, "/devices", nil, http.StatusOK, &list); err != nil {
		return nil, fmt.Errorf("list devices: %w", err)
	}
	return list, nil
}

// Device describes one device. It wraps ErrNoDevice when there is none.
func (a *Admin) Device(ctx context.Context, id string) (DeviceInfo, error) {
	if a.store != nil {
		return showDevice(ctx, a.store, id)
	}
	var d DeviceInfo
	if err := a.call(ctx, http.MethodGet, "/devices/"+url.PathEscape(id), nil, http.StatusOK, &d); err != nil {
		return DeviceInfo{}, fmt.Errorf("device %.40s: %w", id, err)
	}
	return d, nil
}

// RevokeDevice revokes a device: its session ends at once when a running
// server or a cluster holds it, its next hellos are refused, and its
// tokens answer NotRegistered. It wraps ErrNoDevice when there is none.
func (a *Admin) RevokeDevice(ctx context.Context, id string) error {
	return a.endDevice(ctx, id, false, "/devices/"+url.PathEscape(id)+"/revoke", http.MethodPost)
}

// RemoveDevice deletes a device with its registrations and queues; its
// session ends as on RevokeDevice. It wraps ErrNoDevice when there is
// none.
func (a *Admin) RemoveDevice(ctx context.Context, id string) error {
	return a.endDevice(ctx, id, true, "/devices/"+url.PathEscape(id), http.MethodDelete)
}

func (a *Admin) endDevice(ctx context.Context, id string, remove bool, path, method string) error {
	if a.store != nil {
		err := endDevice(ctx, a.store, id, remove, a.now())
		if err == nil && a.cluster != nil {
			a.cluster.devices.End(id)
		}
		return err
	}
	if err := a.call(ctx, method, path, nil, http.StatusNoContent, nil); err != nil {
		return fmt.Errorf("device %.40s: %w", id, err)
	}
	return nil
}
