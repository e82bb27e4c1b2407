package bus

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestTLSConfig(t *testing.T) {
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		tls     TLS
		wantNil bool
		wantErr string // "" for no error
	}{
		{name: "none", tls: TLS{}, wantNil: true},
		{name: "insecure", tls: TLS{InsecureSkipVerify: true}},
		{name: "missing ca", tls: TLS{CA: filepath.Join(t.TempDir(), "absent.pem")}, wantErr: "tls_ca"},
		{name: "ca not PEM", tls: TLS{CA: notPEM}, wantErr: "holds no PEM certificate"},
		{name: "cert without key", tls: TLS{Cert: notPEM}, wantErr: "tls_cert needs its key"},
		{name: "key without cert", tls: TLS{Key: notPEM}, wantErr: "tls_key needs its certificate"},
		{name: "bad pair", tls: TLS{Cert: notPEM, Key: notPEM}, wantErr: "tls_cert and tls_key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := tc.tls.Config()
			if tc.wantErr != "" {
				if !errors.Is(err, ErrTLS) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Config() error %v, want ErrTLS with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (c == nil) != tc.wantNil {
				t.Fatalf("Config() = %v, want nil: %v", c, tc.wantNil)
			}
			if c != nil && (c.MinVersion == 0 || c.InsecureSkipVerify != tc.tls.InsecureSkipVerify) {
				t.Errorf("Config() = %+v", c)
			}
		})
	}
}
