// SPDX-License-Identifier: Apache-2.0

// Package testpki makes a private certificate authority and a server
// certificate for 127.0.0.1 signed by it, as PEM files, and client
// certificates for devices, for tests that run Tether over TLS. It is for
// tests only: keys are made fresh each time and the certificates last a
// day.
package testpki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files names what Write wrote, with the CA as a pool for clients.
type Files struct {
	CA   string // the CA certificate, as an agent's --ca-file
	Cert string // the server certificate, as --tls-cert
	Key  string // the server key, as --tls-key
	Pool *x509.CertPool

	ca    *x509.Certificate
	caKey *ecdsa.PrivateKey
	dir   string
	// serial numbers the certificates Client makes.
	serial int64
}

// Client makes a client certificate signed by the CA, with name as its
// subject's common name (none when empty), and writes it and its key as
// PEM files named after file in the directory of the CA.
func (f *Files) Client(name, file string) (cert, key string, err error) {
	f.serial++
	cert, key = filepath.Join(f.dir, file+".pem"), filepath.Join(f.dir, file+".key")
	return cert, key, issue(clientTemplate(name, 100+f.serial), f.ca, f.caKey, cert, key)
}

// WriteClient creates a self-signed client certificate with common name
// cn, and its key, in dir as cn.pem and cn.key: what a device presents
// for mutual TLS, to a server that trusts the certificate itself or asks
// for any.
func WriteClient(dir, cn string) (cert, key string, err error) {
	tmpl := clientTemplate(cn, 3)
	tmpl.KeyUsage |= x509.KeyUsageCertSign
	tmpl.BasicConstraintsValid, tmpl.IsCA = true, true
	cert, key = filepath.Join(dir, cn+".pem"), filepath.Join(dir, cn+".key")
	return cert, key, issue(tmpl, nil, nil, cert, key)
}

func clientTemplate(cn string, serial int64) *x509.Certificate {
	now := time.Now()
	return &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: cn},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
}

// issue makes a key and a certificate of tmpl for it, signed by parent
// with parentKey, or by itself when parent is nil, and writes them as PEM
// files cert and key.
func issue(tmpl, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, cert, key string) error {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("test key: %w", err)
	}
	if parent == nil {
		parent, parentKey = tmpl, k
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &k.PublicKey, parentKey)
	if err != nil {
		return fmt.Errorf("test certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		return fmt.Errorf("test key: %w", err)
	}
	if err := writePEM(cert, "CERTIFICATE", der); err != nil {
		return err
	}
	return writePEM(key, "EC PRIVATE KEY", keyDER)
}

func writePEM(path, typ string, der []byte) error {
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Write creates a CA and a server certificate for 127.0.0.1 in dir.
func Write(dir string) (Files, error) {
	return WriteFor(dir, net.IPv4(127, 0, 0, 1))
}

// WriteFor creates a CA and a server certificate for the addresses ips
// (the first is its common name) in dir.
func WriteFor(dir string, ips ...net.IP) (Files, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, fmt.Errorf("test CA key: %w", err)
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "Tether test CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return Files{}, fmt.Errorf("test CA certificate: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return Files{}, fmt.Errorf("test CA certificate: %w", err)
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return Files{}, fmt.Errorf("test server key: %w", err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: ips[0].String()},
		IPAddresses:  ips,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return Files{}, fmt.Errorf("test server certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(srvKey)
	if err != nil {
		return Files{}, fmt.Errorf("test server key: %w", err)
	}
	f := Files{CA: filepath.Join(dir, "ca.pem"), Cert: filepath.Join(dir, "server.pem"), Key: filepath.Join(dir, "server.key"), Pool: x509.NewCertPool(),
		ca: ca, caKey: caKey, dir: dir}
	f.Pool.AddCert(ca)
	for _, w := range []struct {
		path, typ string
		der       []byte
	}{{f.CA, "CERTIFICATE", caDER}, {f.Cert, "CERTIFICATE", srvDER}, {f.Key, "EC PRIVATE KEY", keyDER}} {
		if err := writePEM(w.path, w.typ, w.der); err != nil {
			return Files{}, err
		}
	}
	return f, nil
}
