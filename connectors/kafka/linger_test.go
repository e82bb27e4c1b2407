package kafka_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/flowrun/flowrun/connectors/kafka"
	"github.com/flowrun/flowrun/flows"
	"github.com/flowrun/flowrun/flows/builtin"
	"github.com/flowrun/flowrun/pipeline"
)

// TestSinkLingerOption: SinkOptions.Linger is the producer's linger
// (franz-go's ProducerLinger), DefaultLinger when unset, 0 allowed, a
// negative one refused.
func TestSinkLingerOption(t *testing.T) {
	d := func(v time.Duration) *time.Duration { return &v }
	for _, tc := range []struct {
		linger *time.Duration
		want   time.Duration
		err    error
	}{
		{linger: nil, want: kafka.DefaultLinger},
		{linger: d(0), want: 0},
		{linger: d(250 * time.Millisecond), want: 250 * time.Millisecond},
		{linger: d(-time.Millisecond), err: kafka.ErrLinger},
		{linger: d(2 * time.Minute), err: kafka.ErrLinger},
	} {
		s, err := kafka.NewSink(kafka.SinkOptions{Options: kafka.Options{Brokers: []string{"127.0.0.1:1"}, Topic: "out"}, Linger: tc.linger})
		if tc.err != nil {
			if !errors.Is(err, tc.err) {
				t.Errorf("linger %v: error %v, want %v", *tc.linger, err, tc.err)
			}
			continue
		}
		must(t, err)
		if got := kafka.SinkLinger(s); got != tc.want {
			t.Errorf("linger %v: the producer lingers %v, want %v", tc.linger, got, tc.want)
		}
	}
}

// TestLingerInAFlow: `linger` on a kafka sink is the producer's: with
// 1h a record read from "in" waits in the producer, not yet in "out"
// after a second; with 0s it is produced at once. On a kafka source it is
// refused at load, naming the option.
func TestLingerInAFlow(t *testing.T) {
	c := startCluster(t)
	brokers := c.ListenAddrs()
	b := strings.Join(brokers, ",")
	for _, tc := range []struct {
		linger string
		out    int
	}{{"3s", 0}, {"0s", 1}} {
		t.Run("linger="+tc.linger, func(t *testing.T) {
			in, out := "in-"+tc.linger, "out-"+tc.linger
			createTopics(t, brokers, in, out, in+".dead")
			produceEvents(t, brokers, in, []pipeline.Event{{Data: []byte(`{"n":1}`), Meta: []byte(`{"correlation":"a"}`)}})
			rd := readTopic(t, brokers, out)
			rf := runFlow(t, fmt.Sprintf(`name: linger
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: %s, group: g-%s }
  output: { type: kafka, mode: write, brokers: %q, topic: %s, linger: %s }
links:
  - input/out -> output/in
`, b, in, tc.linger, b, out, tc.linger))
			wait := 20 * time.Second
			if tc.out == 0 {
				wait = time.Second
			}
			if got := rd.until(t, wait, atLeast(1)); len(got) != tc.out {
				t.Errorf("%d records in %s within %s, want %d", len(got), out, wait, tc.out)
			}
			rf.stop(t)
		})
	}

	path := filepath.Join(t.TempDir(), "flow.yaml")
	must(t, os.WriteFile(path, []byte(fmt.Sprintf(`name: linger
connectors:
  input:  { type: kafka, mode: read, brokers: %q, topic: in, linger: 5ms }
  output: { type: kafka, mode: write, brokers: %q, topic: out }
links:
  - input/out -> output/in
`, b, b)), 0o644))
	_, diags, err := flows.Load(path, builtin.NewRegistry())
	if err == nil || !strings.Contains(fmt.Sprint(err, diags), "linger") || !strings.Contains(fmt.Sprint(err, diags), "kafka source") {
		t.Fatalf("a kafka source with linger: load error %v %v, want one naming linger", err, diags)
	}
}
