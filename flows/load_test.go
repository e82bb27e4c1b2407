package flows

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/kv"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/operators"
	"github.com/flowrun/flowrun/pipeline"
)

// TestBrokenFiles checks the exact diagnostics, with positions, of one
// broken flow file per kind of problem.
func TestBrokenFiles(t *testing.T) {
	tests := []struct {
		file string
		want []string
	}{
		{"valid.yaml", nil},
		{"yaml_syntax.yaml", []string{
			`3:1: error: invalid YAML: did not find expected ',' or '}' in the flow mapping starting here`}},
		{"missing_name.yaml", []string{
			`1:1: error: name: missing required field "name"`}},
		{"unknown_connector_type.yaml", []string{
			`3:18: error: connectors.input.type: unknown connector type "stdn" (did you mean "stdin"?)`}},
		{"unknown_operator.yaml", []string{
			`7:7: error: pipelines.main[0]: unknown operator "filtr" (did you mean "filter"?)`}},
		{"unknown_option.yaml", []string{
			`4:3: error: connectors.store: missing option "dir", required when backend is pebble (the default)`,
			`6:5: error: connectors.store: unknown option "dri" (did you mean "dir"?)`}},
		{"missing_required.yaml", []string{
			`4:3: error: connectors.store: missing option "dir", required when backend is pebble (the default)`}},
		{"missing_required_when.yaml", []string{
			`4:3: error: connectors.store: missing option "endpoints", required when backend is etcd`}},
		{"option_without_effect.yaml", []string{
			`4:73: warning: connectors.store: option "dir" has no effect: it applies only when backend is pebble`,
			`6:5: warning: connectors.store2: option "sync" has no effect: it applies only when backend is pebble`,
			`11:5: warning: connectors.pstore: option "prefix" has no effect: it applies only when backend is etcd`}},
		{"bad_endpoints.yaml", []string{
			`9:9: error: connectors.store.endpoints[1]: expected a string without commas, got a mapping`,
			`11:16: error: connectors.other.endpoints: environment variable FLOWRUN_TEST_UNSET_VARIABLE is not set (named in "${FLOWRUN_TEST_UNSET_VARIABLE}")`,
			`13:16: error: connectors.third.endpoints: expected a list or a comma-separated string, got nothing`}},
		{"wrong_type.yaml", []string{
			`7:16: error: connectors.store.max_group: expected an integer, got "lots"`,
			`8:11: error: connectors.store.sync: expected true or false, got "maybe"`,
			`9:16: error: connectors.store.max_delay: expected a duration such as "5ms" or "1m30s", got "5"`}},
		{"zero_budget.yaml", []string{
			`7:23: error: connectors.store.max_keys_visited: max_keys_visited is 0, out of range: must be at least 1 (a limit cannot be switched off; leave the option out for its default)`,
			`8:23: error: connectors.store.max_result_bytes: max_result_bytes is 0KiB, out of range: must be 1 to 1GiB (a limit cannot be switched off; leave the option out for its default)`}},
		{"bad_enum.yaml", []string{
			`4:45: error: connectors.out.mode: invalid value "rwite" (want one of read, write, append, truncate) (did you mean "write"?)`}},
		{"invalid_expr.yaml", []string{
			`7:30: error: pipelines.main[0].filter.if: invalid expression "exists(meta.kv": ` + exprError(t, "exists(meta.kv")}},
		{"malformed_link.yaml", []string{
			`6:5: error: links[0]: malformed link "input/out => out/in": want "NODE/PORT -> NODE/in"`}},
		{"unknown_node.yaml", []string{
			`6:5: error: links[0]: link to unknown node "ouput" (did you mean "out"?)`}},
		{"unknown_port.yaml", []string{
			`4:3: warning: connectors.store: port "err" is not linked: failed events will only be logged (link store/err to a sink)`,
			`10:5: error: links[3]: connector "store" has no output port "error" (did you mean "err"?) (ports: out, err)`}},
		{"link_into_source.yaml", []string{
			`7:5: error: links[0]: link into a source: connector "replay" is a source and has no input port`}},
		{"cycle.yaml", []string{
			`12:5: error: links[3]: links form a cycle: a -> b -> a`}},
		{"unlinked_err.yaml", []string{
			`4:3: warning: connectors.store: port "err" is not linked: failed events will only be logged (link store/err to a sink)`}},
		{"partitions.yaml", []string{
			`4:43: error: connectors.range.partitions: partitions is 0, out of range: must be 1 to 1000 (a limit cannot be switched off; leave the option out for its default)`,
			`5:84: error: connectors.etcd.partitions: not available with backend etcd: a partitioned connector keeps each partition in a local store made durable by its changelog, which backend pebble provides (backend etcd is shared by every process already; see docs/scaling.md)`,
			`7:46: error: connectors.alone.partition_key: applies only to a partitioned connector: set partitions too`,
			`8:3: error: connectors.nolog: changelog: required with partitions: {urls: "${FLOWRUN_NATS_CLUSTER_URLS}", replicas: 3}`,
			`9:60: error: connectors.replicas.changelog: replicas is "2", must be 1, 3 or 5`,
			`10:81: error: connectors.badkey.partition_key: invalid expression "substr(meta.kv.key": expected ',' or ')' at column 19`,
			`11:65: error: connectors.expiring.expired_events: not available with partitions yet: expired keys are reclaimed by each partition's background pass`,
			`12:47: error: connectors.inputonly.input_from: applies only to a partitioned connector: set partitions too`,
			`13:50: error: connectors.ckonly.checkpoint_every: applies only to a partitioned connector: set partitions too`,
			`14:66: error: connectors.cksmall.checkpoint_every: checkpoint_every is 1KiB, out of range: must be 64KiB to 64GiB`,
			`15:65: error: connectors.ckbig.checkpoint_every: checkpoint_every is 100GiB, out of range: must be 64KiB to 64GiB`,
			`16:58: error: connectors.badff.changelog: fail_fast is "maybe", must be true or false`}},
		{"unused_node.yaml", []string{
			`5:3: warning: connectors.spare: connector "spare" is not linked to anything`}},
	}
	reg := builtin.NewRegistry()
	seen := map[string]bool{}
	for _, tt := range tests {
		seen[tt.file] = true
		t.Run(tt.file, func(t *testing.T) {
			path := filepath.Join("testdata", "broken", tt.file)
			var got []string
			for _, d := range Validate(path, reg) {
				got = append(got, strings.TrimPrefix(d.String(), path+":"))
			}
			if strings.Join(got, "\n") != strings.Join(tt.want, "\n") {
				t.Errorf("diagnostics:\n got  %q\n want %q", got, tt.want)
			}
			flow, diags, err := Load(path, reg)
			wantErr := HasErrors(diags)
			if wantErr != (err != nil) || wantErr != (flow == nil) {
				t.Fatalf("Load: flow %v, err %v, but errors in diagnostics: %v", flow != nil, err, wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidFlow) {
				t.Errorf("Load error %v does not wrap ErrInvalidFlow", err)
			}
		})
	}
	files, _ := filepath.Glob(filepath.Join("testdata", "broken", "*.yaml"))
	for _, f := range files {
		if !seen[filepath.Base(f)] {
			t.Errorf("%s has no expected diagnostics in this table", f)
		}
	}
}

// exprError is the expression compiler's own message for src.
func exprError(t *testing.T, src string) string {
	t.Helper()
	err := operators.CheckExpr(src)
	if err == nil {
		t.Fatalf("expression %q compiles; the invalid_expr test needs an invalid one", src)
	}
	return err.Error()
}

const header = "name: t\n"

// TestDiagnostics covers more problems, on inline flows.
func TestDiagnostics(t *testing.T) {
	tests := []struct {
		name string
		src  string
		want []string // substrings of the diagnostics, in order; one per diagnostic
	}{
		{"empty file", "", []string{"f.yaml: error: empty flow file"}},
		{"root not a mapping", "- a\n", []string{"1:1: error: a flow file must be a mapping"}},
		{"unknown top-level field", header + "conectors: {}\n", []string{`2:1: error: unknown top-level field "conectors" (did you mean "connectors"?)`}},
		{"duplicate key", header + "name: u\n", []string{`2:1: error: duplicate key "name"`}},
		{"name not a string", "name: [a]\n", []string{`1:7: error: name: expected a non-empty name, got a list`}},
		{"bad name", "name: a b\n", []string{`1:7: error: name: invalid name "a b"`}},
		{"connectors not a mapping", header + "connectors: [a]\n", []string{`2:13: error: connectors: expected a mapping`}},
		{"connector not a mapping", header + "connectors:\n  a: stdin\n", []string{`3:6: error: connectors.a: expected a mapping with a type, got "stdin"`}},
		{"connector without type", header + "connectors:\n  a: {dir: x}\n", []string{`3:3: error: connectors.a: missing required option "type" (one of stdin, stdout, file, null, kv, lua, gochannel, nats, kafka, amqp, mqtt, redis_streams, http_server, http_client)`}},
		{"operator as connector", header + "connectors:\n  a: {type: filter}\n", []string{`3:13: error: connectors.a.type: "filter" is an operator, not a connector`}},
		{"connector as operator", header + "pipelines:\n  p:\n    - kv: {dir: x}\n", []string{`4:7: error: pipelines.p[0]: "kv" is a connector, not an operator`}},
		{"two stdin", header + "connectors:\n  a: {type: stdin}\n  b: {type: stdin}\n  d: {type: null}\nlinks: [a/out -> c, a/err -> c, b -> c, b/err -> c, c/err -> d, c -> d]\npipelines: {c: []}\n",
			[]string{`4:13: error: connectors.b.type: only one stdin connector is allowed per flow ("a" already reads stdin)`}},
		{"duplicate node name", header + "connectors:\n  a: {type: null}\npipelines:\n  a: []\n", []string{`3:3: warning: connectors.a: connector "a" is not linked to anything`, `5:3: error: pipelines: node name "a" is already used at line 3`}},
		{"option set twice by alias", header + "connectors:\n  s: {type: kv, dir: a, path: b}\n", []string{`3:25: error: connectors.s: option "dir" is set twice ("path" is an alias of "dir")`}},
		{"option without value", header + "connectors:\n  s: {type: kv, dir: }\n", []string{`3:22: error: connectors.s.dir: expected a path, got nothing`}},
		{"option of wrong shape", header + "connectors:\n  s: {type: kv, dir: [a]}\n", []string{`3:22: error: connectors.s.dir: expected a path, got a list`}},
		{"bad bytesize", header + "connectors:\n  s: {type: kv, dir: a, max_value_bytes: 4 parsecs}\n", []string{`connectors.s.max_value_bytes: expected a size such as 4096, "64KiB" or "16MiB", got "4 parsecs"`}},
		{"operator entry with two keys", header + "pipelines:\n  p:\n    - filter: a\n      drop: {}\n", []string{`4:7: error: pipelines.p[0]: expected one operator such as ` + "`filter: EXPR`" + `, got a mapping with 2 keys (start each operator with its own "- ")`}},
		{"pipeline not a list", header + "pipelines:\n  p: {filter: a}\n", []string{`3:3: warning: pipelines.p: pipeline "p" is not linked to anything`, `3:6: error: pipelines.p: expected a list of operators, got a mapping`}},
		{"set without shorthand", header + "pipelines:\n  p:\n    - set: data.x\n", []string{`4:12: error: pipelines.p[0].set: expected a mapping of options, got "data.x"`}},
		{"set without assignments", header + "pipelines:\n  p:\n    - set: {}\n", []string{`4:7: error: pipelines.p[0].set: set needs at least one assignment`}},
		{"filter without condition", header + "pipelines:\n  p:\n    - filter:\n", []string{`4:7: error: pipelines.p[0].filter: missing required option "if"`}},
		{"unknown filter option", header + "pipelines:\n  p:\n    - filter: {iff: a}\n", []string{`4:7: error: pipelines.p[0].filter: missing required option "if"`, `4:16: error: pipelines.p[0].filter: unknown option "iff" (did you mean "if"?)`}},
		{"route to in", header + "pipelines:\n  p:\n    - route: {in: 'true'}\n", []string{`4:7: error: pipelines.p[0].route: route 1: invalid option: port "in" is reserved`}},
		{"route bad port name", header + "pipelines:\n  p:\n    - route: {a b: 'true'}\n", []string{`4:7: error: pipelines.p[0].route: route 1: invalid option: port "a b" must be letters`}},
		{"links not a list", header + "links: a -> b\n", []string{`2:8: error: links: expected a list of links`}},
		{"link not a string", header + "links:\n  - {a: b}\n", []string{`3:5: error: links[0]: expected a link such as "input/out -> main/in", got a mapping`}},
		{"link with two arrows", header + "links:\n  - a -> b -> c\n", []string{`3:5: error: links[0]: malformed link "a -> b -> c"`}},
		{"link from unknown node", header + "connectors:\n  o: {type: null}\nlinks:\n  - x -> o\n", []string{`5:5: error: links[0]: link from unknown node "x"`}},
		{"link from a sink", header + "connectors:\n  o: {type: null}\n  p: {type: null}\nlinks:\n  - o -> p\n", []string{`3:3: warning: connectors.o: nothing links into connector "o"`, `6:5: error: links[0]: connector "o" is a sink and has no output ports`}},
		{"link to port other than in", header + "connectors:\n  i: {type: stdin}\n  o: {type: null}\nlinks:\n  - i -> o/out\n  - i/err -> o\n", []string{`6:5: error: links[0]: connector "o" has no input port "out" (links go into port "in")`}},
		{"duplicate link", header + "connectors:\n  i: {type: stdin}\n  o: {type: null}\nlinks:\n  - i -> o\n  - i/out -> o/in\n  - i/err -> o\n", []string{`7:5: warning: links[1]: duplicate link "i/out -> o/in" (also at line 6)`}},
		{"nothing links in", header + "connectors:\n  i: {type: stdin}\n  o: {type: null}\npipelines:\n  p: []\nlinks:\n  - i -> o\n  - i/err -> o\n  - p -> o\n  - p/err -> o\n",
			[]string{`6:3: warning: pipelines.p: nothing links into pipeline "p", so it receives no events`}},
		{"self loop", header + "pipelines:\n  p: []\nlinks:\n  - p -> p\n  - p/err -> p\n", []string{
			`5:5: error: links[0]: links form a cycle: p -> p`,
			`6:5: error: links[1]: links form a cycle: p -> p`}},
		{"route ports are pipeline ports", header + "connectors:\n  i: {type: stdin}\n  o: {type: null}\npipelines:\n  p:\n    - route: {hot: 'true', default: cold}\nlinks:\n  - i -> p\n  - i/err -> o\n  - p/hot -> o\n  - p/cold -> o\n  - p/err -> o\n  - p/lukewarm -> o\n",
			[]string{`14:5: error: links[5]: pipeline "p" has no output port "lukewarm" (ports: out, err, hot, cold)`}},
		{"lua kv names a kv connector", header + luaLinks("store: {type: kv, dir: a}", "kv: store"), nil},
		{"lua kv names no connector", header + luaLinks("store: {type: kv, dir: a}", "kv: stor"),
			[]string{`3:3: warning: connectors.store: connector "store" is not linked to anything`,
				`4:45: error: connectors.l.kv: no connector "stor" in this flow (did you mean "store"?) (kv connectors: store)`}},
		{"lua kv names a connector of another type", header + luaLinks("store: {type: null}", "kv: o"),
			[]string{`3:3: warning: connectors.store: connector "store" is not linked to anything`,
				`4:45: error: connectors.l.kv: connector "o" is of type null, not kv (kv connectors: none)`}},
		{"lua kv names a pipeline", header + luaLinks("store: {type: kv, dir: a}", "kv: p") + "pipelines: {p: []}\n",
			[]string{`3:3: warning: connectors.store: connector "store" is not linked to anything`,
				`4:45: error: connectors.l.kv: "p" is a pipeline, not a kv connector (kv connectors: store)`,
				`12:13: warning: pipelines.p: pipeline "p" is not linked to anything`}},
		{"unlinked route target", header + "connectors:\n  i: {type: stdin}\n  o: {type: null}\npipelines:\n  p:\n    - route: {ok: 'true', default: failed}\nlinks:\n  - i -> p\n  - i/err -> o\n  - p/ok -> o\n  - p/err -> o\n",
			[]string{`6:3: warning: pipelines.p: port "failed" is not linked: events sent to it are dropped (link p/failed to a node)`}},
		{"unlinked out", header + "connectors:\n  i: {type: stdin}\n  s: {type: kv, dir: a}\n  o: {type: null}\nlinks:\n  - i -> s\n  - i/err -> o\n  - s/err -> o\n",
			[]string{`4:3: warning: connectors.s: port "out" is not linked: events sent to it are dropped (link s/out to a node)`}},
		{"lua script using its own ports only", header + "connectors:\n  i: {type: stdin}\n  l: {type: lua, script: 'emit(\"a\", event)', ports: 'a, b'}\n  o: {type: null}\nlinks:\n  - i -> l\n  - i/err -> o\n  - l/a -> o\n  - l/err -> o\n",
			[]string{`4:3: warning: connectors.l: port "b" is not linked: events sent to it are dropped (link l/b to a node)`}},
		{"no source", header + "connectors:\n  o: {type: null}\npipelines:\n  p: []\nlinks:\n  - p -> o\n  - p/err -> o\n",
			[]string{`f.yaml: warning: connectors: the flow has no source, so nothing feeds it events`,
				`warning: pipelines.p: nothing links into pipeline "p", so it receives no events`}},
		{"lua kv not a name", header + luaLinks("store: {type: kv, dir: a}", "kv: 'a b'"),
			[]string{`3:3: warning: connectors.store: connector "store" is not linked to anything`,
				`4:45: error: connectors.l.kv: expected the name of a kv connector of this flow, got "a b"`}},
	}
	reg := builtin.NewRegistry()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, diags, _ := LoadBytes("f.yaml", []byte(tt.src), reg)
			if len(diags) != len(tt.want) {
				t.Fatalf("got %d diagnostics, want %d:\n%s", len(diags), len(tt.want), joinDiags(diags))
			}
			for i, d := range diags {
				if !strings.Contains(d.String(), tt.want[i]) {
					t.Errorf("diagnostic %d:\n got  %s\n want it to contain %s", i, d, tt.want[i])
				}
			}
		})
	}
}

