package etcdstore

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/flowrun/flowrun/component"
)

// TestCheckTLS checks the TLS files are loaded when the flow is, without
// connecting, and refused at their option.
func TestCheckTLS(t *testing.T) {
	dir := t.TempDir()
	notPEM := filepath.Join(dir, "ca.txt")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o644); err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(dir, "fifo.pem")
	if err := syscall.Mkfifo(fifo, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		values map[string]any
		option string // "" for no error
		msg    string
	}{
		{map[string]any{}, "", ""},
		{map[string]any{"tls_cert": notPEM}, "tls_cert", "set tls_key too"},
		{map[string]any{"tls_key": notPEM}, "tls_key", "set tls_cert too"},
		{map[string]any{"tls_cert": notPEM, "tls_key": notPEM}, "tls_cert", "TLS client certificate and key"},
		{map[string]any{"tls_ca": filepath.Join(dir, "missing.pem")}, "tls_ca", "no such file"},
		{map[string]any{"tls_ca": notPEM}, "tls_ca", "holds no PEM certificate"},
		{map[string]any{"tls_ca": fifo}, "tls_ca", "not a regular file"},
	} {
		err := checkTLS(component.NewConfig("store", "kv", tc.values))
		if tc.option == "" {
			if err != nil {
				t.Errorf("%v: %v", tc.values, err)
			}
			continue
		}
		var oe *component.OptionError
		if !errors.As(err, &oe) || oe.Option != tc.option || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%v: %v, want an error at %s containing %q", tc.values, err, tc.option, tc.msg)
		}
	}
}
