package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/internal/natstest"
	"github.com/flowrun/flowrun/internal/proctest"
)

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		check   func(Options) bool
		wantErr string
	}{
		{name: "defaults", args: nil, check: func(o Options) bool {
			return o.Events == 100_000 && o.EtcdEvents == 10_000 && slices.Equal(o.Instances, []int{1, 2, 3}) && len(o.Flows) == 4 && o.wants(storeBare) && o.Rounds == 3
		}},
		{name: "instances and flows", args: []string{"-instances", "3, 1", "-flows", "partitioned,etcd"}, check: func(o Options) bool {
			return slices.Equal(o.Instances, []int{3, 1}) && slices.Equal(o.Flows, []string{"partitioned", "etcd"})
		}},
		{name: "no etcd: etcd-events not bound by keys", args: []string{"-flows", "partitioned", "-keys", "500", "-events", "1000", "-etcd-events", "100"},
			check: func(o Options) bool { return !o.wants(storeEtcd) }},
		{name: "zero instances", args: []string{"-instances", "0"}, wantErr: `"0" is not a positive count`},
		{name: "instances twice", args: []string{"-instances", "1,2,1"}, wantErr: "1 given twice"},
		{name: "not a number", args: []string{"-instances", "two"}, wantErr: `"two" is not a positive count`},
		{name: "unknown flow", args: []string{"-flows", "redis"}, wantErr: `unknown flow "redis"`},
		{name: "no flow", args: []string{"-flows", ","}, wantErr: "-flows names no flow"},
		{name: "more keys than events", args: []string{"-keys", "300000", "-etcd-events", "400000"}, wantErr: "-keys (300000) must not exceed"},
		{name: "more keys than etcd events", args: []string{"-keys", "30000"}, wantErr: "-keys (30000) must not exceed"},
		{name: "negative rounds", args: []string{"-rounds", "-1"}, wantErr: "-rounds must be positive"},
		{name: "bare group zero", args: []string{"-bare-group", "0"}, wantErr: "-bare-group must be positive"},
		{name: "bare without idem", args: []string{"-no-idem"}, wantErr: "run it without -no-idem"},
		{name: "bare parts", args: []string{"-flows", "bare-noack,bare-nolog,bare"}, check: func(o Options) bool {
			return slices.Equal(o.Flows, []string{storeBareNoAck, storeBareNoLog, storeBare})
		}},
		{name: "bare part without idem", args: []string{"-flows", "bare-nolog", "-no-idem"}, wantErr: "run it without -no-idem"},
		{name: "no idem without bare", args: []string{"-no-idem", "-flows", "partitioned"}, check: func(o Options) bool { return o.NoIdem }},
		{name: "arguments", args: []string{"extra"}, wantErr: "unexpected arguments"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o, err := parseFlags(tt.args, io.Discard)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parseFlags(%q): %v, want an error saying %q", tt.args, err, tt.wantErr)
				}
				return
			}
			if err != nil || !tt.check(o) {
				t.Fatalf("parseFlags(%q) = %+v, %v", tt.args, o, err)
			}
		})
	}
}

