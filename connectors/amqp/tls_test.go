package amqp

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// writeCert writes a self-signed certificate and its key (PEM) to dir.
func writeCert(t *testing.T, dir string) (cert, key string) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	return cert, key
}

// TestTLSConfig: the tls_ options give a TLS configuration with the CA and
// client certificate, and are refused when they cannot work.
func TestTLSConfig(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir)
	notPEM := filepath.Join(dir, "not.pem")
	if err := os.WriteFile(notPEM, []byte("hello"), 0o600); err != nil {
		t.Fatal(err)
	}
	const tlsURL = "amqps://u:p@host:5671/"
	for _, tc := range []struct {
		name    string
		o       Options
		wantErr bool
		check   func(t *testing.T, o Options)
	}{
		{"none", Options{URL: "amqp://h/"}, false, func(t *testing.T, o Options) {
			if c, _ := o.tlsConfig(); c != nil {
				t.Error("a TLS config without tls_ options")
			}
		}},
		{"CA and client certificate", Options{URL: tlsURL, TLSCA: cert, TLSCert: cert, TLSKey: key}, false, func(t *testing.T, o Options) {
			c, _ := o.tlsConfig()
			if c == nil || c.RootCAs == nil || len(c.Certificates) != 1 || c.InsecureSkipVerify {
				t.Errorf("config %+v", c)
			}
		}},
		{"tls options with amqp://", Options{URL: "amqp://h/", TLSCA: cert}, true, nil},
		{"certificate without key", Options{URL: tlsURL, TLSCert: cert}, true, nil},
		{"key without certificate", Options{URL: tlsURL, TLSKey: key}, true, nil},
		{"CA not PEM", Options{URL: tlsURL, TLSCA: notPEM}, true, nil},
		{"CA missing", Options{URL: tlsURL, TLSCA: filepath.Join(dir, "nope.pem")}, true, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.o.tlsConfig()
			if tc.wantErr != (err != nil) || (err != nil && !errors.Is(err, ErrTLS)) {
				t.Fatalf("error %v, want one: %v", err, tc.wantErr)
			}
			if tc.check != nil {
				tc.check(t, tc.o)
			}
		})
	}
}