// luaLinks returns the connectors and links of a flow whose lua node l
// has option kvOpt, beside the connector declared by store.
func luaLinks(store, kvOpt string) string {
	return "connectors:\n  " + store + "\n  l: {type: lua, script: 'emit(\"out\")', " + kvOpt + "}\n" +
		"  i: {type: stdin}\n  o: {type: null}\nlinks:\n  - i -> l\n  - i/err -> o\n  - l -> o\n  - l/err -> o\n"
}

func joinDiags(diags []Diagnostic) string {
	var b strings.Builder
	for _, d := range diags {
		b.WriteString(d.String())
		b.WriteString("\n")
	}
	return b.String()
}

func TestLoadResolvesOptions(t *testing.T) {
	dir := t.TempDir()
	src := `name: opts
connectors:
  in: { type: file, path: in.jsonl, mode: read, codec: json, max_line_bytes: 1KiB }
  store: { type: kv, path: /abs/state, sync: false, max_delay: 2ms, max_value_bytes: 1_000, row_cache: 1MiB }
  out: { type: stdout }
pipelines:
  p:
    - set:
        meta.b: '2'
        meta.a: '1'
links:
  - in -> p
  - in/err -> out
  - p -> store
  - p/err -> out
  - store -> out
  - store/err -> out
`
	path := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	flow, diags, err := Load(path, builtin.NewRegistry())
	if err != nil || len(diags) != 0 {
		t.Fatalf("Load: %v\n%s", err, joinDiags(diags))
	}
	in, _ := flow.Node("in")
	store, _ := flow.Node("store")
	checks := []struct {
		what      string
		got, want any
	}{
		{"file path", in.Config.String("path"), filepath.Join(dir, "in.jsonl")},
		{"file kind", in.Kind, component.KindSource},
		{"codec", in.Config.String("codec"), "json"},
		{"max_line_bytes", in.Config.ByteSize("max_line_bytes"), int64(1024)},
		{"kv dir via alias, absolute", store.Config.String("dir"), "/abs/state"},
		{"sync", store.Config.Bool("sync"), false},
		{"max_delay", store.Config.Duration("max_delay").String(), "2ms"},
		{"max_value_bytes", store.Config.ByteSize("max_value_bytes"), int64(1000)},
		{"default max_scan", store.Config.Int("max_scan"), 10000},
		{"row_cache", store.Config.ByteSize("row_cache"), int64(1 << 20)},
		{"explicitly set", store.Config.Has("sync"), true},
		{"defaulted is not set", store.Config.Has("max_scan"), false},
		{"sources", strings.Join(flow.Sources(), ","), "in"},
		{"sinks", strings.Join(flow.Sinks(), ","), "out"},
		{"links", len(flow.Links), 6},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.what, c.got, c.want)
		}
	}
	p, _ := flow.Node("p")
	var keys []string
	for _, e := range p.Operators[0].Config.Extra {
		keys = append(keys, e.Key)
	}
	if strings.Join(keys, ",") != "meta.b,meta.a" {
		t.Errorf("set assignments out of YAML order: %v", keys)
	}
}

func TestLoadMissingFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nope.yaml")
	if _, _, err := Load(path, builtin.NewRegistry()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Load of a missing file: %v", err)
	}
	diags := Validate(path, builtin.NewRegistry())
	if len(diags) != 1 || diags[0].Severity != Error || !strings.Contains(diags[0].String(), "nope.yaml: error: read flow file") {
		t.Errorf("Validate of a missing file: %v", diags)
	}
}

func TestLoadErrorListsErrors(t *testing.T) {
	_, _, err := LoadBytes("f.yaml", []byte("name: t\nconnectors:\n  a: {type: nope}\n  b: {type: kv}\n"), builtin.NewRegistry())
	if !errors.Is(err, ErrInvalidFlow) {
		t.Fatalf("err = %v, want ErrInvalidFlow", err)
	}
	want := "f.yaml: invalid flow (2 errors)\n" +
		"f.yaml:3:13: error: connectors.a.type: unknown connector type \"nope\" (registered: " +
		strings.Join(builtin.NewRegistry().ConnectorTypes(), ", ") + ")\n" +
		"f.yaml:4:3: error: connectors.b: missing option \"dir\", required when backend is pebble (the default)"
	if err.Error() != want {
		t.Errorf("error text:\n got  %s\n want %s", err, want)
	}
}

