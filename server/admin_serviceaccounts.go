// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"tether/server/store"
)

// The administration of senders' service accounts, with which app
// servers use the FCM HTTP v1 API. The private key is made where the
// admin command runs and written to the service-account file; the server
// keeps the public key only.

var (
	// ErrNoServiceKey is returned when revoking a service-account key the
	// sender does not have.
	ErrNoServiceKey = errors.New("no such service-account key")
	// errBadServiceKey marks a public key or public URL that is not
	// acceptable.
	errBadServiceKey = errors.New("bad service-account key")
)

const (
	// serviceKeyBits is the size of the RSA keys made, as Google's.
	serviceKeyBits = 2048
	// maxServiceKeys bounds the keys of one sender, as Google bounds
	// those of a service account.
	maxServiceKeys = 10
)

// ServiceAccount is a service-account file in Google's form, which
// Google's auth libraries and the Firebase Admin SDKs read. PrivateKey is
// shown this one time only.
type ServiceAccount struct {
	Type         string `json:"type"`
	ProjectID    string `json:"project_id"`
	PrivateKeyID string `json:"private_key_id"`
	PrivateKey   string `json:"private_key"`
	ClientEmail  string `json:"client_email"`
	ClientID     string `json:"client_id"`
	TokenURI     string `json:"token_uri"`
}

// ServiceKeyInfo describes a service-account key of a sender, without
// any key material.
type ServiceKeyInfo struct {
	ID       string    `json:"private_key_id"`
	Email    string    `json:"client_email"`
	TokenURI string    `json:"token_uri"`
	Created  time.Time `json:"created"`
}

// newServiceKey is what the admin command hands the server: the public
// half of a key it made.
type newServiceKey struct {
	ID        string `json:"private_key_id"`
	Email     string `json:"client_email"`
	TokenURI  string `json:"token_uri"`
	PublicKey []byte `json:"public_key"`
}

func serviceKeyInfo(k store.ServiceKey) ServiceKeyInfo {
	return ServiceKeyInfo{ID: k.ID, Email: k.Email, TokenURI: k.TokenURI, Created: k.Created}
}

// addServiceKey gives sender id the public key k, with a new secret that
// signs its access tokens.
func addServiceKey(ctx context.Context, st store.Backend, id string, k newServiceKey, now time.Time) (ServiceKeyInfo, error) {
	pub, err := x509.ParsePKIXPublicKey(k.PublicKey)
	if rsaPub, ok := pub.(*rsa.PublicKey); err != nil || !ok || rsaPub.N.BitLen() < serviceKeyBits {
		return ServiceKeyInfo{}, fmt.Errorf("%w: the public key must be RSA of at least %d bits, PKIX DER", errBadServiceKey, serviceKeyBits)
	}
	local, host, _ := strings.Cut(k.Email, "@")
	if k.ID == "" || local != id || host == "" || !strings.HasSuffix(k.TokenURI, "/token") {
		return ServiceKeyInfo{}, fmt.Errorf("%w: key ID, client_email SENDER_ID@HOST and token_uri ORIGIN/token are required", errBadServiceKey)
	}
	key := store.ServiceKey{ID: k.ID, Email: k.Email, TokenURI: k.TokenURI, PublicKey: k.PublicKey, Created: now.UTC(), TokenSecret: []byte(newSecret(32))}
	_, err = updateSender(ctx, st, id, "add service-account key", func(snd *store.Sender) error {
		switch {
		case len(snd.ServiceKeys) >= maxServiceKeys:
			return fmt.Errorf("%w: sender %s has %d keys already; revoke one first", errBadServiceKey, id, len(snd.ServiceKeys))
		case slices.ContainsFunc(snd.ServiceKeys, func(o store.ServiceKey) bool { return o.ID == k.ID }):
			return fmt.Errorf("%w: sender %s has a key %s already", errBadServiceKey, id, k.ID)
		}
		snd.ServiceKeys = append(snd.ServiceKeys, key)
		return nil
	})
	if err != nil {
		return ServiceKeyInfo{}, err
	}
	return serviceKeyInfo(key), nil
}

func listServiceKeys(ctx context.Context, st store.Backend, id string) ([]ServiceKeyInfo, error) {
	snd, err := st.Sender(ctx, id)
	if errors.Is(err, store.ErrNotFound) {
		return nil, fmt.Errorf("list service-account keys of sender %.40s: %w", id, ErrNoSender)
	}
	if err != nil {
		return nil, err
	}
	out := make([]ServiceKeyInfo, 0, len(snd.ServiceKeys))
	for _, k := range snd.ServiceKeys {
		out = append(out, serviceKeyInfo(k))
	}
	return out, nil
}

// revokeServiceKey removes key keyID of sender id: grants signed with it
// and the access tokens it got stop working at once.
func revokeServiceKey(ctx context.Context, st store.Backend, id, keyID string) error {
	_, err := updateSender(ctx, st, id, "revoke service-account key", func(snd *store.Sender) error {
		n := len(snd.ServiceKeys)
		snd.ServiceKeys = slices.DeleteFunc(snd.ServiceKeys, func(k store.ServiceKey) bool { return k.ID == keyID })
		if len(snd.ServiceKeys) == n {
			return fmt.Errorf("revoke key %.60s of sender %.40s: %w", keyID, id, ErrNoServiceKey)
		}
		return nil
	})
	return err
}

