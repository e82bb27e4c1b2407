// Command publish reads events as JSON lines ({"data": ..., "meta": {...}})
// from standard input and publishes each to a NATS JetStream subject with
// flowrun's bus mapping (meta.correlation becomes metadata correlation_id),
// waiting for the broker to store it. It creates a stream for the subject
// when none captures it.
//
//	go run ./examples/nats/publish -subject counters.in < events.jsonl
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/flowrun/flowrun/connectors/bus"
	"github.com/flowrun/flowrun/pipeline"
)

func main() {
	url := flag.String("url", bus.DefaultNATSURL, "broker address")
	subject := flag.String("subject", "counters.in", "subject to publish to")
	flag.Parse()
	if err := run(context.Background(), os.Stdin, *url, *subject); err != nil {
		fmt.Fprintln(os.Stderr, "publish:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, in io.Reader, url, subject string) error {
	sink, err := bus.NewNATSSink(ctx, "publish", bus.NATSOptions{URL: url, Subject: subject})
	if err != nil {
		return err
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	var events []pipeline.Event
	line := 0
	for sc.Scan() {
		line++
		if len(sc.Bytes()) == 0 {
			continue
		}
		var ev pipeline.Event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("line %d: %w", line, err)
		}
		events = append(events, ev)
	}
	if err := sc.Err(); err != nil {
		return err
	}
	failed := 0
	err = sink.Process(ctx, events, emitFunc(func(_ string, ev pipeline.Event) {
		failed++
		fmt.Fprintln(os.Stderr, string(ev.MetaJSON()))
	}))
	if cerr := sink.Close(ctx); err == nil {
		err = cerr
	}
	if err == nil && failed > 0 {
		err = fmt.Errorf("%d of %d events not published", failed, len(events))
	}
	if err == nil {
		fmt.Fprintf(os.Stderr, "published %d events to %s\n", len(events), subject)
	}
	return err
}

type emitFunc func(port string, ev pipeline.Event)

func (f emitFunc) Emit(port string, ev pipeline.Event) { f(port, ev) }