func TestDiagnosticString(t *testing.T) {
	tests := []struct {
		d    Diagnostic
		want string
	}{
		{Diagnostic{File: "f.yaml", Line: 3, Col: 5, Field: "connectors.store", Message: `unknown option "dri"`},
			`f.yaml:3:5: error: connectors.store: unknown option "dri"`},
		{Diagnostic{File: "f.yaml", Line: 3, Severity: Warning, Message: "m"}, "f.yaml:3: warning: m"},
		{Diagnostic{File: "f.yaml", Message: "m"}, "f.yaml: error: m"},
	}
	for _, tt := range tests {
		if got := tt.d.String(); got != tt.want {
			t.Errorf("got %q, want %q", got, tt.want)
		}
	}
}

func TestDidYouMean(t *testing.T) {
	tests := []struct {
		s    string
		want string
	}{
		{"dri", ` (did you mean "dir"?)`},
		{"namespce", ` (did you mean "namespace"?)`},
		{"max_gruop", ` (did you mean "max_group"?)`},
		{"zzz", ""},
		{"", ""},
	}
	cands := []string{"dir", "path", "namespace", "max_group", "max_scan"}
	for _, tt := range tests {
		if got := didYouMean(tt.s, cands); got != tt.want {
			t.Errorf("didYouMean(%q) = %q, want %q", tt.s, got, tt.want)
		}
	}
}

