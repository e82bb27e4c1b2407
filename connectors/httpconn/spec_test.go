package httpconn_test

import (
	"context"
	"testing"
	"time"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/httpconn"
	"github.com/flowrun/flowrun/pipeline"
)

// TestClientSpecOptions checks how flow options become ClientOptions:
// max_retries 0 means no retry (not the default), basic auth, headers.
func TestClientSpecOptions(t *testing.T) {
	spec := httpconn.ClientSpec()
	tests := []struct {
		name   string
		values map[string]any
		check  func(o httpconn.ClientOptions) bool
	}{
		{"max_retries 0 is no retry", map[string]any{"max_retries": 0}, func(o httpconn.ClientOptions) bool { return o.NoRetry }},
		{"default retries", map[string]any{}, func(o httpconn.ClientOptions) bool {
			return !o.NoRetry && o.MaxRetries == httpconn.DefaultMaxRetries
		}},
		{"basic auth", map[string]any{"basic_auth_user": "u", "basic_auth_password": "p"}, func(o httpconn.ClientOptions) bool {
			return o.BasicAuth != nil && o.BasicAuth.User == "u" && o.BasicAuth.Password == "p"
		}},
		{"headers and timeout", map[string]any{"headers": map[string]string{"X-A": "1"}, "timeout": 2 * time.Second}, func(o httpconn.ClientOptions) bool {
			return o.Headers["X-A"] == "1" && o.Timeout == 2*time.Second
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.values["url"] = "http://127.0.0.1:1/x"
			c := component.NewConfig("call", "http_client", tt.values)
			if err := spec.Check(c); err != nil {
				t.Fatal(err)
			}
			comp, err := spec.Build(context.Background(), &component.Env{}, c)
			if err != nil {
				t.Fatal(err)
			}
			cl := comp.Processor.(*httpconn.Client)
			defer cl.Close(context.Background())
			if o := cl.Options(); !tt.check(o) {
				t.Fatalf("options %+v", o)
			}
		})
	}
	var _ pipeline.Closer = (*httpconn.Client)(nil)
}
