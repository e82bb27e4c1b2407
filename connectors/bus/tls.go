package bus

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"

	"github.com/flowrun/flowrun/component"
)

// ErrTLS reports TLS options that cannot work: a missing or unreadable
// file, a certificate without its key.
var ErrTLS = errors.New("bad TLS options")

// TLS holds the TLS options every bus connector takes: tls_ca,
// tls_cert, tls_key and tls_insecure_skip_verify.
type TLS struct {
	// CA is a PEM file of the certificate authorities to trust; "" for
	// the system's.
	CA string
	// Cert and Key are PEM files of a client certificate and its key:
	// both or neither.
	Cert, Key string
	// InsecureSkipVerify skips verifying the server's certificate.
	InsecureSkipVerify bool
}

// TLSOptions reads the TLS options of c.
func TLSOptions(c *component.Config) TLS {
	return TLS{CA: c.String("tls_ca"), Cert: c.String("tls_cert"), Key: c.String("tls_key"),
		InsecureSkipVerify: c.Bool("tls_insecure_skip_verify")}
}

// Set tells whether any TLS option is set.
func (t TLS) Set() bool { return t.CA != "" || t.Cert != "" || t.Key != "" || t.InsecureSkipVerify }

// Config returns the TLS configuration of the options (TLS 1.2 at
// least), or nil when none is set. The files are read now, so a missing
// one is reported when the flow is loaded. Errors match ErrTLS and name the
// option.
func (t TLS) Config() (*tls.Config, error) {
	if !t.Set() {
		return nil, nil
	}
	c := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: t.InsecureSkipVerify} //nolint:gosec // the user's explicit choice
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("%w: tls_ca: %w", ErrTLS, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%w: tls_ca: %s holds no PEM certificate", ErrTLS, t.CA)
		}
		c.RootCAs = pool
	}
	switch {
	case t.Cert != "" && t.Key == "":
		return nil, fmt.Errorf("%w: tls_cert needs its key: set tls_key too", ErrTLS)
	case t.Key != "" && t.Cert == "":
		return nil, fmt.Errorf("%w: tls_key needs its certificate: set tls_cert too", ErrTLS)
	case t.Cert != "":
		pair, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("%w: tls_cert and tls_key: %w", ErrTLS, err)
		}
		c.Certificates = []tls.Certificate{pair}
	}
	return c, nil
}