func TestBadFlagsExitTwo(t *testing.T) {
	var stderr bytes.Buffer
	if code := run(context.Background(), []string{"-rounds", "0"}, io.Discard, &stderr); code != 2 {
		t.Fatalf("exit code %d, want 2; stderr %s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "-rounds must be positive") {
		t.Fatalf("stderr %q does not name the flag", stderr.String())
	}
}

func TestSchedule(t *testing.T) {
	vs := defaultOptions().variants()
	want := []variant{{storePartitioned, 1}, {storePartitioned, 2}, {storePartitioned, 3}, {storePebble, 1}, {storeEtcd, 1}, {storeBare, 1}}
	if !slices.Equal(vs, want) {
		t.Fatalf("variants %v, want %v", vs, want)
	}
	s := schedule(vs, 3)
	for r, round := range s {
		// Every variant once per round, starting one further along.
		if len(round) != len(vs) || round[0] != vs[r] {
			t.Fatalf("round %d: %v", r, round)
		}
		seen := map[variant]bool{}
		for _, v := range round {
			seen[v] = true
		}
		if len(seen) != len(vs) {
			t.Fatalf("round %d runs %v: not every variant once", r, round)
		}
	}
}

func near(a, b float64) bool { return math.Abs(a-b) <= 1e-9*math.Max(1, math.Abs(b)) }

// TestSummary checks the arithmetic of rows and ratios on made-up runs:
// rates are events over summed times, CPU per event is summed CPU over
// summed events, ratios divide rows.
func TestSummary(t *testing.T) {
	runs := []RunResult{
		{Round: 1, Flow: storePartitioned, Instances: 1, Events: 1000, Seconds: 1, FirstSeconds: 0.5, FlowrunCPU: 0.05, NATSCPU: 0.1},
		{Round: 2, Flow: storePartitioned, Instances: 1, Events: 1000, Seconds: 3, FirstSeconds: 0.5, FlowrunCPU: 0.07, NATSCPU: 0.1},
		{Round: 1, Flow: storePartitioned, Instances: 2, Events: 1000, Seconds: 1, FirstSeconds: 0.2, FlowrunCPU: 0.03},
		{Round: 2, Flow: storePartitioned, Instances: 2, Events: 1000, Seconds: 1, FirstSeconds: 0.2, FlowrunCPU: 0.03},
		{Round: 1, Flow: storePebble, Instances: 1, Events: 1000, Seconds: 0.5, FlowrunCPU: 0.03},
		{Round: 1, Flow: storeEtcd, Instances: 1, Events: 100, Seconds: 1, FlowrunCPU: 0.02, EtcdCPU: 0.04, Repeated: 3},
		{Round: 1, Flow: storeBare, Instances: 1, Events: 1000, Seconds: 0.25, FlowrunCPU: 0.01, NATSCPU: 0.08,
			AnswerBytes: 240_000, ChangelogAppends: 40, ChangelogBytes: 150_000},
	}
	rows := summarizeRuns(runs)
	if len(rows) != 5 {
		t.Fatalf("%d rows, want 5: %+v", len(rows), rows)
	}
	p1 := rows[0]
	if p1.Runs != 2 || p1.Events != 2000 || !near(p1.EventsPerS, 500) || !near(p1.FirstAnswerS, 0.5) ||
		!near(p1.SteadyPerS, 2000/3.0) || !near(p1.FlowrunCPUus, 60) || !near(p1.NATSCPUus, 100) ||
		p1.EtcdCPUus != 0 || !near(p1.PerCore, 1e6/60) {
		t.Fatalf("partitioned x1: %+v", p1)
	}
	if e := rows[3]; e.Flow != storeEtcd || !near(e.EventsPerS, 100) || !near(e.EtcdCPUus, 400) || e.Repeated != 3 {
		t.Fatalf("etcd: %+v", e)
	}
	if b := rows[4]; b.Flow != storeBare || !near(b.EventsPerS, 4000) || !near(b.NATSCPUus, 80) || !near(b.AnswerBytes, 240) ||
		!near(b.ChangelogBytes, 150) || !near(b.EventsPerAppend, 25) {
		t.Fatalf("bare: %+v", b)
	}
	got := map[string]float64{}
	for _, r := range ratios(rows) {
		got[r.Name] = r.Value
	}
	want := map[string]float64{
		"partitioned x1 / etcd, events/s":                              5,
		"partitioned x2 / etcd, events/s":                              10,
		"partitioned x2 / x1, events/s":                                2,
		"partitioned x2 / x1, flowrun CPU per event":                   0.5,
		"partitioned x1 / pebble, events/s (the changelog's cost)":     0.25,
		"partitioned x1 / pebble, flowrun CPU per event":               2,
		"bare / etcd, events/s (the broker's ceiling on this machine)": 40,
		"partitioned x1 / bare, events/s":                              0.125,
		"partitioned x1 / bare, NATS CPU per event":                    1.25,
	}
	if len(got) != len(want) {
		t.Fatalf("ratios %v, want %v", got, want)
	}
	for k, v := range want {
		if !near(got[k], v) {
			t.Fatalf("%s = %v, want %v (all: %v)", k, got[k], v, got)
		}
	}

	// Without etcd and pebble runs, only the instance ratios remain.
	for _, r := range ratios(rows[:2]) {
		if strings.Contains(r.Name, "etcd") || strings.Contains(r.Name, "pebble") || strings.Contains(r.Name, "bare") {
			t.Fatalf("ratio %q without its runs", r.Name)
		}
	}

	rep := &Report{Runs: runs, CPUs: 2, LoadBefore: "1.00 2.00 3.00"}
	rep.summarize()
	var out bytes.Buffer
	rep.Print(&out)
	for _, s := range []string{"load average 1.00 2.00 3.00", "partitioned x1 / pebble, events/s (the changelog's cost): 0.25 (target >= 0.5)",
		"partitioned x2 / etcd, events/s: 10.00 (target >= 20)"} {
		if !strings.Contains(out.String(), s) {
			t.Fatalf("report does not say %q:\n%s", s, out.String())
		}
	}
	if _, err := json.Marshal(rep); err != nil {
		t.Fatalf("report as JSON: %v", err)
	}
}

// TestTinyRun runs every flow once on a few hundred increments against
// the clusters named by FLOWRUN_NATS_CLUSTER_URLS and
// FLOWRUN_ETCD_ENDPOINTS (skipped without them): every run answers every
// message, exactly once (Run checks it), and the report has a row per
// flow. Nothing about speed is asserted.
func TestTinyRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts flowrun processes; skipped with -short")
	}
	urls := natstest.ClusterURLs(t)
	endpoints := os.Getenv("FLOWRUN_ETCD_ENDPOINTS")
	flows := "partitioned,pebble,etcd,bare"
	if endpoints == "" {
		t.Log("FLOWRUN_ETCD_ENDPOINTS is not set: the etcd flow is left out")
		flows = "partitioned,pebble,bare"
	}
	opts, err := parseFlags([]string{"-events", "400", "-keys", "40", "-etcd-events", "80", "-partitions", "4",
		"-instances", "1,2", "-rounds", "1", "-flows", flows, "-timeout", "3m"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	opts.Flowrun = proctest.BuildFlowrun(t, work)
	opts.Work = work
	opts.NATSURLs, opts.EtcdEndpoints = urls, endpoints
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	rep, err := Run(ctx, opts, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	if want := len(opts.variants()); len(rep.Runs) != want || len(rep.Rows) != want {
		t.Fatalf("%d runs, %d rows, want %d", len(rep.Runs), len(rep.Rows), want)
	}
	for _, r := range rep.Runs {
		if r.Seconds <= 0 || r.FirstSeconds <= 0 || r.FirstSeconds > r.Seconds || r.FlowrunCPU <= 0 {
			t.Fatalf("run %+v: times or CPU not measured", r)
		}
		// Every partition was served, as flowrun's own log lines say.
		if r.Flow == storePartitioned && r.Ownership.Serves < opts.Partitions {
			t.Fatalf("run %+v: %d partitions served by the instances' logs, want at least %d", r, r.Ownership.Serves, opts.Partitions)
		}
	}
	var out bytes.Buffer
	rep.Print(&out)
	t.Logf("\n%s", out.String())
}

func TestOwnershipCountsLogLines(t *testing.T) {
	// Lines as connectors/kv/partitioned's runtime writes them through
	// flowrun's text logger.
	const (
		serve = `time=2026-12-04T17:40:00.000Z level=INFO msg="partitioned: serving a partition" group=g instance=i1 partition=3 epoch=%d restored_records=0`
		lost  = `time=2026-12-04T17:40:01.000Z level=WARN msg="partitioned: partition stopped" group=g instance=i1 partition=3 error="lease \"p.003\": lease lost: deadline passed without a renewal"`
		store = `time=2026-12-04T17:40:01.000Z level=WARN msg="partitioned: partition stopped" group=g instance=i1 partition=4 error="partition 4: the store failed: disk full"`
		late  = `time=2026-12-04T17:40:02.000Z level=WARN msg="partitioned: the take-over of a partition outlived its lease, starting it again" group=g partition=5 epoch=40`
		back  = `time=2026-12-04T17:40:03.000Z level=INFO msg="partitioned: giving a partition back" group=g instance=i1 partition=11 members=2 aim=6`
		other = `time=2026-12-04T17:40:04.000Z level=INFO msg="flow started" epoch=999`
	)
	tests := []struct {
		name string
		logs []string // one per instance
		want Ownership
	}{
		{name: "empty", logs: []string{""}, want: Ownership{}},
		{name: "one serve", logs: []string{fmt.Sprintf(serve, 7)}, want: Ownership{Serves: 1, MaxEpoch: 7}},
		{name: "losses and take-overs over instances",
			logs: []string{
				strings.Join([]string{fmt.Sprintf(serve, 7), lost, fmt.Sprintf(serve, 300), store, other}, "\n") + "\n",
				strings.Join([]string{fmt.Sprintf(serve, 12), late, back}, "\n"),
			},
			want: Ownership{Serves: 3, MaxEpoch: 300, Stops: 2, LeaseLost: 1, Overdue: 1, GiveBacks: 1}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var o Ownership
			for _, l := range tt.logs {
				o.add(l)
			}
			if o != tt.want {
				t.Errorf("got %+v, want %+v", o, tt.want)
			}
		})
	}
}

// TestRunIDsDiffer: every Run of one process names its streams and
// groups apart from the others'.
func TestRunIDsDiffer(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := runID()
		if seen[id] {
			t.Fatalf("run id %q given twice", id)
		}
		seen[id] = true
	}
}
