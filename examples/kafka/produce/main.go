// Command produce reads events as JSON lines ({"data": ..., "meta": {...}})
// from standard input and produces each to a Kafka topic with flowrun's
// mapping (data the value, meta the headers, meta.correlation as header
// correlation_id), keyed by the -key expression, waiting until the brokers
// store them.
//
//	go run ./examples/kafka/produce -brokers 127.0.0.1:9092 -topic scores.in < events.jsonl
package main

import (
	"bufio"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/flowrun/flowrun/connectors/kafka"
	"github.com/flowrun/flowrun/pipeline"
)

func main() {
	brokers := flag.String("brokers", kafka.DefaultBroker, "seed brokers, comma-separated host:port")
	topic := flag.String("topic", "scores.in", "topic to produce to")
	key := flag.String("key", "data.player", "expression giving each record's key")
	flag.Parse()
	if err := run(context.Background(), os.Stdin, strings.Split(*brokers, ","), *topic, *key); err != nil {
		fmt.Fprintln(os.Stderr, "produce:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, in io.Reader, brokers []string, topic, key string) error {
	sink, err := kafka.NewSink(kafka.SinkOptions{Options: kafka.Options{Name: "produce", Brokers: brokers, Topic: topic}, Key: key})
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
		err = fmt.Errorf("%d of %d events not produced", failed, len(events))
	}
	if err == nil {
		fmt.Fprintf(os.Stderr, "produced %d events to %s\n", len(events), topic)
	}
	return err
}

type emitFunc func(port string, ev pipeline.Event)

func (f emitFunc) Emit(port string, ev pipeline.Event) { f(port, ev) }
