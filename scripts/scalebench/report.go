package main

import (
	"fmt"
	"io"
	"runtime"
	"text/tabwriter"
	"time"
)

// Report is what a Run measured.
type Report struct {
	Options    ReportOptions `json:"options"`
	Start      time.Time     `json:"start"`
	End        time.Time     `json:"end"`
	LoadBefore string        `json:"load_before"` // /proc/loadavg's 1, 5, 15 minutes
	LoadAfter  string        `json:"load_after"`
	CPUs       int           `json:"cpus"`
	Runs       []RunResult   `json:"runs"`
	Rows       []Row         `json:"rows"`
	Ratios     []Ratio       `json:"ratios"`
}

// ReportOptions are the options that shape the figures.
type ReportOptions struct {
	Events     int  `json:"events"`
	EtcdEvents int  `json:"etcd_events"`
	Keys       int  `json:"keys"`
	Partitions int  `json:"partitions"`
	Rounds     int  `json:"rounds"`
	Window     int  `json:"window"`
	Idem       bool `json:"idem"`
}

func reportOptions(o Options) ReportOptions {
	return ReportOptions{Events: o.Events, EtcdEvents: o.EtcdEvents, Keys: o.Keys, Partitions: o.Partitions,
		Rounds: o.Rounds, Window: o.Window, Idem: !o.NoIdem}
}

// Row sums the runs of one flow over every round.
type Row struct {
	Flow      string `json:"flow"`
	Instances int    `json:"instances"`
	Runs      int    `json:"runs"`
	Events    int    `json:"events"` // over every run
	// EventsPerS is Events over the summed run times (start to last
	// answer).
	EventsPerS float64 `json:"events_per_s"`
	// FirstAnswerS is the mean time from start to the first answer;
	// SteadyPerS is Events over the summed times from the first answer
	// to the last (without the processes' start).
	FirstAnswerS float64 `json:"first_answer_s"`
	SteadyPerS   float64 `json:"events_per_s_after_first_answer"`
	// CPU microseconds per event: the flowrun processes', the NATS
	// servers', the etcd servers' (0: not measured).
	FlowrunCPUus float64 `json:"flowrun_cpu_us_per_event"`
	NATSCPUus    float64 `json:"nats_cpu_us_per_event"`
	EtcdCPUus    float64 `json:"etcd_cpu_us_per_event"`
	// PerCore is the events per second one core of flowrun CPU handles,
	// 1e6 / FlowrunCPUus: the rate N machines approach, N x PerCore x
	// their cores, while the servers keep up.
	PerCore  float64 `json:"events_per_s_per_flowrun_core"`
	Repeated int     `json:"repeated"`
	// What the flow stored on the broker per event: answer bytes, and
	// changelog bytes and events per changelog append (0: no changelog).
	AnswerBytes     float64 `json:"answer_bytes_per_event"`
	ChangelogBytes  float64 `json:"changelog_bytes_per_event"`
	EventsPerAppend float64 `json:"events_per_changelog_append"`
}

// Ratio is one comparison of two rows.
type Ratio struct {
	Name   string  `json:"name"`
	Value  float64 `json:"value"`
	Target string  `json:"target,omitempty"`
}

// summarize fills Rows and Ratios from Runs.
func (r *Report) summarize() {
	r.Rows = summarizeRuns(r.Runs)
	r.Ratios = ratios(r.Rows)
}

// summarizeRuns sums the runs of each flow, in the order first run.
func summarizeRuns(runs []RunResult) []Row {
	type acc struct {
		row                     Row
		secs, first, fcpu, n, e float64
		ans, cl, appends        uint64
	}
	byFlow := map[variant]*acc{}
	var order []variant
	for _, run := range runs {
		v := variant{Store: run.Flow, Instances: run.Instances}
		a, ok := byFlow[v]
		if !ok {
			a = &acc{row: Row{Flow: run.Flow, Instances: run.Instances}}
			byFlow[v] = a
			order = append(order, v)
		}
		a.row.Runs++
		a.row.Events += run.Events
		a.row.Repeated += run.Repeated
		a.secs += run.Seconds
		a.first += run.FirstSeconds
		a.fcpu += run.FlowrunCPU
		a.n += run.NATSCPU
		a.e += run.EtcdCPU
		a.ans += run.AnswerBytes
		a.cl += run.ChangelogBytes
		a.appends += run.ChangelogAppends
	}
	rows := make([]Row, 0, len(order))
	for _, v := range order {
		a := byFlow[v]
		row := a.row
		row.EventsPerS = rate(float64(row.Events), a.secs)
		row.FirstAnswerS = a.first / float64(row.Runs)
		row.SteadyPerS = rate(float64(row.Events), a.secs-a.first)
		row.FlowrunCPUus = perEvent(a.fcpu, row.Events)
		row.NATSCPUus = perEvent(a.n, row.Events)
		row.EtcdCPUus = perEvent(a.e, row.Events)
		row.PerCore = rate(1e6, row.FlowrunCPUus)
		row.AnswerBytes = rate(float64(a.ans), float64(row.Events))
		row.ChangelogBytes = rate(float64(a.cl), float64(row.Events))
		row.EventsPerAppend = rate(float64(row.Events), float64(a.appends))
		rows = append(rows, row)
	}
	return rows
}

