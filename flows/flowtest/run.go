package flowtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flowrun/flowrun/component"
	"github.com/flowrun/flowrun/connectors/jsonl"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/replay"
	"github.com/flowrun/flowrun/pipeline"
)

// Options configure RunCase.
type Options struct {
	// Registry gives the component types the flows may use. Required.
	Registry *component.Registry
	// Logger receives the flows' logs. Default: discarded.
	Logger *slog.Logger
	// TempDir is where each case's temporary directory is created.
	// Default os.TempDir().
	TempDir string
	// Timeout bounds how long one case may run; a case still running
	// then is stopped (its sources end, what is in flight drains) and
	// fails. Default DefaultTimeout.
	Timeout time.Duration
}

// DefaultTimeout is Options.Timeout's default: far more than a unit test
// of a flow needs, so that only a case that would never end reaches it.
const DefaultTimeout = time.Minute

// ErrTimeout is wrapped by the failure of a case that ran out of time.
var ErrTimeout = errors.New("case did not finish in time")

// Result is the outcome of one case.
type Result struct {
	File     string        `json:"file"`
	Case     string        `json:"case"`
	Line     int           `json:"line"`
	Passed   bool          `json:"passed"`
	Elapsed  time.Duration `json:"-"`
	Failures []Failure     `json:"failures,omitempty"`
}

// Failure is one way a case failed.
type Failure struct {
	// Step numbers the case's step from 1 (0: the case as a whole).
	Step int `json:"step,omitempty"`
	// Sink and Index locate the event, Index from 0 (-1: none).
	Sink  string `json:"sink,omitempty"`
	Index int    `json:"index"`
	// Line is the line of the test file the failure is about.
	Line int `json:"line,omitempty"`
	// Message says what differs.
	Message string `json:"message"`
	// Got is the event the sink received, as one JSON line, if any.
	Got string `json:"got,omitempty"`
}

// String formats the failure as one line, without its Got event.
func (f Failure) String() string {
	var where []string
	if f.Step > 0 {
		where = append(where, fmt.Sprintf("step %d", f.Step))
	}
	if f.Sink != "" {
		where = append(where, "sink "+f.Sink)
	}
	if f.Index >= 0 {
		where = append(where, fmt.Sprintf("event %d", f.Index))
	}
	s := strings.Join(where, ", ")
	if f.Line > 0 {
		s += fmt.Sprintf(" (line %d)", f.Line)
	}
	if s == "" {
		return f.Message
	}
	return s + ": " + f.Message
}

// WriteReport writes the result as flowrun test prints it: a PASS or
// FAIL line, then for a failure each difference, indented, with the
// event received.
func (r *Result) WriteReport(w io.Writer) {
	status := "PASS"
	if !r.Passed {
		status = "FAIL"
	}
	fmt.Fprintf(w, "%s %s:%d: %s (%s)\n", status, r.File, r.Line, r.Case, r.Elapsed.Round(time.Millisecond))
	for _, f := range r.Failures {
		for i, line := range strings.Split(f.String(), "\n") {
			if i == 0 {
				fmt.Fprintf(w, "    %s\n", line)
			} else {
				fmt.Fprintf(w, "        %s\n", line)
			}
		}
		if f.Got != "" {
			fmt.Fprintf(w, "        got: %s\n", f.Got)
		}
	}
}