// adminServiceKeyRoutes adds the service-account requests to the admin
// socket's mux.
func (s *Server) adminServiceKeyRoutes(mux *http.ServeMux) {
	mux.HandleFunc("POST /senders/{id}/service-keys", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		var req newServiceKey
		if !decodeAdminRequest(w, r, &req) {
			return
		}
		info, err := addServiceKey(r.Context(), s.store, id, req, s.now())
		if err != nil {
			s.failAdmin(w, "add service-account key", err, "sender", id)
			return
		}
		s.log.Info("service-account key added", "sender", id, "service_key", info.ID)
		writeJSON(w, http.StatusCreated, info)
	})
	mux.HandleFunc("GET /senders/{id}/service-keys", func(w http.ResponseWriter, r *http.Request) {
		id := r.PathValue("id")
		list, err := listServiceKeys(r.Context(), s.store, id)
		if err != nil {
			s.failAdmin(w, "list service-account keys", err, "sender", id)
			return
		}
		writeJSON(w, http.StatusOK, list)
	})
	mux.HandleFunc("DELETE /senders/{id}/service-keys/{key}", func(w http.ResponseWriter, r *http.Request) {
		id, key := r.PathValue("id"), r.PathValue("key")
		if err := revokeServiceKey(r.Context(), s.store, id, key); err != nil {
			s.failAdmin(w, "revoke service-account key", err, "sender", id)
			return
		}
		s.log.Info("service-account key revoked", "sender", id, "service_key", key)
		w.WriteHeader(http.StatusNoContent)
	})
}

// AddServiceAccount makes a service-account key for sender id and returns
// the service-account file for it, whose token_uri is under publicURL,
// the URL app servers reach the server at (as serve --public-url). Only
// the public key is stored. It wraps ErrNoSender when there is no such
// sender.
func (a *Admin) AddServiceAccount(ctx context.Context, id, publicURL string) (ServiceAccount, error) {
	origin := publicOrigin(publicURL)
	if origin == "" {
		return ServiceAccount{}, fmt.Errorf("add service account: %w: public URL %q is not https://host[:port] or http://host[:port]", errBadServiceKey, publicURL)
	}
	u, _ := url.Parse(origin)
	priv, err := rsa.GenerateKey(rand.Reader, serviceKeyBits)
	if err != nil {
		return ServiceAccount{}, fmt.Errorf("add service account: make a key: %w", err)
	}
	pkcs8, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return ServiceAccount{}, fmt.Errorf("add service account: encode the key: %w", err)
	}
	pub, err := x509.MarshalPKIXPublicKey(&priv.PublicKey)
	if err != nil {
		return ServiceAccount{}, fmt.Errorf("add service account: encode the public key: %w", err)
	}
	digest := sha256.Sum256(pub)
	k := newServiceKey{ID: hex.EncodeToString(digest[:20]), Email: id + "@" + u.Hostname(), TokenURI: origin + "/token", PublicKey: pub}
	if a.store != nil {
		_, err = addServiceKey(ctx, a.store, id, k, a.now())
	} else {
		body, _ := json.Marshal(k)
		err = a.call(ctx, http.MethodPost, "/senders/"+url.PathEscape(id)+"/service-keys", body, http.StatusCreated, nil)
	}
	if err != nil {
		return ServiceAccount{}, fmt.Errorf("add service account to sender %.40s: %w", id, err)
	}
	return ServiceAccount{
		Type: "service_account", ProjectID: id, PrivateKeyID: k.ID,
		PrivateKey:  string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})),
		ClientEmail: k.Email, ClientID: id, TokenURI: k.TokenURI,
	}, nil
}

// ServiceKeys lists the service-account keys of sender id. It wraps
// ErrNoSender when there is no such sender.
func (a *Admin) ServiceKeys(ctx context.Context, id string) ([]ServiceKeyInfo, error) {
	if a.store != nil {
		return listServiceKeys(ctx, a.store, id)
	}
	var list []ServiceKeyInfo
	if err := a.call(ctx, http.MethodGet, "/senders/"+url.PathEscape(id)+"/service-keys", nil, http.StatusOK, &list); err != nil {
		return nil, fmt.Errorf("list service-account keys of sender %.40s: %w", id, err)
	}
	return list, nil
}

// RevokeServiceKey removes key keyID of sender id; access tokens it got
// stop working at once. It wraps ErrNoSender or ErrNoServiceKey.
func (a *Admin) RevokeServiceKey(ctx context.Context, id, keyID string) error {
	if a.store != nil {
		return revokeServiceKey(ctx, a.store, id, keyID)
	}
	err := a.call(ctx, http.MethodDelete, "/senders/"+url.PathEscape(id)+"/service-keys/"+url.PathEscape(keyID), nil, http.StatusNoContent, nil)
	if err != nil {
		return fmt.Errorf("revoke key %.60s of sender %.40s: %w", keyID, id, err)
	}
	return nil
}
