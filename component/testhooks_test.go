package component_test

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/flowrun/flowrun/component"
)

func TestClockAndStoreDirs(t *testing.T) {
	res := component.NewResources()
	if component.Clock(res) != nil || component.Clock(nil) != nil {
		t.Fatal("Clock without UseClock is not nil")
	}
	if got := component.StoreDir(res, "state"); got != "state" {
		t.Fatalf("StoreDir without a mapping = %q, want the dir unchanged", got)
	}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	component.UseClock(res, func() time.Time { return at })
	if now := component.Clock(res); now == nil || !now().Equal(at) {
		t.Fatal("Clock does not return the clock given to UseClock")
	}
	var seen string
	component.MapStoreDirs(res, func(dir string) string { seen = dir; return "/tmp/x" })
	if got := component.StoreDir(res, "a/../state"); got != "/tmp/x" {
		t.Fatalf("StoreDir = %q, want the mapped dir", got)
	}
	if want, _ := filepath.Abs("state"); seen != want {
		t.Fatalf("the mapping saw %q, want the absolute clean dir %q", seen, want)
	}
}

func TestExpandEnvFunc(t *testing.T) {
	lookup := func(name string) (string, bool) { return map[string]string{"A": "x"}[name], name == "A" }
	if got, err := component.ExpandEnvFunc("${A}/$${B}", lookup); err != nil || got != "x/${B}" {
		t.Fatalf("got %q, %v", got, err)
	}
	if _, err := component.ExpandEnvFunc("${B}", lookup); err == nil {
		t.Fatal("an unset variable is not an error")
	}
}
