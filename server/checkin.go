// SPDX-License-Identifier: Apache-2.0

package server

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"os"
	"time"

	"github.com/gorilla/websocket"

	"tether/server/internal/clientip"
	"tether/server/store"
	"tether/wire"
)

// How devices enroll (docs/security.md): with a per-device enrollment key
// (tether-server enroll create), the fleet-wide key (Config.EnrollKey), a
// client certificate from Config.DeviceCA, or, only when the operator says
// so, with nothing at all (Config.OpenEnrollment).

// MinEnrollKeyLen is the shortest fleet-wide enrollment key New takes: 22
// base64 characters carry 128 bits.
const MinEnrollKeyLen = 22

// ErrNoEnrollment refuses to start a server that no device could enroll
// with, unless open enrollment was asked for.
var ErrNoEnrollment = errors.New("no way for devices to enroll: create enrollment keys (tether-server enroll create), give a fleet key (--enroll-key) or a device CA (--device-ca), or allow anyone with --open-enrollment")

// How a device enrolled, as Device.EnrolledBy records it.
const (
	enrolledByFleet = "fleet"
	enrolledByCert  = "cert"
	enrolledByOpen  = "open"
	enrolledByKey   = "key:" // and the key's ID
)

// peer is where a device connection comes from.
type peer struct {
	addr netip.Addr
	// cert is the client certificate, verified against Config.DeviceCA.
	cert *x509.Certificate
}

// key names the peer's client in the per-address limits.
func (p peer) key() string { return clientip.Key(p.addr).String() }

func (s *Server) peerOf(r *http.Request) peer {
	p := peer{addr: s.clientAddr(r)}
	if r.TLS != nil && len(r.TLS.VerifiedChains) > 0 {
		p.cert = r.TLS.VerifiedChains[0][0]
	}
	return p
}

// certIdentity is the identity a client certificate binds its device to:
// its subject's common name when it has one, as device CAs name devices,
// else its public key. A certificate renewed for the same name keeps the
// identity; so does a device after a factory reset.
func certIdentity(c *x509.Certificate) string {
	if c.Subject.CommonName != "" {
		return "cn:" + c.Subject.CommonName
	}
	h := sha256.Sum256(c.RawSubjectPublicKeyInfo)
	return "spki:" + hex.EncodeToString(h[:])
}

// loadDeviceCA reads the PEM file of the CAs whose certificates devices
// may enroll with.
func loadDeviceCA(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read device CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("read device CA: %s holds no PEM certificate", path)
	}
	return pool, nil
}

// checkEnrollment refuses, at start, a server no device could enroll
// with, and a fleet key too short to be one.
func (s *Server) checkEnrollment(ctx context.Context) error {
	if k := s.cfg.EnrollKey; k != "" && len(k) < MinEnrollKeyLen {
		return fmt.Errorf("the enrollment key is %d characters; use at least %d (128 bits), such as a key of tether-server enroll create or the output of openssl rand -base64 32", len(k), MinEnrollKeyLen)
	}
	if s.cfg.EnrollKey != "" || s.cfg.DeviceCA != "" || s.cfg.OpenEnrollment {
		return nil
	}
	keys, err := s.store.EnrollKeys(ctx)
	if err != nil {
		return fmt.Errorf("look for enrollment keys: %w", err)
	}
	if len(keys) == 0 {
		return ErrNoEnrollment
	}
	return nil
}

func unauthorized(message string) refusal {
	return refusal{code: wire.CodeUnauthorized, message: message, closeCode: websocket.ClosePolicyViolation}
}

func revoked(message string) refusal {
	return refusal{code: wire.CodeRevoked, message: message, closeCode: websocket.ClosePolicyViolation}
}

// checkInGoAway is the goaway of an address that checks in too often.
func checkInGoAway() *wire.GoAway {
	return &wire.GoAway{RetryAfter: spreadSeconds(time.Minute), Reason: "too many check-ins from this address"}
}

