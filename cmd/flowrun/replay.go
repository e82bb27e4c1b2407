package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/flowrun/flowrun/connectors/jsonl"
	"github.com/flowrun/flowrun/connectors/kv/pebblestore"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/replay"
	"github.com/flowrun/flowrun/pipeline"
)

// replayMemTableBytes is the memtable size of the Pebble stores a replay
// opens, instead of pebblestore.DefaultMemTableBytes (16 MiB). Up to two
// memtables are in memory at once (one filling, one flushing), and on a
// fresh store they were most of a replay's memory besides the Go heap:
// 1,000,000 puts peak at ~20 MB less private memory with 8 MiB, at the same
// CPU time (docs/performance.md, replay). Durability does not depend on it:
// every write is in the synced write-ahead log before its result is
// written.
const replayMemTableBytes = 8 << 20

type replayFlags struct {
	source    string
	keepSinks bool
	strict    bool
	quiet     bool
	metrics   string
}

func newReplayCommand(e env) *cobra.Command {
	var f replayFlags
	cmd := &cobra.Command{
		Use:   "replay FLOW.yaml INPUT.jsonl",
		Short: "Run recorded events through a flow and print what reaches its sinks",
		Long: `Feed each line of INPUT.jsonl ({"data": <any JSON>, "meta": {...}}), in order,
into the flow's source and print every event reaching a sink as one JSON line
{"sink": NAME, "data": ..., "meta": ...}. The flow's real sinks are replaced by
this capture unless --keep-sinks. Use - as INPUT to read standard input.

Output order is deterministic: events appear in the order of the input lines
they derive from, then in sink declaration order. A malformed input line is
handled as flowrun run handles it: an event carrying the error, with its
line number, goes to the source's err port (to its sink when linked, else
logged). --strict instead stops at the first malformed line, exit 1, the
error printed once. Progress goes to stderr: a progress bar on a terminal,
otherwise a plain line every 5 seconds (bytes read, events, rate); a summary
line is printed at the end, counting the events that reached each sink and
the malformed lines. -q turns both off.`,
		Args: exactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx, stop := signalContext(cmd.Context(), e)
			defer stop()
			return runReplay(ctx, e, args[0], args[1], f)
		},
	}
	cmd.Flags().StringVar(&f.source, "source", "", "source to feed when the flow has several")
	cmd.Flags().BoolVar(&f.keepSinks, "keep-sinks", false, "send events to the flow's real sinks instead of stdout")
	cmd.Flags().BoolVar(&f.strict, "strict", false, "stop with exit 1 at the first malformed input line")
	cmd.Flags().BoolVarP(&f.quiet, "quiet", "q", false, "no progress and no summary")
	cmd.Flags().StringVar(&f.metrics, "metrics-addr", "", "serve Prometheus metrics at http://`HOST:PORT`/metrics while replaying")
	return cmd
}

