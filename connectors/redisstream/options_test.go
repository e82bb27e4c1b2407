package redisstream

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestClientOptions(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		o       Options
		wantErr string // "" for none
		wantTLS bool
	}{
		{name: "plain", o: Options{URL: "redis://127.0.0.1:6379/2"}},
		{name: "rediss", o: Options{URL: "rediss://127.0.0.1:6380"}, wantTLS: true},
		{name: "insecure turns TLS on", o: Options{URL: "redis://h:1", TLSInsecureSkipVerify: true}, wantTLS: true},
		{name: "bad scheme, password not shown", o: Options{URL: "http://u:s3cret@h:1"}, wantErr: "url http://u:xxxxx@h:1"},
		{name: "ca not PEM", o: Options{URL: "redis://h:1", TLSCA: notPEM}, wantErr: "no PEM certificate"},
		{name: "ca missing", o: Options{URL: "redis://h:1", TLSCA: filepath.Join(dir, "none.pem")}, wantErr: "tls_ca"},
		{name: "cert without key", o: Options{URL: "redis://h:1", TLSCert: notPEM}, wantErr: "tls_cert needs its key"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.EnsureDefaults()
			ro, err := tc.o.clientOptions("n")
			if tc.wantErr != "" {
				if err == nil || !errors.Is(err, ErrConfig) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want ErrConfig with %q", err, tc.wantErr)
				}
				if strings.Contains(err.Error(), "s3cret") {
					t.Errorf("the password is in the error: %v", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (ro.TLSConfig != nil) != tc.wantTLS || !ro.ContextTimeoutEnabled || ro.ClientName != "flowrun-n" {
				t.Errorf("options: tls %v, context timeouts %v, name %q", ro.TLSConfig != nil, ro.ContextTimeoutEnabled, ro.ClientName)
			}
		})
	}
}