// RunCase runs one case of f: it loads the flow with the case's
// variables, then runs each step on stores in a fresh temporary directory,
// removed afterwards, and compares what the sinks received with the
// step's expectations. A failure to build or run the flow fails the case.
func RunCase(ctx context.Context, f *File, c *Case, opts Options) (res Result) {
	start := time.Now()
	res = Result{File: f.Path, Case: c.Name, Line: c.Line}
	defer func() {
		res.Elapsed = time.Since(start)
		res.Passed = len(res.Failures) == 0
	}()
	fail := func(step int, format string, args ...any) {
		res.Failures = append(res.Failures, Failure{Step: step, Index: -1, Message: fmt.Sprintf(format, args...)})
	}
	if opts.Registry == nil {
		fail(0, "flowtest.Options.Registry is nil")
		return res
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	lookup := func(name string) (string, bool) {
		if v, ok := c.Env[name]; ok {
			return v, true
		}
		return os.LookupEnv(name)
	}
	flow, diags, err := flows.LoadWith(f.Flow, opts.Registry, flows.LoadOptions{LookupEnv: lookup})
	if err != nil {
		var lines []string
		for _, d := range diags {
			if d.Severity == flows.Error {
				lines = append(lines, d.String())
			}
		}
		if len(lines) == 0 {
			lines = append(lines, err.Error())
		}
		fail(0, "flow %s does not load:\n%s", f.Flow, strings.Join(lines, "\n"))
		return res
	}
	tmp, err := os.MkdirTemp(opts.TempDir, "flowrun-test-")
	if err != nil {
		fail(0, "temporary store directory: %v", err)
		return res
	}
	defer os.RemoveAll(tmp)

	resources := component.NewResources()
	component.MapStoreDirs(resources, storeDirs(tmp))
	var clock fixedClock
	component.UseClock(resources, clock.now)

	stepNo := func(i int) int {
		if len(c.Steps) == 1 {
			return 0
		}
		return i + 1
	}
	for i, s := range c.Steps {
		clock.set(s.Now)
		got, err := runStep(ctx, flow, s, resources, opts.Logger)
		if ctx.Err() != nil && parent.Err() == nil {
			fail(stepNo(i), "%v: still running after %s (flowrun test --timeout)", ErrTimeout, opts.Timeout)
			return res
		}
		if err != nil {
			fail(stepNo(i), "%v", err)
			return res
		}
		for _, fl := range compareStep(flow, s, got) {
			fl.Step = stepNo(i)
			res.Failures = append(res.Failures, fl)
		}
	}
	return res
}

// storeDirs maps each store directory of a case to its own directory
// under tmp; the same directory always maps to the same one.
func storeDirs(tmp string) func(string) string {
	var mu sync.Mutex
	m := map[string]string{}
	return func(dir string) string {
		mu.Lock()
		defer mu.Unlock()
		if d, ok := m[dir]; ok {
			return d
		}
		d := filepath.Join(tmp, fmt.Sprintf("store-%d-%s", len(m)+1, filepath.Base(dir)))
		m[dir] = d
		return d
	}
}

// fixedClock is the clock of a case: a fixed time while a step sets one,
// otherwise time.Now.
type fixedClock struct {
	fixed atomic.Bool
	ns    atomic.Int64
}

func (c *fixedClock) set(t *time.Time) {
	if t == nil {
		c.fixed.Store(false)
		return
	}
	c.ns.Store(t.UnixNano())
	c.fixed.Store(true)
}

func (c *fixedClock) now() time.Time {
	if c.fixed.Load() {
		return time.Unix(0, c.ns.Load()).UTC()
	}
	return time.Now()
}

// received is one event a sink received.
type received struct {
	sink string
	ev   map[string]any
	raw  string
}

// ErrBadInput is wrapped by the error of a step whose input has a
// malformed line.
var ErrBadInput = errors.New("malformed input")

// runStep builds the flow with the step's input standing in for its
// source and every sink captured, runs it to its end and returns what the
// sinks received, in the order replay prints it.
func runStep(ctx context.Context, flow *flows.Flow, s *Step, res *component.Resources, logger *slog.Logger) ([]received, error) {
	source := s.Source
	if source == "" {
		srcs := flow.Sources()
		if len(srcs) != 1 {
			return nil, fmt.Errorf("flow %s has sources %v: name the one to feed with source", flow.Name, srcs)
		}
		source = srcs[0]
	}
	var badMu sync.Mutex
	var bad []string
	reader := jsonl.NewReader(bytes.NewReader(s.Input), jsonl.ReaderOptions{
		Name: s.InputName,
		OnError: func(_ pipeline.Event, err error) error {
			badMu.Lock()
			bad = append(bad, err.Error())
			badMu.Unlock()
			return nil
		},
	})
	var out bytes.Buffer
	capture := replay.NewCapture(&out)
	built, err := flow.Build(ctx, flows.BuildOptions{
		Stdin:         strings.NewReader(""),
		Stdout:        io.Discard,
		Resources:     res,
		Logger:        logger,
		ReplaceSource: source,
		Source:        &replay.WindowedSource{Inner: reader, Capture: capture},
		Capture:       capture.Sink,
	})
	if err != nil {
		return nil, err
	}
	runErr := built.Run(ctx)
	if err := capture.Release(); err != nil && runErr == nil {
		runErr = err
	}
	if runErr != nil {
		return nil, fmt.Errorf("flow %s: %w", flow.Name, runErr)
	}
	if len(bad) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrBadInput, strings.Join(bad, "; "))
	}
	var got []received
	for _, line := range bytes.Split(out.Bytes(), []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		v, err := decodeJSON(line)
		m, ok := v.(map[string]any)
		if err != nil || !ok {
			return nil, fmt.Errorf("captured event %q: %v", line, err)
		}
		sink, _ := m["sink"].(string)
		ev := map[string]any{"data": m["data"], "meta": m["meta"]}
		got = append(got, received{sink: sink, ev: ev, raw: show(ev)})
	}
	return got, nil
}

