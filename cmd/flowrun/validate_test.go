package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
)

// TestValidateMeansRunStarts checks that flowrun validate and flowrun run
// agree: a flow validate refuses does not run (exit 1 from both, the same
// file:line:col diagnostic), and a flow validate accepts runs. Each broken
// flow is one that Build accepted, or refused only after opening the
// store, before validate ran the components' checks.
func TestValidateMeansRunStarts(t *testing.T) {
	t.Setenv("FLOWRUN_TEST_OUT", "out")
	t.Setenv("FLOWRUN_TEST_CODEC", "json")
	t.Setenv("FLOWRUN_TEST_GROUP", "64")
	const header = "name: parity\nconnectors:\n  in: { type: stdin }\n  out: { type: stdout }\n"
	const kvLinks = "links:\n  - in -> store\n  - in/err -> out\n  - store -> out\n  - store/err -> out\n"
	const httpLinks = "links:\n  - in -> out\n  - in/err -> out\n  - api -> out\n"
	const clientLinks = "links:\n  - in -> call\n  - in/err -> out\n  - call -> out\n  - call/err -> out\n"
	const luaLinks = "links:\n  - in -> script\n  - in/err -> out\n  - script -> out\n  - script/err -> out\n"
	tests := []struct {
		name  string
		flow  string
		files map[string]string // written next to the flow
		want  string            // part of the diagnostic; "" for a valid flow
	}{
		{name: "max_group negative",
			flow: header + "  store: { type: kv, dir: state, max_group: -3 }\n" + kvLinks,
			want: "5:45: error: connectors.store.max_group: max_group is -3, out of range: must be at least 1"},
		{name: "max_group_build negative",
			flow: header + "  store: { type: kv, dir: state, max_group_build: -1ms }\n" + kvLinks,
			want: `connectors.store.max_group_build: duration must not be negative, got "-1ms"`},
		{name: "max_group_build set",
			flow: header + "  store: { type: kv, dir: state, max_group_build: 2ms }\n" + kvLinks},
		{name: "pace_work zero",
			flow: header + "  store: { type: kv, dir: state, pace_work: 0s }\n" + kvLinks,
			want: "connectors.store.pace_work"},
		{name: "pace_rest zero turns pacing off",
			flow: header + "  store: { type: kv, dir: state, pace_rest: 0s }\n" + kvLinks},
		{name: "max_key_length zero",
			flow: header + "  store: { type: kv, dir: state, max_key_length: 0 }\n" + kvLinks,
			want: "5:50: error: connectors.store.max_key_length: max_key_length is 0, out of range: must be at least 1"},
		{name: "idem_retention zero",
			flow: header + "  store: { type: kv, dir: state, idem_retention: 0s }\n" + kvLinks,
			want: "connectors.store.idem_retention: idem_retention is 0s, out of range: must be at least 1s"},
		{name: "max_line_bytes zero",
			flow: "name: parity\nconnectors:\n  in: { type: stdin, max_line_bytes: 0 }\n  out: { type: stdout }\nlinks:\n  - in -> out\n  - in/err -> out\n",
			want: "3:38: error: connectors.in.max_line_bytes: max_line_bytes is 0"},
		{name: "unset variable in a path",
			flow: header + "  store: { type: kv, dir: \"${FLOWRUN_TEST_UNSET_DIR}/state\" }\n" + kvLinks,
			want: "5:27: error: connectors.store.dir: environment variable FLOWRUN_TEST_UNSET_DIR is not set"},
		{name: "unset variable in an enum",
			flow: "name: parity\nconnectors:\n  in: { type: stdin, codec: \"${FLOWRUN_TEST_UNSET_CODEC}\" }\n  out: { type: stdout }\nlinks:\n  - in -> out\n  - in/err -> out\n",
			want: "3:29: error: connectors.in.codec: environment variable FLOWRUN_TEST_UNSET_CODEC is not set"},
		{name: "missing lua file",
			flow: header + "  script: { type: lua, file: missing.lua }\n" + luaLinks,
			want: "5:30: error: connectors.script.file: script file: stat "},
		{name: "lua syntax error inline",
			flow: header + "  script: { type: lua, script: \"emit('out', \" }\n" + luaLinks,
			want: "5:32: error: connectors.script.script: lua script error: script at EOF"},
		{name: "lua syntax error in a file",
			flow:  header + "  script: { type: lua, file: bad.lua }\n" + luaLinks,
			files: map[string]string{"bad.lua": "local x = \n\nend end\n"},
			want:  "5:30: error: connectors.script.file: lua script error: bad.lua line:3"},
		{name: "lua script and file",
			flow:  header + "  script: { type: lua, file: ok.lua, script: \"emit('out', event)\" }\n" + luaLinks,
			files: map[string]string{"ok.lua": "emit('out', event)\n"},
			want:  "connectors.script.file: give either script or file, not both"},
		{name: "lua stack below the VM's own",
			flow: header + "  script: { type: lua, script: \"emit('out', event)\", max_stack_slots: 10 }\n" + luaLinks,
			want: "max_stack_slots is 10, out of range: must be at least 1024"},
		{name: "etcd CA file missing",
			flow: header + "  store: { type: kv, backend: etcd, endpoints: \"http://127.0.0.1:1\", tls_ca: ca.pem }\n" + kvLinks,
			want: "connectors.store.tls_ca: stat "},
		{name: "bus window zero",
			flow: header + "  bus: { type: gochannel, mode: write, topic: t, window: 0 }\nlinks:\n  - in -> bus\n  - in/err -> out\n",
			want: "connectors.bus.window: window is 0"},
		{name: "nats stream name the broker refuses",
			flow: header + "  bus: { type: nats, mode: write, url: \"nats://127.0.0.1:1\", subject: s, stream: game.scores }\nlinks:\n  - in -> bus\n  - in/err -> out\n",
			want: "connectors.bus.stream: \"game.scores\" is not a valid JetStream name"},
		{name: "http_server without address",
			flow: header + "  api: { type: http_server }\n" + httpLinks,
			want: "5:3: error: connectors.api: missing required option \"address\""},
		{name: "http_server address without port",
			flow: header + "  api: { type: http_server, address: localhost }\n" + httpLinks,
			want: "connectors.api.address: \"localhost\" is not HOST:PORT: missing port in address"},
		{name: "http_server port out of range",
			flow: header + "  api: { type: http_server, address: \"127.0.0.1:99999\" }\n" + httpLinks,
			want: "connectors.api.address: port \"99999\""},
		{name: "http_server tls_cert without tls_key",
			flow:  header + "  api: { type: http_server, address: \"127.0.0.1:0\", tls_cert: cert.pem }\n" + httpLinks,
			files: map[string]string{"cert.pem": "x"},
			want:  "connectors.api.tls_cert: tls_cert and tls_key go together"},
		{name: "http_server tls files that do not load",
			flow:  header + "  api: { type: http_server, address: \"127.0.0.1:0\", tls_cert: cert.pem, tls_key: key.pem }\n" + httpLinks,
			files: map[string]string{"cert.pem": "x", "key.pem": "y"},
			want:  "connectors.api.tls_cert: tls_cert "},
		{name: "http_server max_in_flight zero",
			flow: header + "  api: { type: http_server, address: \"127.0.0.1:0\", max_in_flight: 0 }\n" + httpLinks,
			want: "connectors.api.max_in_flight: max_in_flight is 0, out of range: must be at least 1"},
		{name: "http_server path without slash",
			flow: header + "  api: { type: http_server, address: \"127.0.0.1:0\", path: events }\n" + httpLinks,
			want: "connectors.api.path: \"events\" must start with /"},
		{name: "http_server timeout zero",
			flow: header + "  api: { type: http_server, address: \"127.0.0.1:0\", timeout: 0s }\n" + httpLinks,
			want: "connectors.api.timeout: timeout is 0s, out of range: must be at least 1ms"},
		{name: "http_client without url",
			flow: header + "  call: { type: http_client }\n" + clientLinks,
			want: "5:3: error: connectors.call: missing required option \"url\""},
		{name: "http_client placeholder in the host",
			flow: header + "  call: { type: http_client, url: \"http://{data.host}/x\" }\n" + clientLinks,
			want: "connectors.call.url: "},
		{name: "http_client backoff_max below backoff_initial",
			flow: header + "  call: { type: http_client, url: \"http://127.0.0.1:1/x\", backoff_initial: 10s }\n" + clientLinks,
			want: "connectors.call.backoff_initial: backoff_initial 10s is above backoff_max 5s (the default)"},
		{name: "http_client backoff_max below backoff_initial, both given",
			flow: header + "  call: { type: http_client, url: \"http://127.0.0.1:1/x\", backoff_initial: 2s, backoff_max: 1s }\n" + clientLinks,
			want: "connectors.call.backoff_max: backoff_max 1s is below backoff_initial 2s"},
		{name: "http_client two authorizations",
			flow: header + "  call: { type: http_client, url: \"http://127.0.0.1:1/x\", bearer_token: t, basic_auth_user: u }\n" + clientLinks,
			want: "connectors.call.bearer_token: give at most one of bearer_token, basic_auth and an Authorization header"},
		{name: "http_client max_retries over 100",
			flow: header + "  call: { type: http_client, url: \"http://127.0.0.1:1/x\", max_retries: 101 }\n" + clientLinks,
			want: "connectors.call.max_retries: max_retries is 101, out of range: must be 0 to 100"},
		{name: "valid kv flow with variables",
			flow: "name: parity\nconnectors:\n  in: { type: stdin, codec: \"${FLOWRUN_TEST_CODEC}\" }\n" +
				"  out: { type: file, path: \"${FLOWRUN_TEST_OUT}/out.jsonl\", mode: write }\n" +
				"  store: { type: kv, dir: state, max_group: \"${FLOWRUN_TEST_GROUP}\", max_key_length: 1 }\n" + kvLinks},
		{name: "valid kv flow with max_batch, the former name of max_group",
			flow: header + "  store: { type: kv, dir: state, max_batch: 16 }\n" + kvLinks},
		{name: "valid lua file flow",
			flow:  header + "  store: { type: kv, dir: state }\n  script: { type: lua, file: ok.lua, kv: store, max_stack_slots: 1024 }\n" + luaLinks,
			files: map[string]string{"ok.lua": "-- ${NOT_A_VARIABLE} in a script is Lua's business\nemit('out', event)\n"}},
		{name: "valid inline script with a dollar brace",
			flow: header + "  script: { type: lua, script: \"emit('out', {s = '${NOT_A_VARIABLE}'})\" }\n" + luaLinks},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "flow.yaml")
			if err := os.WriteFile(path, []byte(tc.flow), 0o644); err != nil {
				t.Fatal(err)
			}
			for name, text := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			vcode, vout, verr := runCLI(t, "", "validate", path)
			rcode, _, rerr := runCLI(t, "", "run", path)
			if tc.want == "" {
				if vcode != 0 || rcode != 0 {
					t.Fatalf("valid flow: validate exit %d (%s%s), run exit %d (%s); want both 0", vcode, vout, verr, rcode, rerr)
				}
				return
			}
			if vcode != exitFail || rcode != exitFail {
				t.Fatalf("validate exit %d, run exit %d; want both %d\nvalidate: %s\nrun: %s", vcode, rcode, exitFail, vout, rerr)
			}
			want := path + ":" + tc.want
			if !strings.Contains(tc.want, ": error: ") {
				want = tc.want
			}
			if !strings.Contains(vout, want) {
				t.Errorf("validate printed:\n%s\nwant it to contain %q", vout, want)
			}
			// run stops at the same diagnostic, before opening anything.
			if !strings.Contains(rerr, want) {
				t.Errorf("run printed:\n%s\nwant it to contain %q", rerr, want)
			}
			if _, err := os.Stat(filepath.Join(dir, "state")); err == nil {
				t.Error(fmt.Sprintf("run opened the store of a flow validate refuses (%s exists)", filepath.Join(dir, "state")))
			}
		})
	}
}