func TestRegistry(t *testing.T) {
	r := builtin.NewRegistry()
	if err := r.Register(component.Spec{Type: "kv", Build: noopBuild}); err == nil {
		t.Error("registering a type twice succeeded")
	}
	if err := r.Register(component.Spec{Type: "x"}); err == nil {
		t.Error("registering a spec without Build succeeded")
	}
	if got := strings.Join(r.Types(component.KindOperator), ","); got != "filter,set,route,drop" {
		t.Errorf("operators: %s", got)
	}
	if got := strings.Join(r.Types(component.KindSink), ","); got != "stdout,file,null,gochannel,nats,kafka,amqp,mqtt,redis_streams,http_server" {
		t.Errorf("sinks: %s", got)
	}
	// Every default parses with its own field type.
	for _, typ := range r.Types("") {
		s, _ := r.Spec(typ)
		for _, f := range s.Fields {
			if f.Default == "" {
				continue
			}
			if _, msg := r.ParseValue(&f, f.Default, false, ""); msg != nil {
				t.Errorf("%s.%s: default %q: %s", typ, f.Name, f.Default, msg)
			}
		}
	}
	// Registries are independent.
	other := builtin.NewRegistry()
	if err := other.Register(component.Spec{Type: "custom", Kind: component.KindSink, Build: noopBuild}); err != nil {
		t.Fatal(err)
	}
	if _, ok := r.Spec("custom"); ok {
		t.Error("a spec registered in one registry is visible in another")
	}
}