// ratios compares the rows: partitioned against etcd (target 20) and
// against itself with one instance (throughput, and CPU per event, which
// should stay about 1), partitioned with one instance against
// unpartitioned Pebble (the changelog's cost, target 0.5), and the bare
// flow (the broker's ceiling) against etcd and partitioned with one
// instance against it (the share of the ceiling reached). A comparison
// with a missing or empty side is left out.
func ratios(rows []Row) []Ratio {
	find := func(flow string, n int) (Row, bool) {
		for _, r := range rows {
			if r.Flow == flow && r.Instances == n && r.EventsPerS > 0 {
				return r, true
			}
		}
		return Row{}, false
	}
	var out []Ratio
	add := func(name string, num, den float64, target string) {
		if num > 0 && den > 0 {
			out = append(out, Ratio{Name: name, Value: num / den, Target: target})
		}
	}
	etcd, hasEtcd := find(storeEtcd, 1)
	one, hasOne := find(storePartitioned, 1)
	for _, r := range rows {
		if r.Flow != storePartitioned || r.EventsPerS == 0 {
			continue
		}
		if hasEtcd {
			add(fmt.Sprintf("partitioned x%d / etcd, events/s", r.Instances), r.EventsPerS, etcd.EventsPerS, ">= 20")
		}
		if hasOne && r.Instances != 1 {
			add(fmt.Sprintf("partitioned x%d / x1, events/s", r.Instances), r.EventsPerS, one.EventsPerS, "")
			add(fmt.Sprintf("partitioned x%d / x1, flowrun CPU per event", r.Instances), r.FlowrunCPUus, one.FlowrunCPUus, "about 1")
		}
	}
	if peb, ok := find(storePebble, 1); ok && hasOne {
		add("partitioned x1 / pebble, events/s (the changelog's cost)", one.EventsPerS, peb.EventsPerS, ">= 0.5")
		add("partitioned x1 / pebble, flowrun CPU per event", one.FlowrunCPUus, peb.FlowrunCPUus, "")
	}
	if bare, ok := find(storeBare, 1); ok {
		if hasEtcd {
			add("bare / etcd, events/s (the broker's ceiling on this machine)", bare.EventsPerS, etcd.EventsPerS, "")
		}
		if hasOne {
			add("partitioned x1 / bare, events/s", one.EventsPerS, bare.EventsPerS, "")
			add("partitioned x1 / bare, NATS CPU per event", one.NATSCPUus, bare.NATSCPUus, "about 1")
		}
	}
	return out
}

// Print writes the report as text: the conditions, one row per flow, the
// ratios.
func (r *Report) Print(w io.Writer) {
	o := r.Options
	idem := "idem_from: message_id"
	if !o.Idem {
		idem = "no idempotency keys"
	}
	fmt.Fprintf(w, "# %s to %s, %d CPUs, load average %s before, %s after\n",
		r.Start.Format(time.RFC3339), r.End.Format("15:04:05"), r.CPUs, r.LoadBefore, r.LoadAfter)
	fmt.Fprintf(w, "# %d increments over %d keys (etcd: %d), %d partitions, window %d, %s, %d rounds\n",
		o.Events, o.Keys, o.EtcdEvents, o.Partitions, o.Window, idem, o.Rounds)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(tw, "flow\tinstances\truns\tevents\tevents/s\tfirst answer s\tevents/s after it\tflowrun CPU µs/event\tNATS CPU µs/event\tetcd CPU µs/event\tevents/s per flowrun core\trepeated\tanswer B/event\tchangelog B/event\tevents/append\t\n")
	for _, row := range r.Rows {
		fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%.0f\t%.2f\t%.0f\t%s\t%s\t%s\t%.0f\t%d\t%.0f\t%.0f\t%.1f\t\n", row.Flow, row.Instances, row.Runs, row.Events,
			row.EventsPerS, row.FirstAnswerS, row.SteadyPerS, cpuCell(row.FlowrunCPUus), cpuCell(row.NATSCPUus), cpuCell(row.EtcdCPUus), row.PerCore, row.Repeated,
			row.AnswerBytes, row.ChangelogBytes, row.EventsPerAppend)
	}
	tw.Flush()
	for _, ra := range r.Ratios {
		target := ""
		if ra.Target != "" {
			target = " (target " + ra.Target + ")"
		}
		fmt.Fprintf(w, "%s: %.2f%s\n", ra.Name, ra.Value, target)
	}
}

func cpuCell(us float64) string {
	if us == 0 {
		return "-"
	}
	return fmt.Sprintf("%.1f", us)
}

// rate returns n / d, 0 when d is not positive.
func rate(n, d float64) float64 {
	if d <= 0 {
		return 0
	}
	return n / d
}

// perEvent returns seconds of CPU per event in microseconds.
func perEvent(seconds float64, events int) float64 {
	return rate(seconds*1e6, float64(events))
}

func cpus() int { return runtime.NumCPU() }