// TestValidateJSONSchema checks the documented schema of validate --json:
// one object per line with exactly the lower-case fields file, line, col,
// field, severity (a word) and message.
func TestValidateJSONSchema(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "flow.yaml")
	flow := "name: j\nconnectors:\n  in: { type: stdin }\n  out: { type: stdout }\n  store: { type: kv, dir: state, max_group: 0 }\n" +
		"pipelines:\n  p:\n    - route: { ok: 'true', default: failed }\n" +
		"links:\n  - in -> p\n  - in/err -> out\n  - p/ok -> out\n  - p/err -> out\n"
	if err := os.WriteFile(path, []byte(flow), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCLI(t, "", "validate", "--json", path)
	if code != exitFail {
		t.Fatalf("exit %d, want %d:\n%s", code, exitFail, out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	severities := map[string]bool{}
	for _, line := range lines {
		var obj map[string]any
		if err := json.Unmarshal([]byte(line), &obj); err != nil {
			t.Fatalf("line %q is not JSON: %v", line, err)
		}
		var keys []string
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		if got, want := strings.Join(keys, ","), "col,field,file,line,message,severity"; got != want {
			t.Errorf("fields %s, want %s (line %s)", got, want, line)
		}
		sev, _ := obj["severity"].(string)
		severities[sev] = true
		if obj["file"] != path {
			t.Errorf("file %v, want %s", obj["file"], path)
		}
		if _, ok := obj["line"].(float64); !ok {
			t.Errorf("line is %T, want a number", obj["line"])
		}
	}
	if !severities["error"] || !severities["warning"] || len(severities) != 2 {
		t.Errorf("severities %v, want exactly error and warning", severities)
	}
	if !strings.Contains(out, `"message":"port \"failed\" is not linked`) {
		t.Errorf("no warning for the unlinked route target failed:\n%s", out)
	}
}
