package lua

import (
	"context"
	"strings"
	"testing"

	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/connectors/kv/memstore"
)

// TestKVBudgets checks that a script's kv calls share the budgets of one
// event (Options.MaxKeysVisited, Options.MaxResultBytes of the store) and
// that the next event starts afresh.
func TestKVBudgets(t *testing.T) {
	store, err := kv.New(memstore.New(), kv.Options{Namespace: "test", ReclaimInterval: -1, MaxKeysVisited: 10, MaxResultBytes: 40})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = store.Close(context.Background()) })
	setup := newProc(t, `for i = 1, 20 do assert(kv.set(string.format("k%02d", i), "0123456789")) end`, Options{Store: store})
	process(t, setup, ev(`{}`, `{}`))
	tests := []struct{ name, script, want string }{
		{"count over the work budget", `local n, err = kv.count() emit("out", {n = n, err = err})`, "max_keys_visited (10)"},
		{"gets summed over the work budget", `for i = 1, 5 do kv.exists(string.format("k%02d", i)) end
			local n, err = kv.count("k0") emit("out", {n = n, err = err})`, "max_keys_visited (10)"},
		{"get_all over the result budget", `local v, err = kv.get_all("k0") emit("out", {err = err})`, "max_result_bytes (40 bytes)"},
		{"keys over the result budget", `local v, err = kv.keys() emit("out", {err = err})`, "max_result_bytes (40 bytes) after 7 keys"},
		{"within the budgets", `local n, err = kv.count("k0") emit("out", {n = n, err = err})`, `{"n":9}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := newProc(t, tt.script, Options{Store: store})
			for range 2 { // the budget is per event
				c := process(t, p, ev(`{}`, `{}`))
				if len(c.out["out"]) != 1 {
					t.Fatalf("outputs: %v", c.out)
				}
				if got := string(c.out["out"][0].Data); !strings.Contains(got, tt.want) {
					t.Errorf("got %s, want it to contain %s", got, tt.want)
				}
			}
		})
	}
}
