package main

import (
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/connectors/kv/kvbench"
	"github.com/flowrun/flowrun/connectors/kv/partitioned"
	"github.com/flowrun/flowrun/internal/incrflow"
)

// variant is one flow the bench runs once per round.
type variant struct {
	Store     string // storePartitioned, storePebble, storeEtcd, storeBare...
	Instances int
}

func (v variant) String() string {
	if v.Instances == 1 {
		return v.Store
	}
	return fmt.Sprintf("%s x%d", v.Store, v.Instances)
}

// variants lists the runs of one round, in the options' order.
func (o Options) variants() []variant {
	var vs []variant
	for _, f := range o.Flows {
		if f == storePartitioned {
			for _, n := range o.Instances {
				vs = append(vs, variant{Store: f, Instances: n})
			}
			continue
		}
		vs = append(vs, variant{Store: f, Instances: 1})
	}
	return vs
}

// schedule returns the runs of every round: each round runs every
// variant once, starting one further along than the round before, so
// that no flow always runs first or after the same one.
func schedule(vs []variant, rounds int) [][]variant {
	out := make([][]variant, rounds)
	for r := range out {
		for i := range vs {
			out[r] = append(out[r], vs[(r+i)%len(vs)])
		}
	}
	return out
}

// RunResult is one run of one flow.
type RunResult struct {
	Round     int    `json:"round"`
	Flow      string `json:"flow"`
	Instances int    `json:"instances"`
	Events    int    `json:"events"`
	// Seconds from the start of the processes until the last message was
	// answered; FirstSeconds until the first was.
	Seconds      float64 `json:"seconds"`
	FirstSeconds float64 `json:"first_answer_seconds"`
	// CPU time, in seconds, of the flowrun processes and of the NATS and
	// etcd servers over the run (0: not measured).
	FlowrunCPU float64 `json:"flowrun_cpu_seconds"`
	NATSCPU    float64 `json:"nats_cpu_seconds"`
	EtcdCPU    float64 `json:"etcd_cpu_seconds"`
	// Repeated answers (a message answered again from its idempotency
	// record after a redelivery).
	Repeated int `json:"repeated"`
	// What the run stored on the broker, read from its streams before
	// they are deleted (bytes as the broker counts them: subject, headers
	// and data): its answers, and the appends to its changelog streams
	// (partitioned and bare flows).
	AnswerBytes      uint64 `json:"answer_bytes"`
	ChangelogAppends uint64 `json:"changelog_appends"`
	ChangelogBytes   uint64 `json:"changelog_bytes"`
	// Ownership is what the flowrun instances logged of their
	// partitions' leases (partitioned flow).
	Ownership Ownership `json:"ownership"`
}

// EventsPerS is the run's throughput, start to last answer.
func (r RunResult) EventsPerS() float64 { return rate(float64(r.Events), r.Seconds) }

// SteadyPerS is the run's throughput from the first answer to the last:
// without the processes' start (connecting, taking partitions).
func (r RunResult) SteadyPerS() float64 { return rate(float64(r.Events), r.Seconds-r.FirstSeconds) }

// bench is one Run's state.
type bench struct {
	opts Options
	logf func(string, ...any)
	bin  string
	work string
	js   jetstream.JetStream
	etcd *clientv3.Client
	id   string // this run's names start with it
	// in, plainIn and etcdIn are the input subjects of the partitioned
	// (and bare), pebble and etcd flows.
	in, plainIn, etcdIn string
}

// runID returns 20 lowercase hexadecimal digits of a random 80-bit
// number, unique to each Run. (A NUID's first characters are its
// process-wide prefix: two Runs of one process took the same names.)
func runID() string {
	var b [10]byte
	_, _ = crand.Read(b[:]) // never fails (crypto/rand)
	return hex.EncodeToString(b[:])
}

