package httpbench

import (
	"context"
	"errors"
	"testing"
	"time"
)

// TestRunSmall runs both workloads, closed and open loop, with a few
// requests: every request is answered with its own correlation, and the
// figures are filled.
func TestRunSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts flows on Pebble and an HTTP server")
	}
	for _, rate := range []int{0, 400} {
		rs, err := Run(context.Background(), Config{Requests: 300, Clients: 4, Keys: 50, Rate: rate,
			Duration: 500 * time.Millisecond, Dir: t.TempDir()})
		if err != nil {
			t.Fatal(err)
		}
		if len(rs) != 2 {
			t.Fatalf("%d results, want put and get", len(rs))
		}
		for _, r := range rs {
			if r.Errors != 0 || r.HTTPPerSec <= 0 || r.StdinPerSec <= 0 || r.P50us <= 0 || r.P99us < r.P50us {
				t.Errorf("rate %d: %+v", rate, r)
			}
		}
	}
}

func TestConfigRefused(t *testing.T) {
	for _, c := range []Config{{Workloads: []string{"scan"}}, {Clients: -1}, {Rate: -5}} {
		c.EnsureDefaults()
		if err := c.Validate(); !errors.Is(err, ErrConfig) {
			t.Errorf("%+v: %v", c, err)
		}
	}
}