func noopBuild(context.Context, *component.Env, *component.Config) (component.Component, error) {
	return component.Component{}, nil
}

// The etcd options of a kv connector: endpoints as a list, a
// comma-separated string or an environment variable, defaults, and paths
// resolved against the flow file.
func TestLoadEtcdOptions(t *testing.T) {
	t.Setenv("FLOWRUN_TEST_ETCD", "http://10.0.0.1:2379, http://10.0.0.2:2379")
	t.Setenv("FLOWRUN_TEST_APP", "game")
	dir := t.TempDir()
	src := `name: etcd-opts
connectors:
  in: { type: stdin }
  list: { type: kv, backend: etcd, endpoints: [http://a:2379, "http://b:2379"], tls_ca: certs/ca.pem }
  comma: { type: kv, backend: etcd, endpoints: "http://a:2379,http://b:2379", prefix: "${FLOWRUN_TEST_APP}/kv/" }
  env: { type: kv, backend: etcd, endpoints: "${FLOWRUN_TEST_ETCD}", max_txn_ops: 4096, request_timeout: 2s }
  local: { type: kv, dir: state }
  out: { type: stdout }
links:
  - in -> list
  - in -> comma
  - in -> env
  - in -> local
  - in/err -> out
  - list -> out
  - list/err -> out
  - comma -> out
  - comma/err -> out
  - env -> out
  - env/err -> out
  - local -> out
  - local/err -> out
`
	path := filepath.Join(dir, "flow.yaml")
	if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	writeTestCA(t, filepath.Join(dir, "certs", "ca.pem"))
	flow, diags, err := Load(path, builtin.NewRegistry())
	if err != nil || len(diags) != 0 {
		t.Fatalf("Load: %v\n%s", err, joinDiags(diags))
	}
	cfg := func(name string) *component.Config {
		n, _ := flow.Node(name)
		return n.Config
	}
	checks := []struct {
		what      string
		got, want any
	}{
		{"list endpoints", strings.Join(cfg("list").Strings("endpoints"), " "), "http://a:2379 http://b:2379"},
		{"comma endpoints", strings.Join(cfg("comma").Strings("endpoints"), " "), "http://a:2379 http://b:2379"},
		{"env endpoints", strings.Join(cfg("env").Strings("endpoints"), " "), "http://10.0.0.1:2379 http://10.0.0.2:2379"},
		{"default prefix", cfg("list").String("prefix"), "flowrun/"},
		{"env prefix", cfg("comma").String("prefix"), "game/kv/"},
		{"tls_ca resolved", cfg("list").String("tls_ca"), filepath.Join(dir, "certs/ca.pem")},
		{"backend", cfg("list").String("backend"), "etcd"},
		{"default backend", cfg("local").String("backend"), "pebble"},
		{"max_txn_ops", cfg("env").Int("max_txn_ops"), 4096},
		{"default max_txn_ops", cfg("list").Int("max_txn_ops"), 128},
		{"max_request_bytes", cfg("list").ByteSize("max_request_bytes"), int64(1536 << 10)},
		{"request_timeout", cfg("env").Duration("request_timeout").String(), "2s"},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s: got %v, want %v", c.what, c.got, c.want)
		}
	}
}