// Run publishes the input, runs every round and returns the report.
func Run(ctx context.Context, opts Options, logf func(string, ...any)) (*Report, error) {
	b := &bench{opts: opts, logf: logf, id: "sb" + runID()}
	rep := &Report{Options: reportOptions(opts), Start: time.Now().UTC(), LoadBefore: loadAverage(), CPUs: cpus()}

	work := opts.Work
	if work == "" {
		d, err := os.MkdirTemp("", "scalebench-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(d)
		work = d
	}
	b.work = work
	b.bin = opts.Flowrun
	if b.bin == "" {
		b.bin = filepath.Join(work, "flowrun")
		logf("building flowrun")
		cmd := exec.CommandContext(ctx, "go", "build", "-o", b.bin, "./cmd/flowrun")
		cmd.Dir = opts.Root
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("go build flowrun in %s: %w\n%s", opts.Root, err, out)
		}
	}

	nc, err := nats.Connect(opts.NATSURLs, nats.Timeout(5*time.Second), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("connect to the NATS cluster at %s: %w", opts.NATSURLs, err)
	}
	defer nc.Close()
	if b.js, err = jetstream.New(nc); err != nil {
		return nil, err
	}
	defer b.deleteInputs()
	if opts.wants(storeEtcd) {
		b.etcd, err = clientv3.New(clientv3.Config{Endpoints: strings.Split(opts.EtcdEndpoints, ","), DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
		if err != nil {
			return nil, fmt.Errorf("etcd at %s: %w", opts.EtcdEndpoints, err)
		}
		defer b.etcd.Close()
	}

	// The input, published once: runs read it through consumers of their
	// own.
	// The partitioned flow reads the partition subjects; the others read
	// one subject through one consumer, as an unpartitioned flow would.
	if opts.wants(storePartitioned) || slices.ContainsFunc(opts.Flows, isBare) {
		b.in = b.id + ".in"
		if err := b.publish(ctx, b.in, opts.Events, opts.Partitions); err != nil {
			return nil, err
		}
	}
	if opts.wants(storePebble) {
		b.plainIn = b.id + ".pin"
		if err := b.publish(ctx, b.plainIn, opts.Events, 0); err != nil {
			return nil, err
		}
	}
	if opts.wants(storeEtcd) {
		b.etcdIn = b.id + ".ein"
		if err := b.publish(ctx, b.etcdIn, opts.EtcdEvents, 0); err != nil {
			return nil, err
		}
	}

	for r, round := range schedule(opts.variants(), opts.Rounds) {
		for _, v := range round {
			res, err := b.runOne(ctx, r+1, v)
			if err != nil {
				return nil, fmt.Errorf("round %d, %v: %w", r+1, v, err)
			}
			logf("round %d/%d, %v: %d events in %.2f s (first answer after %.2f s): %.0f events/s (%.0f after the first answer), flowrun CPU %.1f µs/event, NATS %.1f, etcd %.1f",
				r+1, opts.Rounds, v, res.Events, res.Seconds, res.FirstSeconds, res.EventsPerS(), res.SteadyPerS(),
				perEvent(res.FlowrunCPU, res.Events), perEvent(res.NATSCPU, res.Events), perEvent(res.EtcdCPU, res.Events))
			if v.Store == storePartitioned {
				o := res.Ownership
				logf("round %d/%d, %v: partitions served %d times (max epoch %d), %d owners stopped (%d lost their lease), %d take-overs outlived their lease, %d partitions given back",
					r+1, opts.Rounds, v, o.Serves, o.MaxEpoch, o.Stops, o.LeaseLost, o.Overdue, o.GiveBacks)
			}
			rep.Runs = append(rep.Runs, res)
		}
	}
	rep.End = time.Now().UTC()
	rep.LoadAfter = loadAverage()
	rep.summarize()
	return rep, nil
}

// publish creates the input stream of subject in (deleteInputs deletes
// it) and publishes n increments to its parts partition subjects, or to
// in itself with parts 0.
func (b *bench) publish(ctx context.Context, in string, n, parts int) error {
	sc := inputStream(in, parts)
	if _, err := b.js.CreateStream(ctx, sc); err != nil {
		return fmt.Errorf("create stream %s: %w", sc.Name, err)
	}
	start := time.Now()
	if err := incrflow.Publish(ctx, b.js, in, n, b.opts.Keys, parts); err != nil {
		return err
	}
	b.logf("published %d increments over %d keys to %s in %.1f s", n, b.opts.Keys, sc.Name, time.Since(start).Seconds())
	return nil
}

// inputStream is the stream of input in: its partition subjects, or in
// itself with parts 0.
func inputStream(in string, parts int) jetstream.StreamConfig {
	if parts == 0 {
		return incrflow.PlainInputStream(in)
	}
	return incrflow.InputStream(in)
}

// deleteStream deletes a stream, bounded, whatever the run's context.
func (b *bench) deleteStream(name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := b.js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		b.logf("delete stream %s: %v", name, err)
	}
}

// runOne runs variant v once from a fresh state and fresh consumers.
func (b *bench) runOne(ctx context.Context, round int, v variant) (RunResult, error) {
	res := RunResult{Round: round, Flow: v.Store, Instances: v.Instances, Events: b.opts.Events}
	id := fmt.Sprintf("%sr%d%s%d", b.id, round, v.Store[:1], v.Instances)
	f := incrflow.Flow{
		Name: id, URLs: b.opts.NATSURLs, In: b.in, Out: id + ".out", Durable: "c" + id,
		Window: b.opts.Window, Partitions: b.opts.Partitions, NoIdem: b.opts.NoIdem,
	}
	switch v.Store {
	case storePartitioned, storeBare, storeBareNoAck, storeBareNoLog:
		// The bare flow drives the partitioned flow's traffic: its
		// consumers and changelog streams have the same names.
		f.Store = incrflow.Partitioned
	case storePebble:
		f.Store, f.In = incrflow.Pebble, b.plainIn
	case storeEtcd:
		f.Store, f.In, f.Endpoints, f.Prefix = incrflow.Etcd, b.etcdIn, b.opts.EtcdEndpoints, id+"/"
		res.Events = b.opts.EtcdEvents
	}
	flow, err := f.YAML()
	if err != nil {
		return res, err
	}
	out := incrflow.AnswerStream(f.Out)
	if _, err := b.js.CreateStream(ctx, out); err != nil {
		return res, fmt.Errorf("create stream %s: %w", out.Name, err)
	}
	defer b.cleanup(f, out.Name)
	dir := filepath.Join(b.work, id)
	defer os.RemoveAll(dir)

	rctx, cancel := context.WithTimeout(ctx, b.opts.Timeout)
	defer cancel()
	if isBare(v.Store) {
		return b.runBare(rctx, f, bareParts{noAck: v.Store == storeBareNoAck, noLog: v.Store == storeBareNoLog}, res)
	}
	natsBefore, etcdBefore := cpuOf(b.opts.NATSPids), cpuOf(b.opts.EtcdPids)
	start := time.Now()
	var ins []*incrflow.Instance
	defer func() {
		for i, in := range ins {
			in.Kill() // stopped already unless the run failed
			if b.opts.Logs == "" {
				continue
			}
			// Kept whatever the outcome: a failed run's logs say why.
			name := filepath.Join(b.opts.Logs, fmt.Sprintf("%s-i%d.log", id, i+1))
			if err := os.WriteFile(name, []byte(in.Logs()), 0o644); err != nil {
				b.logf("keep instance %d's log: %v", i+1, err)
			}
		}
	}()
	for i := range v.Instances {
		var args []string
		if b.opts.CPUProfiles != "" {
			prof, err := filepath.Abs(filepath.Join(b.opts.CPUProfiles, fmt.Sprintf("%s-i%d.prof", id, i+1)))
			if err != nil {
				return res, err
			}
			args = []string{"--cpuprofile", prof}
		}
		in, err := incrflow.Start(b.bin, filepath.Join(dir, fmt.Sprintf("i%d", i+1)), flow, args...)
		if err != nil {
			return res, err
		}
		ins = append(ins, in)
	}
	sum, flowrunCPU, err := b.await(rctx, f.Out, res.Events, instancesRunning(ins), func() time.Duration { return cpuOf(pids(ins)) })
	natsAfter, etcdAfter := cpuOf(b.opts.NATSPids), cpuOf(b.opts.EtcdPids)
	if err != nil {
		return res, fmt.Errorf("%w\n%s", err, instanceLogs(ins))
	}
	// What the instances logged of their partitions until the last
	// answer (not the hand-overs of their stopping).
	for _, in := range ins {
		res.Ownership.add(in.Logs())
	}
	// An instance stopped while still starting (it took no partition
	// before the others answered everything) may exit with an error: the
	// figures stand, the log says so.
	for i, in := range ins {
		if err := in.Stop(60 * time.Second); err != nil {
			b.logf("%v, instance %d after SIGTERM: %v; its log ends with: %s", v, i+1, err, lastLine(in.Logs()))
		}
	}
	res.Seconds = sum.Last.At.Sub(start).Seconds()
	res.FirstSeconds = sum.First.At.Sub(start).Seconds()
	res.FlowrunCPU = flowrunCPU.Seconds()
	res.NATSCPU = (natsAfter - natsBefore).Seconds()
	res.EtcdCPU = (etcdAfter - etcdBefore).Seconds()
	res.Repeated = sum.Repeated
	b.traffic(ctx, f, &res)
	return res, nil
}

// runBare runs the bare flow (bare.go) on f's input and answers, as
// runOne runs the others: timed from its start (its consumers and
// changelog streams made, as a flowrun instance makes them once started)
// until the last answer; its CPU is this process's over the run (the
// polling of the answers stream's state included, a few requests a
// second).
func (b *bench) runBare(ctx context.Context, f incrflow.Flow, parts bareParts, res RunResult) (RunResult, error) {
	natsBefore, etcdBefore := cpuOf(b.opts.NATSPids), cpuOf(b.opts.EtcdPids)
	self := []int{os.Getpid()}
	cpuBefore := cpuOf(self)
	start := time.Now()
	bare, err := b.startBare(ctx, f, parts)
	if err != nil {
		return res, err
	}
	defer bare.stop()
	sum, cpu, err := b.await(ctx, f.Out, res.Events, bare.failed, func() time.Duration { return cpuOf(self) - cpuBefore })
	natsAfter, etcdAfter := cpuOf(b.opts.NATSPids), cpuOf(b.opts.EtcdPids)
	if err != nil {
		return res, err
	}
	res.Seconds = sum.Last.At.Sub(start).Seconds()
	res.FirstSeconds = sum.First.At.Sub(start).Seconds()
	res.FlowrunCPU = cpu.Seconds()
	res.NATSCPU = (natsAfter - natsBefore).Seconds()
	res.EtcdCPU = (etcdAfter - etcdBefore).Seconds()
	res.Repeated = sum.Repeated
	b.traffic(ctx, f, &res)
	return res, nil
}

// instancesRunning returns await's check of flowrun instances: an error
// once one of them has exited.
func instancesRunning(ins []*incrflow.Instance) func() error {
	return func() error {
		for i, in := range ins {
			if exited, err := in.Exited(); exited {
				return fmt.Errorf("instance %d exited before every message was answered: %v", i+1, err)
			}
		}
		return nil
	}
}

// traffic fills res's figures of what the run stored on the broker: its
// answers stream's and changelog streams' bytes and messages. A stream it
// cannot read counts nothing.
func (b *bench) traffic(ctx context.Context, f incrflow.Flow, res *RunResult) {
	state := func(name string) (msgs, bytes uint64) {
		s, err := b.js.Stream(ctx, name)
		if err != nil {
			return 0, 0
		}
		st := s.CachedInfo().State
		return st.Msgs, st.Bytes
	}
	_, res.AnswerBytes = state(bus.StreamName(f.Out))
	if f.Store != incrflow.Partitioned {
		return
	}
	for p := range f.Partitions {
		name, _ := partitioned.ChangelogStream(f.Name, p)
		msgs, bytes := state(name)
		res.ChangelogAppends += msgs
		res.ChangelogBytes += bytes
	}
}

// await waits until every one of n messages is answered on out, checks
// the answers, and returns what Check found and the flow's CPU time
// (cpu) when the last answer was in. It polls the answers stream's count
// (cheap for the broker, nothing to decode) and reads the answers once
// there are enough of them; a failure running reports ends the wait.
func (b *bench) await(ctx context.Context, out string, n int, running func() error, cpu func() time.Duration) (incrflow.Summary, time.Duration, error) {
	reader, err := incrflow.NewReader(ctx, b.js, out)
	if err != nil {
		return incrflow.Summary{}, 0, err
	}
	stream, err := b.js.Stream(ctx, bus.StreamName(out))
	if err != nil {
		return incrflow.Summary{}, 0, err
	}
	var answers []incrflow.Answer
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return incrflow.Summary{}, 0, fmt.Errorf("%d of %d messages answered: %w", len(answers), n, ctx.Err())
		case <-tick.C:
		}
		if err := running(); err != nil {
			return incrflow.Summary{}, 0, err
		}
		info, err := stream.Info(ctx)
		if err != nil || info.State.Msgs < uint64(n) {
			continue
		}
		used := cpu()
		for reader.LastSeq() < info.State.LastSeq {
			if answers, err = reader.Fetch(answers, 4096, time.Second); errors.Is(err, incrflow.ErrBadAnswer) {
				return incrflow.Summary{}, 0, err
			}
			if ctx.Err() != nil {
				break
			}
		}
		sum, err := incrflow.Check(answers, n, b.opts.Keys)
		if errors.Is(err, incrflow.ErrIncomplete) {
			continue // repeated answers: some messages are not answered yet
		}
		return sum, used, err
	}
}