// compareStep compares what the sinks received with the step's
// expectations.
func compareStep(flow *flows.Flow, s *Step, got []received) []Failure {
	bySink := map[string][]received{}
	for _, r := range got {
		bySink[r.sink] = append(bySink[r.sink], r)
	}
	sinks := flow.Sinks()
	var out []Failure
	stated := map[string]bool{}
	for _, se := range s.Expect {
		stated[se.Sink] = true
		if !contains(sinks, se.Sink) {
			out = append(out, Failure{Sink: se.Sink, Index: -1, Line: se.Line,
				Message: fmt.Sprintf("not a sink of flow %s (sinks: %s)", flow.Name, strings.Join(sinks, ", "))})
			continue
		}
		if se.Unordered {
			out = append(out, compareUnordered(se, bySink[se.Sink])...)
		} else {
			out = append(out, compareOrdered(se, bySink[se.Sink])...)
		}
	}
	if !s.IgnoreOtherSinks {
		for _, sink := range sinks {
			if stated[sink] {
				continue
			}
			for i, r := range bySink[sink] {
				out = append(out, Failure{Sink: sink, Index: i,
					Message: "unexpected event: the step expects nothing on this sink (list it under expect, or set ignore_other_sinks)",
					Got:     r.raw})
			}
		}
	}
	return out
}

func compareOrdered(se *SinkExpect, got []received) []Failure {
	var out []Failure
	for i := 0; i < max(len(se.Events), len(got)); i++ {
		switch {
		case i >= len(got):
			out = append(out, Failure{Sink: se.Sink, Index: i, Line: se.Events[i].Line,
				Message: fmt.Sprintf("missing: expected %d event(s), got %d", len(se.Events), len(got))})
		case i >= len(se.Events):
			out = append(out, Failure{Sink: se.Sink, Index: i,
				Message: fmt.Sprintf("unexpected event: expected %d event(s), got %d", len(se.Events), len(got)), Got: got[i].raw})
		default:
			if msg := se.Events[i].check(got[i].ev); msg != "" {
				out = append(out, Failure{Sink: se.Sink, Index: i, Line: se.Events[i].Line, Message: msg, Got: got[i].raw})
			}
		}
	}
	return out
}

func compareUnordered(se *SinkExpect, got []received) []Failure {
	used := make([]bool, len(got))
	var out []Failure
	for _, e := range se.Events {
		found := false
		for j, r := range got {
			if !used[j] && e.check(r.ev) == "" {
				used[j], found = true, true
				break
			}
		}
		if !found {
			out = append(out, Failure{Sink: se.Sink, Index: -1, Line: e.Line,
				Message: "no event received matches this expectation (unordered)"})
		}
	}
	for j, r := range got {
		if !used[j] {
			out = append(out, Failure{Sink: se.Sink, Index: j,
				Message: "unexpected event: it matches no expectation (unordered)", Got: r.raw})
		}
	}
	return out
}

// check returns "" when ev meets every condition of e, otherwise what
// differs, one condition per line.
func (e *Expectation) check(ev map[string]any) string {
	var out []string
	for _, c := range e.Checks {
		v, ok := lookup(ev, c.Path)
		if msg := c.Matcher.Match(v, ok); msg != "" {
			out = append(out, prefixPaths(c.Path, msg))
		}
	}
	return strings.Join(out, "\n")
}

// prefixPaths puts path before msg (which may start with a sub-path
// "kv.found: ...; kv.op: ...").
func prefixPaths(path, msg string) string {
	parts := strings.Split(msg, "; ")
	for i, p := range parts {
		if k, rest, ok := strings.Cut(p, ": "); ok && !strings.Contains(k, " ") {
			parts[i] = path + "." + k + ": " + rest
		} else {
			parts[i] = path + ": " + p
		}
	}
	return strings.Join(parts, "\n")
}

// Find returns the test files named by paths: a file is taken as it is;
// a directory (or DIR/..., as go test writes it) is searched recursively
// for flow_test.yaml and *_test.yaml files, skipping directories named
// testdata or starting with "." or "_". No paths means ".". Files are
// returned in lexical order within each path, without duplicates.
func Find(paths []string) ([]string, error) {
	if len(paths) == 0 {
		paths = []string{"."}
	}
	var out []string
	seen := map[string]bool{}
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			out = append(out, p)
		}
	}
	for _, p := range paths {
		root := p
		if root == "..." {
			root = "."
		} else if r, ok := strings.CutSuffix(p, "/..."); ok {
			root = r
		}
		st, err := os.Stat(root)
		if err != nil {
			return nil, err
		}
		if !st.IsDir() {
			add(p)
			continue
		}
		err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			name := d.Name()
			if d.IsDir() {
				if path != root && (name == "testdata" || strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_")) {
					return filepath.SkipDir
				}
				return nil
			}
			if strings.HasSuffix(name, "_test.yaml") || strings.HasSuffix(name, "_test.yml") {
				add(path)
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return out, nil
}