// checkIn creates a device for a hello without credentials, if it
// enrolls: with a client certificate, the fleet key, a usable enrollment
// key, or with nothing under open enrollment. It returns the device and
// its secret, or a refusal.
func (s *Server) checkIn(ctx context.Context, hello wire.Hello, p peer) (store.Device, string, error) {
	now := s.now()
	dev := store.Device{Created: now, LastSeen: now, Agent: hello.Agent, PowerMode: powerMode(hello.Mode)}
	fleet := s.cfg.EnrollKey != "" && sameSecret(hello.EnrollKey, s.cfg.EnrollKey)
	switch {
	case p.cert != nil:
		dev.CertID, dev.EnrolledBy = certIdentity(p.cert), enrolledByCert
	case fleet:
		dev.EnrolledBy = enrolledByFleet
	case hello.EnrollKey == "" && s.cfg.OpenEnrollment:
		dev.EnrolledBy = enrolledByOpen
	case hello.EnrollKey == "":
		return store.Device{}, "", unauthorized("check-in needs an enrollment key or a device certificate")
	}
	if s.checkIns.exhausted(ctx, p.key()) {
		return store.Device{}, "", refusal{wire.CodeUnavailable, "too many check-ins from this address", websocket.CloseTryAgainLater, checkInGoAway()}
	}
	var key store.EnrollKey
	if dev.EnrolledBy == "" {
		var err error
		key, err = s.store.SpendEnrollKey(ctx, hashSecret(hello.EnrollKey), now)
		switch {
		case errors.Is(err, store.ErrNotFound):
			return store.Device{}, "", unauthorized("the enrollment key is not one of the server's, or it is spent, expired or revoked")
		case err != nil:
			s.log.Error("check in device: spend enrollment key", "err", err)
			return store.Device{}, "", refusal{wire.CodeUnavailable, "cannot read the enrollment keys now; try again later", websocket.CloseTryAgainLater, s.storeGoAway()}
		}
		dev.EnrolledBy = enrolledByKey + key.ID
	}
	s.checkIns.allow(ctx, p.key())
	secret := newSecret(32)
	dev.SecretHash = hashSecret(secret)
	added, err := s.store.AddDevice(ctx, dev)
	if err != nil && key.ID != "" {
		if err := s.store.RefundEnrollKey(ctx, key.ID); err != nil {
			s.log.Warn("check in device: a use of its enrollment key stays spent", "key", key.ID, "err", err)
		}
	}
	switch {
	case errors.Is(err, store.ErrRevoked):
		return store.Device{}, "", revoked("the device certificate was revoked")
	case err != nil:
		s.log.Error("check in device", "err", err)
		return store.Device{}, "", refusal{wire.CodeUnavailable, "cannot store a new device now; try again later", websocket.CloseTryAgainLater, s.storeGoAway()}
	}
	return added, secret, nil
}

// authenticateDevice checks the credentials of a hello: the device exists,
// the secret is its own, it is not revoked, and a device bound to a
// certificate presents it.
func (s *Server) authenticateDevice(ctx context.Context, hello wire.Hello, p peer) (store.Device, error) {
	dev, err := s.store.Device(ctx, hello.DeviceID)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return store.Device{}, unauthorized("unknown device or wrong secret")
	case err != nil:
		s.log.Error("read device", "device", hello.DeviceID, "err", err)
		return store.Device{}, refusal{wire.CodeUnavailable, "cannot read the device store now; try again later", websocket.CloseTryAgainLater, s.storeGoAway()}
	case !sameHash(dev.SecretHash, hashSecret(hello.DeviceSecret)):
		return store.Device{}, unauthorized("unknown device or wrong secret")
	case !dev.Revoked.IsZero():
		return store.Device{}, revoked("the device was revoked")
	case dev.CertID != "" && (p.cert == nil || certIdentity(p.cert) != dev.CertID):
		return store.Device{}, unauthorized("the device is bound to its certificate; present it")
	}
	return dev, nil
}

// throttle answers a refusal of credentials from an address that has had
// too many lately with a goaway in its place, so that an agent waits
// before it tries again; it counts the refusal against the address.
// Credentials that are right are never refused this way: only failures
// count, and only failures are slowed.
func (s *Server) throttle(ctx context.Context, p peer, ref refusal) refusal {
	if ref.code != wire.CodeUnauthorized && ref.code != wire.CodeRevoked {
		return ref
	}
	if !s.enrollFailures.allow(ctx, p.key()) {
		ref.goAway = &wire.GoAway{RetryAfter: spreadSeconds(time.Minute), Reason: "too many refused attempts from this address"}
		ref.closeCode = websocket.CloseTryAgainLater
	}
	return ref
}