// cleanup deletes what a run made on the clusters: its answers stream,
// its consumers, its changelog and lease streams, its etcd keys.
func (b *bench) cleanup(f incrflow.Flow, answers string) {
	b.deleteStream(answers)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	input := bus.StreamName(f.In)
	if f.Store == incrflow.Partitioned {
		input = bus.PartitionStreamName(f.In)
	}
	switch f.Store {
	case incrflow.Partitioned:
		for p := range f.Partitions {
			_ = b.js.DeleteConsumer(ctx, input, bus.PartitionDurable(f.Durable, p))
			s, _ := partitioned.ChangelogStream(f.Name, p)
			b.deleteStream(s)
		}
		b.deleteStream(partitioned.LeaseStream(f.Name))
	case incrflow.Etcd:
		if _, err := b.etcd.Delete(ctx, f.Prefix, clientv3.WithPrefix()); err != nil {
			b.logf("delete the etcd keys under %s: %v", f.Prefix, err)
		}
		fallthrough
	default:
		_ = b.js.DeleteConsumer(ctx, input, f.Durable)
	}
}

// deleteInputs deletes the input streams.
func (b *bench) deleteInputs() {
	if b.in != "" {
		b.deleteStream(bus.PartitionStreamName(b.in))
	}
	for _, in := range []string{b.plainIn, b.etcdIn} {
		if in != "" {
			b.deleteStream(bus.StreamName(in))
		}
	}
}

func pids(ins []*incrflow.Instance) []int {
	out := make([]int, len(ins))
	for i, in := range ins {
		out[i] = in.Pid()
	}
	return out
}

// cpuOf sums the CPU time of processes (those it cannot read count 0).
func cpuOf(pids []int) time.Duration {
	var sum time.Duration
	for _, pid := range pids {
		if d, ok := kvbench.ProcCPU(pid); ok {
			sum += d
		}
	}
	return sum
}

// instanceLogs returns the tail of each instance's log, for an error.
func instanceLogs(ins []*incrflow.Instance) string {
	var sb strings.Builder
	for i, in := range ins {
		l := in.Logs()
		if len(l) > 3000 {
			l = "..." + l[len(l)-3000:]
		}
		fmt.Fprintf(&sb, "instance %d's log:\n%s\n", i+1, l)
	}
	return sb.String()
}

// lastLine returns the last non-empty line of s.
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// loadAverage returns the first three fields of /proc/loadavg.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return ""
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return ""
	}
	return strings.Join(f[:3], " ")
}