// countingReader counts bytes read, for progress.
type countingReader struct {
	r io.Reader
	n atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func runReplay(ctx context.Context, e env, flowPath, inputPath string, f replayFlags) error {
	flow, err := loadFlow(e, flowPath)
	if err != nil {
		return err
	}
	source := f.source
	if source == "" {
		sources := flow.Sources()
		switch len(sources) {
		case 0:
			return fmt.Errorf("flow %s has no source to feed", flow.Name)
		case 1:
			source = sources[0]
		default:
			return usageError{fmt.Errorf("flow %s has several sources %v: choose one with --source", flow.Name, sources)}
		}
	}
	var input io.Reader = e.stdin
	var size int64 = -1
	if inputPath != "-" {
		file, err := os.Open(inputPath)
		if err != nil {
			return err
		}
		defer file.Close()
		if st, err := file.Stat(); err == nil {
			size = st.Size()
		}
		input = file
	}
	counter := &countingReader{r: input}

	var malformed atomic.Uint64
	var strictErr atomic.Pointer[error]
	inputName := inputPath // names the line in errors
	if inputPath == "-" {
		inputName = "stdin"
	}
	reader := jsonl.NewReader(counter, jsonl.ReaderOptions{
		Name:       inputName,
		FlushEvery: replay.SliceEvents,
		OnError: func(ev pipeline.Event, lerr error) error {
			malformed.Add(1)
			if f.strict {
				strictErr.Store(&lerr)
				return lerr
			}
			return nil
		},
	})

	var capture *replay.Capture
	var inner pipeline.Source = reader
	if f.strict {
		// The malformed line stops the replay and is reported once, as
		// its error: it is not passed on to the err port as well.
		inner = withoutErr{reader}
	}
	src := &replay.WindowedSource{Inner: inner}
	opts := flows.BuildOptions{
		Stdin:         e.stdin,
		Stdout:        e.stdout,
		ReplaceSource: source,
		Source:        src,
	}
	obs, err := newObserver(e, f.metrics, &opts)
	if err != nil {
		return err
	}
	defer obs.close()
	pebblestore.PoolOf(opts.Resources).SetMemTableBytes(replayMemTableBytes)
	obs.lifecycle = slog.LevelDebug
	if !f.keepSinks {
		capture = replay.NewCapture(e.stdout)
		src.Capture = capture
		opts.Capture = capture.Sink
	}
	built, err := flow.Build(ctx, opts)
	if err != nil {
		return err
	}

	obs.started(flow, flowPath, built.Graph)
	stopProgress := startProgress(e, f.quiet, progress{
		what: "replay", size: size, bytes: &counter.n,
		items: func() uint64 { return sourceEvents(built.Graph) },
	})
	start := time.Now()
	runErr := built.Run(ctx)
	stopProgress()
	if strictErr.Load() != nil {
		runErr = nil // reported once, below
	}
	obs.stopped(flow.Name, built.Graph, runErr)
	if capture != nil {
		if err := capture.Release(); err != nil && runErr == nil {
			runErr = err
		}
	}
	if p := strictErr.Load(); p != nil {
		return fmt.Errorf("replay stopped at a malformed line (--strict): %w", *p)
	}
	if runErr != nil {
		return runErr
	}
	if !f.quiet {
		printSummary(e, flow.Sinks(), built.Graph, malformed.Load(), time.Since(start))
	}
	return nil
}

// withoutErr is a source whose "err" events are dropped.
type withoutErr struct{ pipeline.Source }

func (s withoutErr) Run(ctx context.Context, emit pipeline.SourceEmitter) error {
	return s.Source.Run(ctx, errDropper{emit})
}

type errDropper struct{ pipeline.SourceEmitter }

func (d errDropper) Emit(port string, ev pipeline.Event) {
	if port != pipeline.PortErr {
		d.SourceEmitter.Emit(port, ev)
	}
}

// printSummary writes one line: the events read, the rate, how many events
// reached each sink, in declaration order, and the malformed input lines,
// as in "replayed 11 events in 5ms (2200 events/s); reached results: 10,
// errors: 1; 0 malformed lines".
func printSummary(e env, sinks []string, g *pipeline.Graph, malformed uint64, elapsed time.Duration) {
	received := map[string]uint64{}
	for _, c := range g.Counts() {
		if c.Port == pipeline.PortIn {
			received[c.Node] = c.Events
		}
	}
	in := sourceEvents(g)
	if e.log.jsonFormat() {
		reached := map[string]uint64{}
		for _, s := range sinks {
			reached[s] = received[s]
		}
		newLogger(e).Info("replay summary", "events", in, "elapsed", elapsed.Round(time.Millisecond),
			"events_per_second", int64(float64(in)/elapsed.Seconds()), "reached", reached, "malformed_lines", malformed)
		return
	}
	var b strings.Builder
	fmt.Fprintf(&b, "replayed %d events in %s (%.0f events/s)", in, elapsed.Round(time.Millisecond), float64(in)/elapsed.Seconds())
	for i, s := range sinks {
		sep := ", "
		if i == 0 {
			sep = "; reached "
		}
		fmt.Fprintf(&b, "%s%s: %d", sep, s, received[s])
	}
	fmt.Fprintf(&b, "; %d malformed line", malformed)
	if malformed != 1 {
		b.WriteString("s")
	}
	fmt.Fprintln(e.stderr, b.String())
}

// sourceEvents counts the events sources emitted on "out".
func sourceEvents(g *pipeline.Graph) uint64 {
	received := map[string]bool{}
	for _, c := range g.Counts() {
		if c.Port == pipeline.PortIn {
			received[c.Node] = true
		}
	}
	var n uint64
	for _, c := range g.Counts() {
		if !received[c.Node] && c.Port == pipeline.PortOut {
			n += c.Events
		}
	}
	return n
}