// TestKVOptionsReachTheConnector builds the kv node of a flow and checks
// the connector got the options the flow file set.
func TestKVOptionsReachTheConnector(t *testing.T) {
	for _, optimistic := range []bool{false, true} {
		dir := t.TempDir()
		src := fmt.Sprintf("name: o\nconnectors:\n  store: { type: kv, dir: state, idem_from: message_id, optimistic_scripts: %v }\n", optimistic)
		path := filepath.Join(dir, "flow.yaml")
		if err := os.WriteFile(path, []byte(src), 0o644); err != nil {
			t.Fatal(err)
		}
		flow, _, err := Load(path, builtin.NewRegistry()) // warns: not linked
		if err != nil {
			t.Fatalf("Load: %v", err)
		}
		store, _ := flow.Node("store")
		env := &component.Env{Flow: flow.Name, Logger: slog.Default(), Resources: component.NewResources()}
		c, err := store.Spec.Build(context.Background(), env, store.Config)
		if err != nil {
			t.Fatal(err)
		}
		conn := c.Processor.(*kv.Connector)
		got := conn.Options()
		if got.Optimistic != optimistic || got.IdemFrom != "message_id" || got.Namespace != "o" {
			t.Errorf("optimistic_scripts %v: connector options %+v", optimistic, got)
		}
		if err := conn.Close(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
}

// writeTestCA writes a self-signed CA certificate in PEM to path, for
// options whose files are read when the flow is loaded.
func writeTestCA(t *testing.T, path string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestEveryOptionExpandsEnv sets each option of each built-in component
// to an unset ${VAR}: every option but expressions and Lua source must
// refuse it at its own position, whatever its type (paths, enums and
// numbers included), and those two must take it as written.
func TestEveryOptionExpandsEnv(t *testing.T) {
	const unset = "FLOWRUN_TEST_UNSET_OPTION"
	reg := builtin.NewRegistry()
	for _, typ := range reg.Types("") {
		spec, _ := reg.Spec(typ)
		for _, f := range spec.Fields {
			var src, field string
			if spec.Kind == component.KindOperator {
				src = fmt.Sprintf("name: env\npipelines:\n  p:\n    - %s: { %s: \"${%s}\" }\n", typ, f.Name, unset)
				field = fmt.Sprintf("pipelines.p[0].%s.%s", typ, f.Name)
			} else {
				src = fmt.Sprintf("name: env\nconnectors:\n  n: { type: %s, %s: \"${%s}\" }\n", typ, f.Name, unset)
				field = "connectors.n." + f.Name
			}
			_, diags, _ := LoadBytes("env.yaml", []byte(src), reg)
			var refused bool
			for _, d := range diags {
				if strings.Contains(d.Message, unset+" is not set") {
					refused = true
					if d.Field != field || d.Line == 0 || d.Col == 0 {
						t.Errorf("%s.%s: reported as %s", typ, f.Name, d)
					}
				}
			}
			if refused != f.Expands() {
				t.Errorf("%s.%s (%s): unset ${VAR} refused %v, want %v\n%s", typ, f.Name, f.Type, refused, f.Expands(), joinDiags(diags))
			}
		}
	}
}

// TestOptionalPortsNotWarned checks that an output port a component
// declares optional may stay unlinked without a warning, while its other
// ports are still warned about.
func TestOptionalPortsNotWarned(t *testing.T) {
	reg := builtin.NewRegistry()
	if err := reg.Register(component.Spec{Type: "notifier", Kind: component.KindProcessor, Build: noopBuild,
		Ports:         component.StaticPorts(pipeline.PortOut, pipeline.PortErr, "notices", "extra"),
		OptionalPorts: []string{"notices"}}); err != nil {
		t.Fatal(err)
	}
	src := "name: t\nconnectors:\n  i: {type: stdin}\n  n: {type: notifier}\n  o: {type: null}\nlinks:\n  - i -> n\n  - i/err -> o\n  - n -> o\n  - n/err -> o\n"
	_, diags, err := LoadBytes("f.yaml", []byte(src), reg)
	if err != nil {
		t.Fatal(err)
	}
	if len(diags) != 1 || !strings.Contains(diags[0].String(), `port "extra" is not linked`) {
		t.Fatalf("diagnostics:\n%s\nwant only the unlinked port extra", joinDiags(diags))
	}
}
