package httpconn_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
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

// TestClientSpecClock: placeholders read the build's clock
// (component.UseClock), so a test or replay fixing it sends the same URL.
func TestClientSpecClock(t *testing.T) {
	paths := make(chan string, 1)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		paths <- r.URL.Path
		_, _ = io.WriteString(w, `{}`)
	}))
	defer srv.Close()
	res := component.NewResources()
	component.UseClock(res, func() time.Time { return time.UnixMilli(1767225600000) })
	c := component.NewConfig("call", "http_client", map[string]any{"url": srv.URL + "/at/{now()}"})
	comp, err := httpconn.ClientSpec().Build(context.Background(), &component.Env{Resources: res}, c)
	if err != nil {
		t.Fatal(err)
	}
	cl := comp.Processor.(*httpconn.Client)
	defer cl.Close(context.Background())
	if err := cl.Process(context.Background(), []pipeline.Event{{Data: []byte(`{}`)}}, discard{}); err != nil {
		t.Fatal(err)
	}
	if got := <-paths; got != "/at/1767225600000" {
		t.Fatalf("path %s, want the fixed clock's time", got)
	}
}

type discard struct{}

func (discard) Emit(string, pipeline.Event) {}
