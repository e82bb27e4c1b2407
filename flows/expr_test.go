package flows

import (
	"bytes"
	"context"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/component"
)

// clockFlow counts by minute window: the kv key is built from now(), the
// events before the store show other time functions, and the command is
// deleted from meta after the store, before the results sink.
const clockFlow = `name: clocked
connectors:
  input:   { type: stdin }
  store:   { type: kv, dir: state }
  results: { type: stdout }
pipelines:
  keyed:
    - set:
        meta.kv: '{"increment": concat("hits_", data.user, "_", window(now(), 60000))}'
        data.at: 'format_time(now(), "RFC3339Milli")'
        data.day: 'now_s() - now_s() % 86400'
        data.kind: 'data.user == "ann" ? "known" : "guest"'
        data.part: 'hash(data.user) % 4'
  clean:
    - set:
        data: '{"count": data, "key": meta.kv.key}'
        meta.kv: 'delete()'
links:
  - input -> keyed
  - keyed -> store
  - keyed -> results
  - store -> clean
  - clean -> results
  - input/err -> results
  - keyed/err -> results
  - store/err -> results
  - clean/err -> results
`

// TestFlowClockReplaysIdentically runs a flow whose expressions read the
// time twice, each time on a new store, with the clock fixed through
// component.UseClock: both runs give the same output, which carries the
// fixed time and no meta.kv.
func TestFlowClockReplaysIdentically(t *testing.T) {
	input := `{"data":{"user":"ann"}}` + "\n" + `{"data":{"user":"bob"}}` + "\n" + `{"data":{"user":"ann"}}` + "\n"
	fixed := time.Date(2026, 1, 2, 3, 4, 5, 678e6, time.UTC)
	run := func() string {
		t.Helper()
		flow := writeFlow(t, t.TempDir(), clockFlow)
		res := component.NewResources()
		component.UseClock(res, func() time.Time { return fixed })
		var out bytes.Buffer
		built, err := flow.Build(context.Background(), BuildOptions{Stdin: strings.NewReader(input), Stdout: &out, Resources: res})
		if err != nil {
			t.Fatal(err)
		}
		if err := built.Run(context.Background()); err != nil {
			t.Fatal(err)
		}
		// Two paths reach results, in no fixed order between them.
		lines := strings.SplitAfter(out.String(), "\n")
		sort.Strings(lines)
		return strings.Join(lines, "")
	}
	first := run()
	time.Sleep(2 * time.Millisecond) // the real clock moves on; the flow's does not
	if second := run(); second != first {
		t.Fatalf("two runs differ:\n%s\n%s", first, second)
	}
	for _, want := range []string{
		`"at":"2026-01-02T03:04:05.678Z"`,
		`"day":1767312000`,
		`"kind":"known"`,
		`"kind":"guest"`,
		`"count":2`,
	} {
		if !strings.Contains(first, want) {
			t.Errorf("output lacks %s:\n%s", want, first)
		}
	}
	if strings.Count(first, `"kv"`) != 3 {
		t.Errorf("want meta.kv on the 3 events before the store and deleted on the 3 after it:\n%s", first)
	}
	if n := strings.Count(first, "\n"); n != 6 {
		t.Errorf("got %d lines, want 6:\n%s", n, first)
	}
}

// TestFlowClockReachesLua checks that the clock given with
// component.UseClock is also the clock of os.time in lua processors.
func TestFlowClockReachesLua(t *testing.T) {
	const src = `name: luaclock
connectors:
  input: { type: stdin }
  stamp:
    type: lua
    script: |
      emit("out", {t = os.time()})
  results: { type: stdout }
links:
  - input -> stamp
  - stamp -> results
  - input/err -> results
  - stamp/err -> results
`
	flow := writeFlow(t, t.TempDir(), src)
	res := component.NewResources()
	component.UseClock(res, func() time.Time { return time.Unix(1767323045, 0) })
	var out bytes.Buffer
	built, err := flow.Build(context.Background(), BuildOptions{Stdin: strings.NewReader(`{"data":1}` + "\n"), Stdout: &out, Resources: res})
	if err != nil {
		t.Fatal(err)
	}
	if err := built.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), `"t":1767323045`) {
		t.Errorf("lua os.time() did not follow the build's clock: %s", out.String())
	}
}
